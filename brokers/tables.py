"""Replay storage for the broker: a fixed-capacity ring of named numpy fields,
a uniform or prioritized sampler and a Reverb-style rate limiter. Algorithm-agnostic:
an item is whatever named arrays the learner declared in its `register` (ItemSchema);
a segment that differs, holds non-finite floats or more items than the table, is refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

from qrl.brokers.frame_ring import FrameRing, RefError
from qrl.brokers.sumtree import MinTree, SumTree

SAMPLERS = ("uniform", "prioritized", "fifo")


ITEM_ID, IMPORTANCE_WEIGHT, INITIAL_PRIORITY, FRAMES = "_id", "_weight", "_priority", "_frames"
"""The wire names (docs/protocol.md) of what travels beside an item's fields: its id and importance
weight in a batch, an actor's initial priority and a table of frames' pool in a segment."""
DEMO_PREFIX = "demo."
"""A batch's demonstration items (sample's demo_batch) travel as fields with this prefix."""


class SchemaError(ValueError):
    """An insert the table refuses; ``reason`` is the counter it goes to."""

    def __init__(self, detail: str, reason: str = "schema_mismatch"):
        self.reason = reason
        super().__init__(detail)


MAX_ITEM_NDIM = 7
MAX_REDRAWS = 8
"""Draws a sample makes for items that lost a linked frame before the older items did (rare)."""
MIN_RING_FRAMES = 4096
SLOT_BYTES = 96
"""Bookkeeping a table slot costs besides its item's fields, counted against broker.max_table_bytes:
the item id (8 bytes), a prioritized table's sum and min trees (up to 64), a queue's version and
source (24)."""


def _limits_from_meta(meta: Any, names: set[str]) -> tuple[tuple[str, float, float], ...]:
    """The schema's value limits: field -> [lo, hi], finite numbers with lo <= hi, of declared fields."""
    out = []
    for name, bounds in meta.items():
        if name not in names:
            raise ValueError(f"limits: {name[:32]!r} is not an item field")
        if not (isinstance(bounds, list) and len(bounds) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
                and bounds[0] <= bounds[1]):
            raise ValueError(f"limits: {name[:32]}: expected [lo, hi], finite numbers with lo <= hi")
        out.append((name, float(bounds[0]), float(bounds[1])))
    return tuple(out)


@dataclass(frozen=True)
class FrameSpec:
    """A table that stores each frame once (qrl/frames.py, docs/frames.md): segments bring a pool
    of frames of this dtype and shape, and the named item fields are integer references into it
    (an item's stack or sequence of frames), gathered into pixels when a batch is served."""

    dtype: str
    shape: tuple[int, ...]
    fields: tuple[str, ...]
    per_item: float
    """Pool frames per item in a window without episode ends; the frame ring holds capacity x this."""

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], item_fields: Mapping[str, tuple[str, tuple[int, ...]]]) -> "FrameSpec":
        from qrl.protocol.wire import ALLOWED_DTYPES

        dtype, shape, names, per_item = meta["dtype"], meta["shape"], meta["fields"], meta["per_item"]
        if dtype not in ALLOWED_DTYPES:
            raise ValueError(f"frames: dtype must be one of {sorted(ALLOWED_DTYPES)}")
        if not (isinstance(shape, list) and 0 < len(shape) <= MAX_ITEM_NDIM
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 16 for d in shape)):
            raise ValueError(f"frames: shape must be 1..{MAX_ITEM_NDIM} integers in [1, 2^16]")
        if not names or len(set(names)) != len(names) or any(item_fields.get(n, ("",))[0] != "<i4" for n in names):
            raise ValueError("frames: fields must name distinct int32 item fields (the references)")
        if not (isinstance(per_item, (int, float)) and 0 < per_item <= 1 << 16):
            raise ValueError("frames: per_item must lie in (0, 2^16]")
        return cls(dtype, tuple(shape), tuple(names), float(per_item))

    def as_meta(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "fields": list(self.fields), "per_item": self.per_item}

    def frame_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize * math.prod(self.shape)

    def ring_size(self, capacity: int) -> int:
        """Frames the table keeps: enough for `capacity` items at per_item frames each (and at least
        MIN_RING_FRAMES, so a small table still takes a large segment). Episode ends add a frame
        each, so the oldest items may go a little before the item ring wraps: a table a little
        short of capacity, never a reference to a lost frame."""
        return max(math.ceil(capacity * self.per_item), MIN_RING_FRAMES)


