"""The frames of a table that stores each frame once (docs/frames.md, docs/protocol.md "Frames").

A fixed ring of frames with global ids (the id of the n-th frame ever written is n; it lives in
slot n % size until overwritten). A segment brings a pool of new frames and items whose references
are indices into it, or, on a table that links, negative indices -(j + 1) into the logical frame
list of the same stream's previous segment: the sorted distinct references of that segment, as
the broker resolved them. Links let consecutive segments share the frames they overlap on (the
stack before a segment's first step, the n-step frames after its last, R2D2's burn-in), so each
frame is sent and stored once; a segment the broker never stored cannot be linked to, and its
successors are rejected (`missing_frames`) until the writer's next self-contained segment.
"""

from __future__ import annotations

import collections
from typing import Any, Hashable, Mapping

import numpy as np

MAX_STREAMS = 8192
"""Streams (actor, incarnation) whose last segment the ring remembers for links, most recent kept."""


class RefError(ValueError):
    def __init__(self, detail: str, reason: str):
        self.reason = reason
        super().__init__(detail)


class FrameRing:
    """Frames by global id; items hold ring slots (int32: a ring of up to 2^31 frames) and their
    oldest global id, which says whether the slots still hold their frames."""

    def __init__(self, size: int, shape: tuple[int, ...], dtype: str, linkable: bool):
        if size >= 1 << 31:
            raise ValueError(f"a frame ring of {size} frames; at most 2^31 - 1")
        self.frames = np.zeros((size, *shape), dtype=dtype)
        self.next = 0  # global id of the next frame written
        self.linkable = linkable
        self.links: collections.OrderedDict[Hashable, tuple[int, np.ndarray]] = collections.OrderedDict()

    @property
    def oldest(self) -> int:
        """Global id of the oldest frame still held."""
        return max(0, self.next - len(self.frames))

    def _previous(self, stream: Hashable | None, seq: int | None) -> np.ndarray | None:
        """The logical frame list of the stream's segment seq - 1, if it is the last one stored."""
        if stream is None or seq is None:
            return None
        link = self.links.get(stream)
        return link[1] if link is not None and link[0] == seq - 1 else None

    def check(self, refs: list[np.ndarray], pool: np.ndarray, stream: Hashable | None, seq: int | None) -> None:
        """Raise RefError unless every reference is inside the pool or, linked, inside the previous
        segment's list with its frame still held."""
        if not (0 < len(pool) or self.linkable) or len(pool) > len(self.frames):
            raise RefError(f"a pool of {len(pool)} frames; the table takes 1..{len(self.frames)}", "bad_frame_count")
        lows = [int(r.min()) for r in refs if r.size]
        highs = [int(r.max()) for r in refs if r.size]
        if not lows:
            return
        if max(highs) >= len(pool):
            raise RefError(f"a reference past the segment's {len(pool)} frames", "bad_reference")
        if min(lows) >= 0:
            return
        if not self.linkable:
            raise RefError("a negative reference (links are for replay tables of frames only)", "bad_reference")
        previous = self._previous(stream, seq)
        if previous is None:
            raise RefError("a link to a segment the table does not hold (not the stream's last)", "missing_frames")
        if -min(lows) > len(previous):
            raise RefError(f"a link past the previous segment's {len(previous)} frames", "bad_reference")
        linked = np.concatenate([previous[-r[r < 0] - 1] for r in refs])
        if linked.size and linked.min() < self.oldest:
            raise RefError("a link to frames the ring has overwritten", "missing_frames")

    def write(self, arrays: Mapping[str, np.ndarray], fields: tuple[str, ...], pool: np.ndarray,
              stream: Hashable | None, seq: int | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Store a checked segment's pool; return its arrays with references as ring slots, and
        each item's oldest frame id (the item is served while that frame is held)."""
        previous = self._previous(stream, seq)
        first = self.next
        slots = np.arange(first, first + len(pool)) % len(self.frames)
        self.frames[slots] = pool
        self.next += len(pool)
        out = dict(arrays)
        oldest_per_item = None
        for name in fields:
            r = arrays[name].astype(np.int64)
            ids = r + first
            if previous is not None:
                neg = r < 0
                ids[neg] = previous[-r[neg] - 1]
            out[name] = ids
            per_item = ids.reshape(len(ids), -1).min(axis=1)
            oldest_per_item = per_item if oldest_per_item is None else np.minimum(oldest_per_item, per_item)
        if self.linkable and stream is not None and seq is not None:
            self.remember(stream, seq, arrays, out, fields)
        for name in fields:
            out[name] = (out[name] % len(self.frames)).astype(np.int32)
        return out, oldest_per_item

    def remember(self, stream: Hashable, seq: int, wire: Mapping[str, np.ndarray], resolved: Mapping[str, np.ndarray],
                 fields: tuple[str, ...]) -> None:
        """The stream's logical frame list for its next segment's links: the segment's distinct
        wire references in ascending order, as global ids."""
        values = np.concatenate([wire[f].ravel() for f in fields]).astype(np.int64)
        ids = np.concatenate([resolved[f].ravel() for f in fields])
        _, first_at = np.unique(values, return_index=True)
        self.links[stream] = (seq, ids[first_at])
        self.links.move_to_end(stream)
        while len(self.links) > MAX_STREAMS:
            self.links.popitem(last=False)

    def gather(self, slots: np.ndarray) -> np.ndarray:
        return self.frames[slots]

    # -- snapshots ------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        streams = list(self.links.items())
        doc = {"next_frame": self.next, "links": [[list(key), seq] for key, (seq, _) in streams]}
        arrays = {"frame_ring": self.frames, **{f"link/{i}": ids for i, (_, (_, ids)) in enumerate(streams)}}
        return doc, arrays

    def restore(self, doc: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        if arrays["frame_ring"].shape != self.frames.shape:
            raise ValueError("its frame ring does not match its schema")
        self.frames[:] = arrays["frame_ring"]
        self.next = int(doc["next_frame"])
        self.links.clear()
        for i, (key, seq) in enumerate(doc.get("links", [])):
            self.links[tuple(key)] = (int(seq), np.asarray(arrays[f"link/{i}"], dtype=np.int64))
