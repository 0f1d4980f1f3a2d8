"""Credit-based flow control (docs/protocol.md, "Flow control"): an actor asks the broker for a
credit before it collects each segment, and the broker grants it only when the table will take
the segment soon. So no actor runs ahead of what will be trained on, whatever its socket options
and however many actors there are: a segment is collected by weights at most about one round of
training old, instead of waiting in queues that grow with the actors.

The broker grants the waiting requests oldest first while the table has room: a replay table once
its rate limiter would let the segment in, a queue once it can hold it. Granted segments that have
not arrived count as taken already, less a lead of LEAD_SEGMENTS segments that may wait in ingest,
so actors collect while the learner trains. A request is held at most HOLD_S, then answered with
the stream's current `until` (below the seq asked for): the actor asks again and keeps its place.
A request not renewed within FORGET_S (a dead actor) leaves the queue; a grant stops counting when
its segment comes, when a new incarnation of its actor asks (a restart), or after MIN_EXPIRE_S (a
segment that comes later is still accepted).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Callable

HOLD_S = 1.0
"""Longest a credit request is held unanswered (below the clients' 2 s request timeout)."""
FORGET_S = 3 * HOLD_S
"""A waiting request not renewed for this long is forgotten: its actor is gone."""
LEAD_SEGMENTS = 1
"""Segments granted beyond what the table can take now; they wait in ingest (at most one round of training)."""
MIN_EXPIRE_S = 10.0
"""A grant stops counting as on the way after max(this, 4 x the mean time from grant to arrival):
its actor died with it (a restarted one, under the same id, ends its grants at once)."""
SWEEP_S = 0.1
"""How often held requests are checked against HOLD_S, and grants against their expiry."""
RESTORE_GRACE_S = 10.0
"""A broker restored from a snapshot accepts this long the segments its predecessor granted."""
MAX_WAITING = 4096
"""Streams waiting for credit at once; more requests are refused (busy)."""
MAX_STREAMS = 65536
"""Streams whose grants the broker remembers (least recently granted forgotten first)."""


@dataclass
class Waiting:
    identity: Any  # the asking peer's routing id; None while the request is not held (it asks again)
    req: Any
    seq: int
    first_asked: float  # its place in the queue
    held_since: float


Stream = tuple  # (actor_id, incarnation)
Answer = tuple[Any, Any, int]  # (routing id, req, until)


class Credits:
    """The broker's grants: which stream may send which seq, and who waits for what."""

    def __init__(self) -> None:
        self.waiting: dict[Stream, Waiting] = {}
        self.on_the_way: dict[tuple[Stream, int], tuple[float, int]] = {}  # (stream, seq) -> (granted at, items)
        self.until: collections.OrderedDict[Stream, int] = collections.OrderedDict()
        self.trip_s = 0.5  # mean seconds from a grant to its segment's arrival
        self.granted = 0
        self.wait_s = 0.0  # summed over grants: how long requests waited
        self.next_sweep = 0.0
        self.items_on_the_way = 0
        self.grace_until = -1.0  # a broker restored from a snapshot: see covers

    def summary(self) -> dict[str, Any]:
        """For the stats: grants so far, requests waiting, grants on their way, the mean wait from
        first asking to the grant, and the moving mean from grant to arrival."""
        return {"granted": self.granted, "waiting": len(self.waiting), "on_the_way": len(self.on_the_way),
                "mean_wait_s": round(self.wait_s / max(1, self.granted), 4), "trip_s": round(self.trip_s, 4)}

    def covers(self, stream: Stream, seq: int, now: float) -> bool:
        """Whether a segment with this seq was granted (only such segments are stored), or comes,
        within RESTORE_GRACE_S of a restore, from a stream this broker has granted nothing (the
        broker before the restart did)."""
        until = self.until.get(stream)
        return seq <= until if until is not None else now < self.grace_until

    def ask(self, stream: Stream, seq: int, identity: Any, req: Any, now: float) -> int | None:
        """A credit request: the stream's until when it covers seq already (a repeat), else None
        (held until granted or HOLD_S). Raises OverflowError when MAX_WAITING streams wait."""
        until = self.until.get(stream, -1)
        if seq <= until:
            return until
        w = self.waiting.get(stream)
        if w is None and stream not in self.until:  # a new stream: an actor restarted under its id?
            self._forget_actor(stream)
        if w is not None and w.seq == seq:  # asking again: the same place in the queue
            w.identity, w.req, w.held_since = identity, req, now
            return None
        if w is None and len(self.waiting) >= MAX_WAITING:
            raise OverflowError(f"{MAX_WAITING} streams are waiting for credit")
        self.waiting[stream] = Waiting(identity, req, seq, now, now)
        return None

    def arrived(self, stream: Stream, seq: int, now: float) -> None:
        """A granted segment came: it no longer counts as on the way. (Not when the stream asks for
        its next: the request can overtake the segment, which may wait in ingest.)"""
        granted = self.on_the_way.get((stream, seq))
        if granted is not None:
            self._done((stream, seq))
            self.trip_s += 0.1 * (now - granted[0] - self.trip_s)

    def answers(self, can_grant: Callable[[int, int], bool], segment_items: int, now: float) -> list[Answer]:
        """The replies due now: grants, oldest request first (dicts keep insertion order, and a
        renewed request keeps its entry), while can_grant(items on the way, lead items) holds;
        then the held requests whose HOLD_S ran out (not granted yet)."""
        out: list[Answer] = []
        lead = LEAD_SEGMENTS * segment_items
        if self.waiting and can_grant(self.items_on_the_way, lead):
            for stream, w in list(self.waiting.items()):
                if w.identity is None:  # between a hold and its renewal: granted when it asks again
                    continue
                if not can_grant(self.items_on_the_way, lead):
                    break
                del self.waiting[stream]
                out.append(self._grant(stream, w, segment_items, now))
        if now >= self.next_sweep:  # a pass over every stream: a few times a second, not per message
            self.next_sweep = now + SWEEP_S
            self._expire(now)
            for stream, w in self.waiting.items():
                if w.identity is not None and now - w.held_since >= HOLD_S:
                    out.append((w.identity, w.req, self.until.get(stream, -1)))
                    w.identity = None
        return out

    def _grant(self, stream: Stream, w: Waiting, items: int, now: float) -> Answer:
        self.until[stream] = w.seq
        self.until.move_to_end(stream)
        while len(self.until) > MAX_STREAMS:
            self.until.popitem(last=False)
        self.on_the_way[(stream, w.seq)] = (now, items)
        self.items_on_the_way += items
        self.granted += 1
        self.wait_s += now - w.first_asked
        return w.identity, w.req, w.seq

    def _expire(self, now: float) -> None:
        for stream, w in list(self.waiting.items()):
            if w.identity is None and now - w.held_since > FORGET_S:
                del self.waiting[stream]
        expire_s = max(MIN_EXPIRE_S, 4 * self.trip_s)
        for key, (at, _) in list(self.on_the_way.items()):
            if now - at > expire_s:
                self._done(key)

    def _forget_actor(self, stream: Stream) -> None:
        """The grants of the actor's earlier incarnations stop counting: that process is gone."""
        for key in [k for k in self.on_the_way if k[0][0] == stream[0]]:
            self._done(key)

    def _done(self, key: tuple[Stream, int]) -> None:
        self.items_on_the_way -= self.on_the_way.pop(key)[1]