@dataclass(frozen=True)
class ItemSchema:
    """What one item is: named fields with a dtype and a trailing shape, declared by the learner
    (derived from its algorithm's item builder) in `register`, and how many env frames one item
    covers (a segment's `frames` must equal its items times this)."""

    fields: tuple[tuple[str, str, tuple[int, ...]], ...]
    frames_per_item: int = 1
    frames: FrameSpec | None = None
    """Set: the table stores each frame once, and these fields are references (FrameSpec)."""
    limits: tuple[tuple[str, float, float], ...] = ()
    """(field, lo, hi): every value of the field lies in [lo, hi]; a segment with one outside is
    refused (an absurd but finite value poisons a learner as surely as a NaN)."""
    return_limit: float | None = None
    """Episode returns a segment reports lie in [-return_limit, return_limit] (None: any finite)."""

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "ItemSchema":
        from qrl.protocol.wire import ALLOWED_DTYPES

        fields_meta = meta["fields"]
        if not fields_meta:
            raise ValueError("an item needs at least one field")
        out = []
        for name, desc in fields_meta.items():
            if name.startswith("_") or len(name) > 128:
                raise ValueError("field names must not start with '_' (reserved) and hold <= 128 characters: "
                                 f"{name[:32]!r}")
            if not (isinstance(desc, list) and len(desc) == 2
                    and isinstance(desc[0], str) and isinstance(desc[1], list)):
                raise ValueError(f"field {name}: expected [dtype, shape]")
            dtype, shape = desc
            if dtype not in ALLOWED_DTYPES:
                raise ValueError(f"field {name}: dtype must be one of {sorted(ALLOWED_DTYPES)}")
            sizes_ok = all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 1 << 24 for d in shape)
            if len(shape) > MAX_ITEM_NDIM or not sizes_ok:
                raise ValueError(f"field {name}: shape must be at most {MAX_ITEM_NDIM} integers in [0, 2^24]")
            out.append((name, dtype, tuple(shape)))
        frames = meta.get("frames")
        if frames is not None:
            frames = FrameSpec.from_meta(frames, {name: (dtype, shape) for name, dtype, shape in out})
        limits = _limits_from_meta(meta.get("limits") or {}, {name for name, _, _ in out})
        return cls(tuple(out), int(meta["frames_per_item"]), frames, limits, meta.get("return_limit"))

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray], frames_per_item: int = 1,
           frames: FrameSpec | None = None) -> "ItemSchema":
        """The schema of a batch of items (leading dimension = items)."""
        return cls(tuple((name, np.asarray(a).dtype.str, tuple(np.asarray(a).shape[1:])) for name, a in arrays.items()),
                   frames_per_item, frames)

    def as_meta(self) -> dict[str, Any]:
        meta = {"fields": {name: [dtype, list(shape)] for name, dtype, shape in self.fields},
                "frames_per_item": self.frames_per_item}
        if self.frames is not None:
            meta["frames"] = self.frames.as_meta()
        if self.limits:
            meta["limits"] = {name: [lo, hi] for name, lo, hi in self.limits}
        if self.return_limit is not None:
            meta["return_limit"] = self.return_limit
        return meta

    @property
    def references(self) -> tuple[str, ...]:
        """The item fields that are frame references (none without a FrameSpec)."""
        return self.frames.fields if self.frames is not None else ()

    def _bytes(self, per_reference: int) -> int:
        """Bytes of an item's fields, a reference counting `per_reference` bytes."""
        refs = self.references  # math.prod: Python integers, a declared shape cannot overflow int64
        return sum((per_reference if name in refs else np.dtype(dtype).itemsize) * math.prod(shape)
                   for name, dtype, shape in self.fields)

    def _stored_bytes(self) -> int:
        """Bytes of an item's own fields in the table (references as int32 slots of the frame ring)."""
        return self._bytes(4)

    def table_bytes(self, capacity: int) -> int:
        """Bytes a table of this many items allocates: its fields, SLOT_BYTES of bookkeeping per
        slot whatever the fields (so items of zero bytes still cost memory), and with frames the
        ring and each item's first frame id."""
        per_slot = self._stored_bytes() + SLOT_BYTES
        if self.frames is None:
            return capacity * per_slot
        return capacity * (per_slot + 8) + self.frames.ring_size(capacity) * self.frames.frame_bytes()

    def served_bytes(self) -> int:
        """Bytes one item takes in a batch (references gathered into frames)."""
        return self._bytes(self.frames.frame_bytes() if self.frames is not None else 0)


