"""Fixed overhead of a run: how long `qrl run` takes before it learns, and after it is done.

For each actor count, `qrl run` trains a preset to its target several times. Each phase is
measured from the run's own records: the broker's address file (bound), the learner's metrics
(registered, first segment at the broker, first update, the evaluation that reached the target,
all with wall-clock times) and the moment `qrl run` exited (every process reaped, final
checkpoint written). Medians over --rounds.

    python scripts/bench_overhead.py               # PPO CartPole, --actors 2 and 32, 3 rounds
    python scripts/bench_overhead.py --quick       # one round, --actors 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, save_results

ROOT = Path(__file__).resolve().parents[1]
PHASES = ["broker bound", "registered", "first segment", "first update", "target reached", "exited"]


def one_run(config: Path, actors: int, run_dir: Path) -> dict[str, float]:
    """Seconds from launch to each phase, and from the target to exit."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "qrl", "run", "--config", str(config), "--actors", str(actors),
                           "--run-dir", str(run_dir), "--no-progress"], capture_output=True, text=True, timeout=600)
    t_exit = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"qrl run failed ({proc.returncode}): {proc.stderr[-500:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    phase = {r["name"]: r.get("at", r["time"]) for r in records if r["kind"] == "phase"}
    summary = json.loads((run_dir / "summary.json").read_text())
    target = summary["target_return"]
    reached = next(r["time"] for r in records if r["kind"] == "eval" and not r.get("final")
                   and r["mean_return"] >= target)
    # (a version of qrl without the learner's phase records measures the other phases)
    times = {"broker bound": os.stat(run_dir / "broker.json").st_mtime, "registered": phase.get("registered"),
             "first segment": phase.get("first_segment"), "first update": phase.get("first_update"),
             "target reached": reached, "exited": t_exit}
    out = {name: float("nan") if times[name] is None else times[name] - t0 for name in PHASES}
    out["target to exit"] = t_exit - reached
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "ppo-CartPole-v1.yaml"))
    p.add_argument("--actors", default="2,32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.actors, a.rounds = "2", 1
    results = {}
    rows = []
    for actors in [int(n) for n in a.actors.split(",")]:
        runs = []
        for _ in range(a.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(one_run(Path(a.config), actors, Path(tmp) / "run"))
        medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        results[str(actors)] = {"median_s": medians, "runs": runs}
        rows.append([actors, *(f"{medians[k]:.2f}" for k in [*PHASES, "target to exit"])])
    table = print_table(["actors", *(f"to {k} s" for k in PHASES), "target to exit s"], rows)
    save_results("overhead", {"quick": a.quick, "config": a.config, "rounds": a.rounds, "actors": results, **table})


if __name__ == "__main__":
    main()
