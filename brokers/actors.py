"""What the broker knows of each actor: its counters, shown in stats, and the sequence accounting
of its segments, kept private (stats never show incarnations, so only an actor's own worker can
continue its sequence)."""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

MAX_INCARNATIONS_TRACKED = 8
"""Incarnations (worker restarts) of one actor id whose last sequence number is kept, so that a
killed worker's last segments, arriving after its successor's first ones, are still placed."""

SEQ_WINDOW = 1 << 20
"""How far past an incarnation's last sequence number a segment may jump; beyond it the segment
is refused (no real actor gets that far ahead of what reached the broker)."""


class Duplicate(Exception):
    """A segment whose sequence number this incarnation already sent."""


class OutOfWindow(Exception):
    """A segment more than SEQ_WINDOW past its incarnation's last one."""


@dataclass
class ActorRecord:
    """One actor id: the public counters (stats' per_actor) and the private sequence book."""

    segments: int = 0
    frames: int = 0
    seq: int = -1  # the newest incarnation's last segment (a killed one's late segments do not count here)
    policy_version: int = -1
    incarnations: int = 0
    gaps: int = 0  # segments lost on the way: jumps forward in a sequence
    duplicates: int = 0
    frames_per_s: float = 0.0
    last_seen: float | None = None
    seqs: collections.OrderedDict[str, int] = field(default_factory=collections.OrderedDict)
    """Incarnation -> its last sequence number, the least recently used first."""
    newest: str | None = None
    frames_mark: int | None = None  # frames at the last rate update

    PUBLIC = ("segments", "frames", "seq", "policy_version", "incarnations", "gaps", "duplicates", "frames_per_s",
              "last_seen")

    def last_seq(self, incarnation: str) -> int | None:
        return self.seqs.get(incarnation)

    def check_seq(self, incarnation: str, seq: int) -> None:
        """Raise Duplicate (counted) or OutOfWindow for a segment that must not be stored."""
        last = self.seqs.get(incarnation)
        if last is not None and seq <= last:
            self.duplicates += 1
            raise Duplicate(f"seq {seq}")
        if last is not None and seq > last + SEQ_WINDOW:
            raise OutOfWindow(f"seq {seq} after {last}")

    def record_seq(self, incarnation: str, seq: int) -> int:
        """Note a segment that passed check_seq; return how many segments of its incarnation were
        missed before it (a restarted worker starts again at 0; a start we never saw, e.g. from
        before a broker restart, counts its sequence number as missed, within the window)."""
        last = self.seqs.get(incarnation)
        if last is None:
            self.incarnations += 1
            self.newest = incarnation
            missed = seq if seq <= SEQ_WINDOW else 0
            while len(self.seqs) >= MAX_INCARNATIONS_TRACKED:
                del self.seqs[next(iter(self.seqs))]  # the oldest
        else:
            missed = seq - last - 1
        self.seqs[incarnation] = seq
        self.seqs.move_to_end(incarnation)
        self.gaps += missed
        self.last_seen = time.time()
        if incarnation == self.newest:
            self.seq = seq
        return missed

    def count(self, frames: int, policy_version: int) -> None:
        self.segments += 1
        self.frames += frames
        self.policy_version = policy_version

    def public(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.PUBLIC}

    def saved(self) -> dict[str, Any]:
        """For a snapshot: the public counters and the sequence book."""
        return {**self.public(), "_seqs": dict(self.seqs), "_newest": self.newest}

    @classmethod
    def from_saved(cls, doc: dict[str, Any]) -> ActorRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        record = cls(**{k: v for k, v in doc.items() if k in known and k in cls.PUBLIC})
        record.seqs = collections.OrderedDict(doc.get("_seqs", {}))
        record.newest = doc.get("_newest")
        if "incarnations" not in doc:  # a snapshot from before this counter
            record.incarnations = len(record.seqs)
        return record