@dataclass(frozen=True)
class TableConfig:
    """How the learner wants its experience stored; sent with `register`."""

    capacity: int = 100_000
    sampler: str = "uniform"
    min_size: int = 1_000
    """No batch is served before the table holds this many items."""
    samples_per_insert: float = 0.0
    """Items sampled per item inserted that the rate limiter holds the run to; 0 turns the ratio off."""
    tolerance: float = 0.0
    """How far (in sampled items) the ratio may drift before the faster side is held back."""
    priority_exponent: float = 0.6
    """Prioritized sampler: P(i) is proportional to priority_i ** priority_exponent (alpha; 0 is uniform)."""
    max_policy_lag: int | None = None
    """FIFO queue: items made by weights more than this many versions older than the newest are
    dropped (and counted) instead of served. None: never."""
    max_segment_items: int | None = None
    """The most items one segment may bring (None: segment_items_default), so that no single
    message can replace a large part of the replay. The learner states its own: a few times its
    actors' segments."""

    @property
    def segment_items(self) -> int:
        """The most items one segment may bring."""
        if self.max_segment_items is not None:
            return min(self.max_segment_items, self.capacity)
        return segment_items_default(self.capacity, self.sampler)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "TableConfig":
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(meta) - set(known)
        if unknown:
            raise ValueError(f"unknown table option(s) {sorted(unknown)}; allowed: {sorted(known)}")
        cfg = cls(**meta)
        cfg.validate()
        return cfg

    def validate(self, batch_size: int | None = None) -> None:
        if not (isinstance(self.capacity, int) and not isinstance(self.capacity, bool) and self.capacity > 0):
            raise ValueError("table capacity must be a positive integer")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                   for x in (self.samples_per_insert, self.tolerance, self.priority_exponent)):
            raise ValueError("samples_per_insert, tolerance and priority_exponent must be finite numbers")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; available: {list(SAMPLERS)}")
        if not 0 <= self.min_size <= self.capacity:
            raise ValueError("min_size must lie in [0, capacity]")
        if self.samples_per_insert < 0 or self.tolerance < 0:
            raise ValueError("samples_per_insert and tolerance must be >= 0")
        if not 0 <= self.priority_exponent <= 10:
            raise ValueError("priority_exponent must lie in [0, 10]")
        if self.sampler == "fifo" and self.samples_per_insert:
            raise ValueError("a fifo queue serves each item once: samples_per_insert must be 0")
        if self.max_policy_lag is not None and (not isinstance(self.max_policy_lag, int) or self.max_policy_lag < 0):
            raise ValueError("max_policy_lag must be a non-negative integer or None")
        if self.max_segment_items is not None and not (isinstance(self.max_segment_items, int)
                                                       and self.max_segment_items > 0):
            raise ValueError("max_segment_items must be a positive integer or None")
        if batch_size is not None and self.samples_per_insert > 0 and self.tolerance < batch_size:
            # With inserts blocked the ratio error exceeds the tolerance; a batch is
            # served while error - batch >= -tolerance. tolerance >= batch keeps
            # both sides able to move, whatever the segment size.
            raise ValueError(
                f"rate limiter would deadlock: tolerance ({self.tolerance}) must be >= batch size ({batch_size})"
            )

    def as_meta(self) -> dict[str, Any]:
        return asdict(self)


MIN_SEGMENT_ITEMS = 1024
"""A replay table takes segments of at least this many items (or its capacity) whatever its size."""


