"""The wire format: the only module that builds or parses message bytes.

A message is a ZeroMQ multipart message:

    frame 0      msgpack map {"v": PROTOCOL_VERSION, "t": type, "m": meta,
                              "a": [[name, dtype, shape], ...]}
    frame 1..n   raw C-contiguous bytes of each array, in the order of "a"

Arrays are sent with copy=False and received as read-only ``np.frombuffer``
views of the ZeroMQ frames: no copies in Python. Nothing is ever pickled;
decoding checks every field before any array is built and raises
``WireError`` with a short machine-readable ``reason`` that callers count.
The full specification is docs/protocol.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np

PROTOCOL_VERSION = 7
"""2: typed metadata (qrl.protocol.messages), run binding, item schema and token in register, roles.
3: frames and broker_id in batch replies. 4: sample_status. 6: run ownership (the token on the
learner's requests, release, takeover_token), value limits in the item schema, error replies with a
reason code and a detail (docs/protocol.md says what changed)."""

# Every message type on every socket (docs/protocol.md describes each).
MESSAGE_TYPES = frozenset(
    {
        "segment",  # actor -> broker ingest (PUSH/PULL)
        "register",  # learner -> broker: run spec, table config, initial weights
        "demos",  # learner -> broker: a part of the run's demonstration table
        "get_spec",  # anyone -> broker
        "spec",  # broker reply
        "get_weights",  # anyone -> broker
        "weights",  # learner -> broker (PUB) and broker -> actors (XPUB), or a reply
        "sample",  # learner -> broker: ask for a batch
        "update_priorities",  # learner -> broker: new priorities by item id (prioritized tables)
        "batch",  # broker reply to sample
        "sample_status",  # learner -> broker and its reply: which sample requests the broker holds
        "get_stats",  # anyone -> broker
        "claim_ids",  # an actor supervisor -> broker: a block of unused actor ids (--first-id auto)
        "flush",  # a stopping actor -> broker: read my last segments even while holding actors back
        "actor_error",  # an actor -> broker: why it cannot act on the run (counted in stats)
        "release",  # the run's learner -> broker: done with the run, another may register at once
        "credit",  # an actor -> broker: may I collect segment seq? and the reply: granted up to `until`
        "stats",  # broker reply
        "ok",  # generic success reply
        "not_ready",  # the broker has no run spec / weights yet
        "error",  # the request was refused; meta["reason"] (a code) and meta["detail"] (a line)
        "env_hello",  # env-only actor -> inference server: who I am; reply env_config
        "env_config",  # inference server reply: the run's environment settings for this actor
        "env_step",  # env-only actor -> inference server: observations (and the last step's outcome)
        "env_actions",  # inference server reply: the actions
        "env_bye",  # env-only actor -> inference server: stopping, free my state
    }
)

# dtype.str values accepted on the wire: explicit little-endian numeric types.
# No object, string, void or datetime dtypes: nothing that can carry code or
# pointers, and nothing whose size is not fixed.
ALLOWED_DTYPES = frozenset(
    {"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"}
)


@dataclass(frozen=True)
class Limits:
    """Bounds a decoder enforces; the defaults fit weights of large MLPs and CNNs."""

    max_header_bytes: int = 1 << 20
    max_arrays: int = 1024
    max_ndim: int = 8
    max_message_bytes: int = 256 << 20


DEFAULT_LIMITS = Limits()


class WireError(ValueError):
    """A message that is not a valid qrl message. ``reason`` is a short tag."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Message:
    type: str
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def encode(
    msg_type: str, meta: Mapping[str, Any] | None = None, arrays: Mapping[str, np.ndarray] | None = None
) -> list:
    """Frames for one message: [header bytes, array buffers...] ready for send_multipart(copy=False)."""
    if msg_type not in MESSAGE_TYPES:
        raise WireError("bad_type", repr(msg_type))
    descs, buffers = [], []
    for name, value in (arrays or {}).items():
        arr = np.asarray(value, order="C")  # (ascontiguousarray would turn 0-d into 1-d)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dtype.str not in ALLOWED_DTYPES:
            raise WireError("bad_dtype", f"{name}: {arr.dtype}")
        arr = arr.astype(dtype, copy=False)
        descs.append([name, dtype.str, list(arr.shape)])
        # A 0-d or empty array still gets its own (possibly empty) frame.
        buffers.append(arr.reshape(-1).view(np.uint8) if arr.size else b"")
    header = msgpack.packb(
        {"v": PROTOCOL_VERSION, "t": msg_type, "m": dict(meta or {}), "a": descs}, use_bin_type=True
    )
    return [header, *buffers]


def peek_req(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> int | None:
    """The request id of a message that failed to decode, when its header can still be read (so the
    error reply reaches the request that caused it); None otherwise."""
    if not frames or len(_frame_bytes(frames[0])) > limits.max_header_bytes:
        return None
    try:
        header = msgpack.unpackb(_frame_bytes(frames[0]), raw=False, max_bin_len=0, max_ext_len=0,
                                 max_str_len=limits.max_header_bytes)
        req = header.get("m", {}).get("req") if isinstance(header, dict) else None
    except Exception:  # noqa: BLE001 - whatever the bytes are, there is simply no id to echo
        return None
    ok = isinstance(req, int) and not isinstance(req, bool) and abs(req) <= 2**53 - 1
    return req if ok else None


def _frame_bytes(frame: Any) -> memoryview:
    # zmq.Frame (copy=False receive) exposes .buffer; bytes/memoryview pass through.
    return memoryview(frame.buffer if hasattr(frame, "buffer") else frame)


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate and parse a multipart message; arrays are read-only views of the frames."""
    if not frames:
        raise WireError("empty")
    header_buf = _frame_bytes(frames[0])
    if len(header_buf) > limits.max_header_bytes:
        raise WireError("header_too_large", f"{len(header_buf)} bytes")
    try:
        header = msgpack.unpackb(
            header_buf,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_header_bytes,
            max_bin_len=limits.max_header_bytes,
            max_array_len=max(limits.max_arrays, 4096),
            max_map_len=4096,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # msgpack raises several types
        raise WireError("bad_header", type(exc).__name__) from None
    if not isinstance(header, dict):
        raise WireError("bad_header", "not a map")
    if header.get("v") != PROTOCOL_VERSION:
        v = header.get("v")
        raise WireError("bad_version", str(v) if isinstance(v, int) else type(v).__name__)
    msg_type = header.get("t")
    if not isinstance(msg_type, str) or msg_type not in MESSAGE_TYPES:
        raise WireError("bad_type", msg_type[:64] if isinstance(msg_type, str) else type(msg_type).__name__)
    meta = header.get("m", {})
    descs = header.get("a", [])
    if not isinstance(meta, dict) or not isinstance(descs, list):
        raise WireError("bad_header", "meta must be a map and arrays a list")
    if len(descs) > limits.max_arrays:
        raise WireError("too_many_arrays", str(len(descs)))
    if len(descs) != len(frames) - 1:
        raise WireError("frame_count", f"{len(descs)} arrays declared, {len(frames) - 1} frames")

    arrays: dict[str, np.ndarray] = {}
    total = 0
    for desc, frame in zip(descs, frames[1:]):
        name, dtype, shape = _check_desc(desc, limits)
        if name in arrays:
            raise WireError("duplicate_array", name)
        nbytes = np.dtype(dtype).itemsize * math.prod(shape)  # Python ints: no overflow
        total += nbytes
        if total > limits.max_message_bytes:
            raise WireError("too_large", f"{total} bytes")
        buf = _frame_bytes(frame)
        if len(buf) != nbytes:
            raise WireError("size_mismatch", f"{name}: declared {nbytes} bytes, got {len(buf)}")
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        arr.flags.writeable = False  # a view of the frame, possibly shared (cached weights)
        arrays[name] = arr
    return Message(msg_type, meta, arrays)


def _check_desc(desc: Any, limits: Limits) -> tuple[str, str, tuple[int, ...]]:
    if not (isinstance(desc, list) and len(desc) == 3):
        raise WireError("bad_array_desc", "expected [name, dtype, shape]")
    name, dtype, shape = desc
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise WireError("bad_array_desc", "name")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise WireError("bad_dtype", f"{name}: {type(dtype).__name__ if not isinstance(dtype, str) else dtype[:32]}")
    if not isinstance(shape, list) or len(shape) > limits.max_ndim:
        raise WireError("bad_shape", f"{name}: ndim")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= limits.max_message_bytes for d in shape):
        raise WireError("bad_shape", f"{name}: dimensions must be integers in [0, {limits.max_message_bytes}]")
    return name, dtype, tuple(shape)
