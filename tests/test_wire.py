import msgpack
import numpy as np
import pytest
import zmq

from qrl.protocol import wire
from qrl.protocol.transport import recv_frames, send

DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64"]
SHAPES = [(), (0,), (7,), (3, 5), (2, 3, 4, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip(dtype, shape):
    rng = np.random.default_rng(0)
    arr = (rng.random(shape) * 100).astype(dtype)
    msg = wire.decode(wire.encode("segment", {"seq": 3, "x": [1.5, "a"]}, {"data": arr}))
    assert msg.type == "segment" and msg.meta == {"seq": 3, "x": [1.5, "a"]}
    out = msg.arrays["data"]
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_non_contiguous_and_big_endian_are_sent_as_little_endian_c_order():
    arr = np.arange(12, dtype=">i4").reshape(3, 4).T
    out = wire.decode(wire.encode("batch", {}, {"a": arr})).arrays["a"]
    assert out.dtype == np.dtype("<i4")
    np.testing.assert_array_equal(out, arr)


def test_round_trip_over_tcp_is_a_view_of_the_received_frame(ctx):
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (push, pull):
        s.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    big = np.arange(1 << 18, dtype=np.float32)  # 1 MB: above zmq's copy threshold
    send(push, "segment", {"seq": 1}, {"obs": big, "act": np.array([1, 2], dtype=np.int64)})
    frames = recv_frames(pull, 5000)
    assert frames is not None, "no message within 5 s"
    msg = wire.decode(frames)
    np.testing.assert_array_equal(msg.arrays["obs"], big)
    assert not msg.arrays["obs"].flags.owndata and not msg.arrays["obs"].flags.writeable


def _header(**over):
    h = {"v": wire.PROTOCOL_VERSION, "t": "segment", "m": {}, "a": [["x", "<f4", [2]]]}
    h.update(over)
    return msgpack.packb(h)


GOOD_BODY = np.zeros(2, dtype=np.float32).tobytes()

MALFORMED = {
    "empty": [],
    "bad_header": [b"\xc1not msgpack", GOOD_BODY],
    "bad_header (not a map)": [msgpack.packb([1, 2, 3])],
    "bad_version": [_header(v=99), GOOD_BODY],
    "bad_type": [_header(t="exec"), GOOD_BODY],
    "bad_header (meta)": [_header(m=[1]), GOOD_BODY],
    "frame_count": [_header(), GOOD_BODY, GOOD_BODY],
    "bad_dtype (object)": [_header(a=[["x", "|O", [2]]]), GOOD_BODY],
    "bad_dtype (unicode)": [_header(a=[["x", "<U1", [2]]]), GOOD_BODY],
    "bad_dtype (big endian)": [_header(a=[["x", ">f4", [2]]]), GOOD_BODY],
    "bad_shape (negative)": [_header(a=[["x", "<f4", [-2]]]), GOOD_BODY],
    "bad_shape (float)": [_header(a=[["x", "<f4", [2.0]]]), GOOD_BODY],
    "bad_shape (ndim)": [_header(a=[["x", "<f4", [1] * 9]]), GOOD_BODY],
    "bad_array_desc": [_header(a=[["x", "<f4"]]), GOOD_BODY],
    "size_mismatch (truncated)": [_header(), GOOD_BODY[:-1]],
    "size_mismatch (padded)": [_header(), GOOD_BODY + b"\0"],
    "duplicate_array": [_header(a=[["x", "<f4", [2]], ["x", "<f4", [2]]]), GOOD_BODY, GOOD_BODY],
    "too_large": [_header(a=[["x", "<f8", [1 << 20, 1 << 20]]]), b""],
    "header_too_large": [msgpack.packb({"v": 1, "t": "segment", "m": {"pad": "x" * (2 << 20)}, "a": []})],
    "too_many_arrays": [_header(a=[[f"x{i}", "<f4", [0]] for i in range(2000)]), *[b""] * 2000],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_messages_are_rejected_with_their_reason(case):
    with pytest.raises(wire.WireError) as info:
        wire.decode(MALFORMED[case])
    assert info.value.reason == case.split(" ")[0]


def test_encoder_refuses_object_arrays_and_unknown_types():
    with pytest.raises(wire.WireError, match="bad_dtype"):
        wire.encode("segment", {}, {"x": np.array([object()])})
    with pytest.raises(wire.WireError, match="bad_type"):
        wire.encode("nope")


def test_no_module_of_qrl_uses_pickle_for_the_wire():
    import pathlib
    import re

    root = pathlib.Path(wire.__file__).resolve().parents[1]
    offenders = [str(p) for d in ("qrl", "brokers", "algorithms") for p in (root / d).rglob("*.py")
                 if re.search(r"^\s*(import pickle|from pickle|import cloudpickle)|recv_pyobj|send_pyobj",
                              p.read_text(), re.M)]
    assert offenders == []