def segment_items_default(capacity: int, sampler: str) -> int:
    """A segment's items at most, for a table that does not say: 1/16 of a replay table (any more
    and one message replaces a large part of it) but at least MIN_SEGMENT_ITEMS, a queue's whole
    capacity (its items leave once)."""
    return capacity if sampler == "fifo" else min(capacity, max(MIN_SEGMENT_ITEMS, capacity // 16))


class RateLimiter:
    """Keep inserted and sampled items near ``samples_per_insert`` (Reverb's
    SampleToInsertRatio): the broker stops reading segments when actors run
    ahead (PUSH backpressure holds them) and holds sample requests when the
    learner runs ahead."""

    def __init__(self, cfg: TableConfig):
        self.cfg = cfg
        self.inserted = 0
        self.sampled = 0

    def _error(self, on_the_way: int = 0) -> float:
        return max(0, self.inserted + on_the_way - self.cfg.min_size) * self.cfg.samples_per_insert - self.sampled

    def can_insert(self) -> bool:
        return self.cfg.samples_per_insert == 0 or self._error() <= self.cfg.tolerance

    def can_grant(self, on_the_way: int, lead: int) -> bool:
        """Whether an actor may collect another segment (brokers/credits.py): the table could take
        it once the on_the_way items (granted, not yet arrived) are in, less a lead of items that
        may wait in ingest so that collecting overlaps training."""
        return self.cfg.samples_per_insert == 0 or self._error(on_the_way - lead) <= self.cfg.tolerance

    def can_sample(self, size: int, batch_size: int) -> bool:
        if size < max(self.cfg.min_size, 1):
            return False
        return self.cfg.samples_per_insert == 0 or self._error() - batch_size >= -self.cfg.tolerance


class ReplayTable:
    """A ring buffer of ``capacity`` items; each field is one preallocated array.

    The broker asks every table the same things and the table answers for its kind: which
    segments it is done with (take_released: a replay table once it stored them, a queue once it
    served or dropped their items), the policy lag of the items it last served, items too old to
    serve (drop_stale), and whether a snapshot keeps its items."""

    snapshot_keeps_items = True
    """A restarted broker can serve replay items; an on-policy queue's would be stale."""

    def __init__(self, cfg: TableConfig, seed: int = 0, schema: ItemSchema | None = None):
        self.cfg = cfg
        self.limiter = RateLimiter(cfg)
        self.rng = np.random.default_rng(seed)
        self.item_schema: ItemSchema | None = None
        self.schema: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self.storage: dict[str, np.ndarray] = {}
        self.floats: list[str] = []
        self.limits: tuple[tuple[str, float, float], ...] = ()
        # Each frame once (FrameSpec): the ring of frames, each item slot's oldest frame id (the item
        # is served while the ring holds it), and the first item id not known to have lost a frame.
        self.ring: FrameRing | None = None
        self.item_frame0 = np.zeros(0, dtype=np.int64)
        self.valid_from = 0
        if schema is not None:
            self.set_schema(schema)
        self.ids = np.full(cfg.capacity, -1, dtype=np.int64)  # global insert index per slot
        self.next_id = 0
        self.size = 0
        self.prioritized = cfg.sampler == "prioritized"
        if self.prioritized:
            self.sum_tree, self.min_tree = SumTree(cfg.capacity), MinTree(cfg.capacity)
            self.max_priority = 1.0  # new items without a priority get the largest seen so far
        # Source (segment) code -> the newest seq whose items this table is done with, since the
        # last take_released; and the policy lag of the items of the last batch served.
        self.released: dict[int, int] = {}
        self.served_lags: list[int] = []

    def set_schema(self, schema: ItemSchema) -> None:
        """Allocate the storage. The broker always passes the learner's schema at creation; a
        table made without one (tests, benchmarks) takes the first insert's."""
        self.item_schema = schema
        self.schema = {name: (np.dtype(dtype), shape) for name, dtype, shape in schema.fields}
        refs = self.references
        self.storage = {name: np.zeros((self.cfg.capacity, *shape), dtype=np.int32 if name in refs else dtype)
                        for name, (dtype, shape) in self.schema.items()}
        # Fields with limits are checked against them (which refuses non-finite values too).
        self.limits = schema.limits
        limited = {name for name, _, _ in self.limits}
        self.floats = [name for name, (dtype, _) in self.schema.items() if dtype.kind == "f" and name not in limited]
        if schema.frames is not None:  # links between a stream's segments: replay tables (a queue's
            f = schema.frames          # items must leave in order, docs/frames.md)
            self.ring = FrameRing(f.ring_size(self.cfg.capacity), f.shape, f.dtype, self.cfg.sampler != "fifo")
            self.item_frame0 = np.zeros(self.cfg.capacity, dtype=np.int64)

    @property
    def references(self) -> tuple[str, ...]:
        """The item fields that are frame references (none without a FrameSpec)."""
        return self.item_schema.references if self.item_schema is not None else ()

    @property
    def frames_per_item(self) -> int:
        """Env frames one item covers (the learner's schema says; 1 before a schema is set)."""
        return self.item_schema.frames_per_item if self.item_schema is not None else 1

    def check(self, arrays: Mapping[str, np.ndarray], priorities: np.ndarray | None = None,
              frames: int | None = None, pool: np.ndarray | None = None, stream: Any = None,
              seq: int | None = None) -> int:
        """Validate a batch of items against the schema; return how many items it holds.
        Checked: the field names, dtypes and trailing shapes, one leading (item) dimension of
        1..capacity, finite floats, numeric finite non-negative priorities (one per item),
        with ``frames`` that it equals items x frames_per_item, and for a table of frames the
        pool (its dtype and frame shape, at most the ring's size) and every reference (inside it,
        or linked to the previous segment, seq - 1, of the same ``stream``)."""
        if self.item_schema is None:
            if not arrays or any(name.startswith("_") for name in arrays):
                raise SchemaError("an item needs at least one field, and names starting with '_' are reserved")
            self.set_schema(ItemSchema.of(arrays))
        if set(arrays) != set(self.schema):
            raise SchemaError(f"fields {sorted(arrays)[:16]} != table fields {sorted(self.schema)}")
        lengths = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise SchemaError("all fields need the same leading (item) dimension")
        for name, a in arrays.items():
            dtype, shape = self.schema[name]
            if a.dtype != dtype or a.shape[1:] != shape:
                raise SchemaError(f"{name}: {a.dtype}{list(a.shape[1:])} != {dtype}{list(shape)}")
        n = lengths.pop()
        if not 0 < n <= self.cfg.segment_items:
            raise SchemaError(f"a segment of {n} items; the table takes 1..{self.cfg.segment_items} per segment "
                              "(table.max_segment_items)", "bad_item_count")
        if frames is not None and frames != n * self.item_schema.frames_per_item:
            raise SchemaError(f"frames {frames} != {n} items x {self.item_schema.frames_per_item} frames per item",
                              "bad_frames")
        for name in self.floats:
            if not np.isfinite(arrays[name]).all():
                raise SchemaError(f"{name} holds NaN or infinite values", "non_finite")
        for name, lo, hi in self.limits:  # NaN fails both comparisons: refused here too
            a = arrays[name]
            if not (lo <= a.min() and a.max() <= hi):
                raise SchemaError(f"{name} holds values outside its limits [{lo:g}, {hi:g}]", "out_of_bounds")
        if priorities is not None and (priorities.shape != (n,) or priorities.dtype.kind not in "fiu"
                                       or not np.isfinite(priorities).all() or (priorities < 0).any()):
            raise SchemaError(f"_priority must be {n} finite non-negative numbers", "bad_priorities")
        self._check_pool(arrays, pool, stream, seq)
        return n

    def _check_pool(self, arrays: Mapping[str, np.ndarray], pool: np.ndarray | None, stream: Any,
                    seq: int | None) -> None:
        spec = self.item_schema.frames
        if spec is None:
            if pool is not None:
                raise SchemaError("a frame pool for a table that stores no frames")
            return
        if pool is None or pool.dtype != np.dtype(spec.dtype) or pool.shape[1:] != spec.shape:
            got = "none" if pool is None else f"{pool.dtype}{list(pool.shape[1:])}"
            raise SchemaError(f"_frames: {got} != {spec.dtype}{list(spec.shape)}")
        try:
            self.ring.check([arrays[name] for name in spec.fields], pool, stream, seq)
        except RefError as exc:
            raise SchemaError(str(exc), exc.reason) from None

    def insert(self, arrays: Mapping[str, np.ndarray], priorities: np.ndarray | None = None,
               version: int = 0, pool: np.ndarray | None = None, stream: Any = None, seq: int | None = None) -> int:
        """Check and store a batch of items (``version``, the policy that made them, matters to
        FIFO queues only; ``pool``: the frames its references point into, ``stream`` and ``seq``:
        whose segment it is, for links); return how many were stored."""
        n = self.check(arrays, priorities, pool=pool, stream=stream, seq=seq)
        self.store(arrays, n, priorities, version, pool=pool, stream=stream, seq=seq)
        return n

    def store(self, arrays: Mapping[str, np.ndarray], n: int, priorities: np.ndarray | None = None,
              version: int = 0, source: tuple[int, int] = (-1, -1), pool: np.ndarray | None = None,
              stream: Any = None, seq: int | None = None) -> None:
        """Store n items that check() has passed (the broker checks before its sequence
        accounting, then stores, so no segment is scanned twice). source: the segment's (code,
        seq); a replay table is done with it once stored (it can be sampled from then on)."""
        self._mark_released(*source)
        if priorities is not None:
            priorities = np.asarray(priorities, dtype=np.float64)
        arrays, frame0 = self._write_frames(arrays, pool, stream, seq)
        new_ids = self._write(arrays, n, frame0)
        if self.prioritized:
            if priorities is None:
                priorities = np.full(n, self.max_priority)
            else:
                self.max_priority = max(self.max_priority, float(priorities.max(initial=0.0)))
            self._set_priorities(new_ids % self.cfg.capacity, priorities)
        self.next_id += n
        self.limiter.inserted += n
        self._drop_frameless()

    def _write_frames(self, arrays: Mapping[str, np.ndarray], pool: np.ndarray | None, stream: Any = None,
                      seq: int | None = None) -> tuple[Mapping[str, np.ndarray], np.ndarray | None]:
        """Write a segment's pool into the frame ring: its items with references as ring slots,
        and each item's oldest frame id (None without a pool)."""
        if pool is None:
            return arrays, None
        return self.ring.write(arrays, self.references, pool, stream, seq)

    def keep_frames(self, arrays: Mapping[str, np.ndarray], pool: np.ndarray | None, stream: Any,
                    seq: int | None) -> None:
        """A checked segment whose items are dropped (too stale): its frames are kept all the same,
        since the stream's next segment may link to them."""
        if pool is not None and self.ring is not None and self.ring.linkable:
            self.ring.write(arrays, self.references, pool, stream, seq)
            self._drop_frameless()

    def _drop_frameless(self) -> None:
        """Items whose frames the ring has overwritten are no longer served. Segments are written
        in order, so those items are nearly always the oldest: valid_from moves past them, and
        the live items are ids [max(valid_from, next_id - capacity), next_id). An item that
        linked to a much older segment of its stream can lose its frames before older items do;
        sampling skips it (_live)."""
        if self.ring is not None:
            oldest, cap = self.ring.oldest, self.cfg.capacity
            first = max(self.valid_from, self.next_id - cap)
            while first < self.next_id and self.item_frame0[first % cap] < oldest:
                ids = np.arange(first, min(self.next_id, first + 4096))
                lost = self.item_frame0[ids % cap] < oldest
                gone = len(ids) if lost.all() else int(np.argmin(lost))  # up to the first item still whole
                if self.prioritized:
                    self._forget(ids[:gone] % cap)
                first += gone
            self.valid_from = first
        self.size = self.next_id - max(self.valid_from, self.next_id - self.cfg.capacity)

    def _live(self, slots: np.ndarray) -> np.ndarray:
        """Which of these slots' items still have all their frames."""
        return self.item_frame0[slots] >= self.ring.oldest

    def _forget(self, slots: np.ndarray) -> None:
        """Take items out of the priority trees (their frames are gone)."""
        self.sum_tree.update(slots, np.zeros(len(slots)))
        self.min_tree.update(slots, np.full(len(slots), np.inf))

    def _write(self, arrays: Mapping[str, np.ndarray], n: int, frame0: np.ndarray | None = None) -> np.ndarray:
        """Write n items (and, in a table of frames, each one's oldest frame id) at the ring's next
        slots; return their ids."""
        cap = self.cfg.capacity
        start = self.next_id % cap
        first = min(n, cap - start)  # the write wraps around at most once
        for name, a in arrays.items():
            store = self.storage[name]
            store[start:start + first] = a[:first]
            store[: n - first] = a[first:]
        new_ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.ids[start:start + first] = new_ids[:first]
        self.ids[: n - first] = new_ids[first:]
        if frame0 is not None:
            self.item_frame0[new_ids % cap] = frame0
        return new_ids

    def _set_priorities(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        p = np.asarray(priorities, dtype=np.float64) ** self.cfg.priority_exponent
        self.sum_tree.update(slots, p)
        self.min_tree.update(slots, p)

    def sample_arrays(self, batch_size: int, beta: float = 1.0) -> dict[str, np.ndarray]:
        """A batch as it travels: the items' fields, their ids and, when prioritized, importance weights."""
        arrays, ids, weights = self.sample(batch_size, beta)
        extra = {ITEM_ID: ids} if weights is None else {ITEM_ID: ids, IMPORTANCE_WEIGHT: weights}
        return {**arrays, **extra}

    def sample(self, batch_size: int, beta: float = 1.0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
        """A batch (with replacement), the ids of its items, and for the prioritized sampler the
        importance weights (size * P(i)) ** -beta, divided by their largest possible value."""
        idx = self._draw(batch_size)
        if self.ring is not None:
            self._redraw_lost(idx)
        weights = None
        if self.prioritized:
            total = self.sum_tree.root
            probs = self.sum_tree[idx] / total
            min_prob = self.min_tree.root / total
            weights = ((probs / min_prob) ** -beta).astype(np.float32)  # = (N P(i))^-b / (N P_min)^-b
        self.limiter.sampled += batch_size
        return self.gather(idx), self.ids[idx], weights

    def _redraw_lost(self, idx: np.ndarray) -> None:
        """Draw again, in place, the slots of items that lost a linked frame before older items did
        (forgetting their priorities); after MAX_REDRAWS, the newest item, which is always whole."""
        for _ in range(MAX_REDRAWS):
            lost = ~self._live(idx)
            if not lost.any():
                return
            if self.prioritized:
                self._forget(idx[lost])
            idx[lost] = self._draw(int(lost.sum()))
        idx[~self._live(idx)] = (self.next_id - 1) % self.cfg.capacity

    def _draw(self, batch_size: int) -> np.ndarray:
        """Slots: stratified by priority mass (one draw from each of batch_size equal slices), or uniform."""
        if not self.prioritized:
            return self.rng.integers(self.next_id - self.size, self.next_id, size=batch_size) % self.cfg.capacity
        total = self.sum_tree.root
        mass = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
        idx = np.minimum(self.sum_tree.find_prefix(mass), min(self.next_id, self.cfg.capacity) - 1)
        idx[self.sum_tree[idx] <= 0] = (self.next_id - 1) % self.cfg.capacity  # rounding next to a dropped item
        return idx

    def gather(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """The items in these slots as a batch: references become their frames."""
        refs = self.references
        return {name: self.ring.gather(store[slots]) if name in refs else store[slots]
                for name, store in self.storage.items()}

    def drop_stale(self, current_version: int) -> int:
        """Items too old for the newest weights, dropped before a sample: none in a replay table
        (off-policy learners take items of any age; the broker bounds the lag at ingest)."""
        return 0

    def _mark_released(self, code: int, seq: int) -> None:
        if code >= 0 and seq > self.released.get(code, -1):
            self.released[code] = seq

    def take_released(self) -> dict[int, int]:
        """Source code -> the newest seq this table is done with since the last call."""
        released, self.released = self.released, {}
        return released

    def restored(self) -> None:
        """Called once a snapshot's arrays are back in place."""

    def update_priorities(self, ids: np.ndarray, priorities: np.ndarray) -> int:
        """New priorities for items by id; ids whose slot was overwritten since (or never
        filled) and non-finite or negative priorities are skipped. Returns how many were set."""
        if not self.prioritized:
            return 0
        ids = np.asarray(ids, dtype=np.int64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if ids.shape != priorities.shape or ids.ndim != 1:
            raise ValueError("ids and priorities must be 1-D arrays of the same length")
        slots = ids % self.cfg.capacity
        ok = (ids >= self.valid_from) & (self.ids[slots] == ids) & np.isfinite(priorities) & (priorities >= 0)
        if ok.any():
            self._set_priorities(slots[ok], priorities[ok])
            self.max_priority = max(self.max_priority, float(priorities[ok].max()))
        return int(ok.sum())

    def priority_leaves(self) -> np.ndarray:
        """priority ** exponent of every slot (what sampling uses), for snapshots."""
        return self.sum_tree[np.arange(self.cfg.capacity)]

    def restore_priority_leaves(self, leaves: np.ndarray, max_priority: float) -> None:
        slots = np.arange(self.cfg.capacity)
        self.sum_tree.update(slots, leaves)
        self.min_tree.update(slots, np.where(slots < min(self.next_id, self.cfg.capacity), leaves, np.inf))
        self.max_priority = max_priority
        dropped = np.arange(max(0, self.next_id - self.cfg.capacity), self.valid_from)
        if len(dropped):
            self._forget(dropped % self.cfg.capacity)


class _QueueLimiter:
    """A FIFO queue's flow control: actors are held back while the queue is full, the learner
    while fewer than a batch of items are queued."""

    def __init__(self, queue: "QueueTable"):
        self.queue = queue
        self.inserted = 0
        self.sampled = 0

    def can_insert(self) -> bool:
        q = self.queue
        return q.size + q.last_insert <= q.cfg.capacity

    def can_grant(self, on_the_way: int, lead: int) -> bool:
        """As RateLimiter.can_grant: the queue has room for one more segment after those on the way."""
        q = self.queue
        return q.size + max(0, on_the_way - lead) + q.last_insert <= q.cfg.capacity

    def can_sample(self, size: int, batch_size: int) -> bool:
        return size >= max(batch_size, 1)  # the broker drops stale items first (QueueTable.drop_stale)


class QueueTable(ReplayTable):
    """An on-policy FIFO queue: each item (e.g. one env's length-T unroll with its bootstrap
    observation) is served once, oldest first. Items older than cfg.max_policy_lag weight
    versions when their turn comes are dropped and counted (dropped_stale)."""

    snapshot_keeps_items = False

    def __init__(self, cfg: TableConfig, seed: int = 0, schema: ItemSchema | None = None):
        super().__init__(cfg, seed, schema)
        self.limiter = _QueueLimiter(self)
        self.versions = np.zeros(cfg.capacity, dtype=np.int64)  # policy version that made each item
        self.head = 0  # id of the oldest queued item
        self.last_insert = 0
        self.current_version = 0  # the newest weights version, set by the broker
        self.dropped_stale = 0
        self.dropped_overflow = 0
        # Which segment each item came from (source code, seq; -1: unknown), and the segments whose
        # items left the queue (served or dropped) since take_released: synchronous actors wait
        # until the learner is done with their earlier segments.
        self.sources = np.full((cfg.capacity, 2), -1, dtype=np.int64)

    def store(self, arrays: Mapping[str, np.ndarray], n: int, priorities: np.ndarray | None = None,
              version: int = 0, source: tuple[int, int] = (-1, -1), pool: np.ndarray | None = None,
              stream: Any = None, seq: int | None = None) -> None:
        arrays, frame0 = self._write_frames(arrays, pool)  # no links in a queue: stream and seq are not needed
        overflow = max(0, self.size + n - self.cfg.capacity)
        if overflow:  # only when flush reads past a full queue: the oldest make room, counted
            self._release(np.arange(self.head, self.head + overflow) % self.cfg.capacity)
            self.head += overflow
            self.dropped_overflow += overflow
        new_ids = self._write(arrays, n, frame0)
        self.versions[new_ids % self.cfg.capacity] = version
        self.sources[new_ids % self.cfg.capacity] = source
        self.next_id += n
        self.size = self.next_id - self.head
        self.last_insert = n
        self.limiter.inserted += n
        self._drop_frameless()

    def _drop_frameless(self) -> None:
        """Queued items whose frames the ring overwrote (a ring sized for the queue makes this
        rare: segments with far more frames per item than declared) leave, counted as overflow."""
        if self.ring is None:
            return
        slots = self._queued_slots()  # no links in a queue: items' first frames are in order
        gone = int(np.searchsorted(self.item_frame0[slots], self.ring.oldest))
        if gone:
            self._release(slots[:gone])
            self.head += gone
            self.dropped_overflow += gone
            self.size = self.next_id - self.head

    def _release(self, slots: np.ndarray) -> None:
        for code, seq in self.sources[slots]:
            self._mark_released(int(code), int(seq))

    def restored(self) -> None:
        self.head = self.next_id  # a snapshot keeps no queued items

    def _queued_slots(self) -> np.ndarray:
        return np.arange(self.head, self.next_id) % self.cfg.capacity

    def _fresh(self, slots: np.ndarray) -> np.ndarray:
        if self.cfg.max_policy_lag is None:
            return np.ones(len(slots), dtype=bool)
        return self.versions[slots] >= self.current_version - self.cfg.max_policy_lag

    def drop_stale(self, current_version: int) -> int:
        """Drop every queued item made more than max_policy_lag versions before current_version,
        keeping the others in order (so a queue full of stale items can never block both sides)."""
        self.current_version = current_version
        slots = self._queued_slots()
        fresh = self._fresh(slots)
        stale = int(len(slots) - fresh.sum())
        if stale:
            self._release(slots[~fresh])
            keep = slots[fresh]
            kept = {name: store[keep] for name, store in self.storage.items()}
            versions, sources = self.versions[keep], self.sources[keep]
            frame0 = self.item_frame0[keep] if self.ring is not None else None
            self.head = self.next_id - len(keep)
            new_slots = np.arange(self.head, self.next_id) % self.cfg.capacity
            for name, a in kept.items():
                self.storage[name][new_slots] = a
            self.versions[new_slots] = versions
            self.sources[new_slots] = sources
            if frame0 is not None:
                self.item_frame0[new_slots] = frame0
            self.ids[new_slots] = np.arange(self.head, self.next_id)
            self.size = len(keep)
            self.dropped_stale += stale
        return stale

    def sample(self, batch_size: int, beta: float = 1.0):
        """The oldest batch_size items, removed from the queue (call drop_stale first)."""
        if self.size < batch_size:
            raise ValueError(f"only {self.size} items queued, asked for {batch_size}")
        idx = np.arange(self.head, self.head + batch_size) % self.cfg.capacity
        batch = self.gather(idx)
        ids = self.ids[idx]
        self.served_lags = (self.current_version - self.versions[idx]).tolist()
        self._release(idx)
        self.head += batch_size
        self.size = self.next_id - self.head
        self.limiter.sampled += batch_size
        return batch, ids, None

    def update_priorities(self, ids: np.ndarray, priorities: np.ndarray) -> int:
        return 0


def make_table(cfg: TableConfig, seed: int = 0, schema: ItemSchema | None = None) -> ReplayTable:
    return (QueueTable if cfg.sampler == "fifo" else ReplayTable)(cfg, seed, schema)


def demonstration_table(schema: ItemSchema, total: int, seed: int = 0) -> ReplayTable:
    """A run's demonstration table: `total` items of a fixed dataset, sampled uniformly, filled in
    parts of any size (run.demos; the broker's `demos` request)."""
    cfg = TableConfig(capacity=total, sampler="uniform", max_segment_items=total)
    return make_table(cfg, seed=seed, schema=schema)


def sample_demonstrations(table: ReplayTable, demo_batch: int) -> dict[str, np.ndarray]:
    """demo_batch items of a demonstration table as they travel in a batch (DEMO_PREFIX; no ids)."""
    demos, _, _ = table.sample(demo_batch)
    return {DEMO_PREFIX + k: v for k, v in demos.items()}

