"""Load test of the accounting: N actor processes push as fast as they can for a while, are
stopped cleanly, and then every segment each worker says it sent must have been received
by the broker: no gaps, no duplicates, nothing rejected, sent == received.

    python scripts/load_test.py --actors 32 --seconds 30
    python scripts/load_test.py --actors 32 --seconds 3      # the short version CI runs

Exits 1 if any check fails.
"""

from __future__ import annotations

import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import zmq

from _common import parser
from bench_collection import register
from qrl.cluster import start_actors, start_broker, stop
from qrl.protocol.transport import Client

SENT = re.compile(r"actor (\d+): incarnation (\w+) sent (\d+) segments")


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--actors", type=int, default=32)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--env", default="CartPole-v1")
    a = p.parse_args()
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        broker, address = start_broker(run_dir)
        try:
            client = Client(ctx, address, "load-test")
            stats = lambda: client.request("get_stats", wait_s=30).meta
            register(client, a.env, num_envs=8)  # rate limiter off: actors push flat out
            actors = start_actors(run_dir, address, a.actors)
            deadline = time.monotonic() + 120
            while stats()["actors"] < a.actors:
                assert actors.poll() is None and time.monotonic() < deadline, "actors did not start"
                time.sleep(0.1)
            time.sleep(a.seconds)
            actors.send_signal(signal.SIGTERM)  # clean stop: each worker flushes its last segment
            actors.wait(60)
            # The broker may still be reading what was flushed: wait until its count settles.
            last, settled = -1, stats()
            while settled["segments"] != last:
                last = settled["segments"]
                time.sleep(0.5)
                settled = stats()
            log = (run_dir / "actors.log").read_text()
            sent = sum(int(m.group(3)) for m in SENT.finditer(log))
            workers = len(SENT.findall(log))
            s = settled
            checks = {
                "every worker reported its count": workers == a.actors,
                "no gaps": s["gaps"] == 0,
                "no duplicates": s["duplicates"] == 0,
                "nothing rejected": s["rejected"] == {},
                "sent == received": sent == s["segments"],
            }
            print(f"{a.actors} actors for {a.seconds:.0f} s: sent {sent:,} segments, broker received "
                  f"{s['segments']:,} ({s['frames']:,} frames), gaps {s['gaps']}, duplicates {s['duplicates']}, "
                  f"rejected {s['rejected']}")
            for name, ok in checks.items():
                print(f"  {'ok  ' if ok else 'FAIL'} {name}")
            client.close()
            return 0 if all(checks.values()) else 1
        finally:
            stop([broker])
            ctx.destroy(linger=0)


if __name__ == "__main__":
    sys.exit(main())
