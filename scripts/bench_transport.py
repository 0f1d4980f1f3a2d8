"""Transport: qrl's encode -> PUSH -> PULL -> decode against raw pyzmq PUSH/PULL of the
same bytes with copy=False, between two processes, over tcp loopback and ipc.
pickle and msgpack-of-bytes are contrast rows (benchmark-only: qrl never pickles).

Each cell is the median of --rounds; modes are interleaved within a round so they
share the machine alike. Prints messages/s, GB/s and the ratio to raw.

    python scripts/bench_transport.py            # ~3 minutes
    python scripts/bench_transport.py --quick    # seconds: proves it still works
"""

from __future__ import annotations

import multiprocessing as mp
import pickle  # contrast row only
import statistics
import tempfile
import time

import msgpack
import numpy as np
import zmq

from _common import parser, print_table, save_results
from qrl.protocol import wire

SIZES = {"1KB": 1 << 10, "64KB": 64 << 10, "1MB": 1 << 20, "8MB": 8 << 20}
MODES = ("raw", "qrl", "msgpack", "pickle")
HWM = 32  # bounded queues: 32 x 8 MB at most in flight


def encode(mode: str, arr: np.ndarray, i: int) -> list:
    if mode == "raw":
        return [arr]
    if mode == "qrl":
        return wire.encode("segment", {"seq": i}, {"x": arr})
    if mode == "msgpack":
        return [msgpack.packb({"seq": i, "x": arr.tobytes()})]
    return [pickle.dumps({"seq": i, "x": arr}, protocol=pickle.HIGHEST_PROTOCOL)]


def decode(mode: str, frames: list) -> np.ndarray:
    if mode == "raw":
        return np.frombuffer(frames[0].buffer, dtype=np.uint8)
    if mode == "qrl":
        return wire.decode(frames).arrays["x"]
    if mode == "msgpack":
        return np.frombuffer(msgpack.unpackb(frames[0].buffer)["x"], dtype=np.uint8)
    return pickle.loads(frames[0].buffer)["x"]


def sender(endpoint: str, mode: str, size: int, count: int, done) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, HWM)
    s.connect(endpoint)
    arr = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    for i in range(count):
        s.send_multipart(encode(mode, arr, i), copy=False)
    # Stay connected until the receiver has everything: over ipc, libzmq drops messages still
    # queued at the receiver when the sending peer disconnects (seen here: the last ~30 of 2000).
    done.wait(120)
    s.close(linger=0)
    ctx.term()


def one_run(transport: str, mode: str, size: int, count: int, tmp: str) -> float:
    """Seconds to receive and decode `count` messages sent by another process."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, HWM)
    if transport == "tcp":
        endpoint = f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"
    else:
        endpoint = f"ipc://{tmp}/bench-{time.time_ns()}.sock"
        pull.bind(endpoint)
    fork = mp.get_context("fork")
    done = fork.Event()
    proc = fork.Process(target=sender, args=(endpoint, mode, size, count, done))
    proc.start()
    try:
        assert pull.poll(30_000), "sender never connected"
        start = time.perf_counter()
        for _ in range(count):
            if not pull.poll(30_000):
                raise TimeoutError(f"{mode} {transport} {size}: stalled")
            decode(mode, pull.recv_multipart(copy=False))
        return time.perf_counter() - start
    finally:
        done.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        pull.close()
        ctx.term()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bytes-per-run", type=float, default=1.5e9, help="payload bytes per measured run")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.bytes_per_run = 1, 2e7
    rows, raw_results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for transport in ("tcp", "ipc"):
            for label, size in SIZES.items():
                count = int(max(200, min(200_000, a.bytes_per_run // size)))
                if a.quick:
                    count = min(count, 2000)
                times = {m: [] for m in MODES}
                for _ in range(a.rounds):
                    for mode in MODES:
                        times[mode].append(one_run(transport, mode, size, count, tmp))
                med = {m: statistics.median(t) for m, t in times.items()}
                for mode in MODES:
                    msgs = count / med[mode]
                    rows.append([transport, label, mode, f"{msgs:,.0f}", f"{msgs * size / 1e9:.2f}",
                                 f"{med['raw'] / med[mode]:.2f}"])
                raw_results[f"{transport}/{label}"] = {"count": count, "seconds": times}
    table = print_table(["transport", "payload", "mode", "msg/s", "GB/s", "vs raw"], rows)
    save_results("transport", {"quick": a.quick, "rounds": a.rounds, **table, "runs": raw_results})


if __name__ == "__main__":
    main()
