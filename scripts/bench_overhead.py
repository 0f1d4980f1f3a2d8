"""Fixed overhead of a run: how long `qrl run` takes before it learns, and after it is done.

For each actor count, `qrl run` trains a preset to its target several times. Each phase is
measured from the run's own records: the broker's address file (bound), the learner's metrics
(registered, first segment at the broker, first update, the evaluation that reached the target,
all with wall-clock times) and the moment `qrl run` exited (every process reaped, final
checkpoint written). Medians over --rounds.

    python scripts/bench_overhead.py               # PPO CartPole, --actors 2 and 32, 3 rounds
    python scripts/bench_overhead.py --quick       # one round, --actors 2

--compare-compiler-import also runs every round once more with QRL_TORCH_COMPILE=1 (the learner's
optimizers import torch._dynamo, as torch's own do: what qrl.eager saves), alternated with the
normal runs, and prints that table too with the ratio of the medians to first update.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parser, print_table, save_results

ROOT = Path(__file__).resolve().parents[1]
COMPILER = "with torch._dynamo imported"
PHASES = ["broker bound", "registered", "first segment", "first update", "target reached", "exited"]


def one_run(config: Path, actors: int, run_dir: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Seconds from launch to each phase, and from the target to exit."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "qrl", "run", "--config", str(config), "--actors", str(actors),
                           "--run-dir", str(run_dir), "--no-progress"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    t_exit = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"qrl run failed ({proc.returncode}): {proc.stderr[-500:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    phase = {r["name"]: r.get("at", r["time"]) for r in records if r["kind"] == "phase"}
    summary = json.loads((run_dir / "summary.json").read_text())
    target = summary["target_return"]
    reached = next((r["time"] for r in records if r["kind"] == "eval" and not r.get("final")
                    and r["mean_return"] >= target), float("nan"))  # nan: the budget ran out first
    # (a version of qrl without the learner's phase records measures the other phases)
    times = {"broker bound": os.stat(run_dir / "broker.json").st_mtime, "registered": phase.get("registered"),
             "first segment": phase.get("first_segment"), "first update": phase.get("first_update"),
             "target reached": reached, "exited": t_exit}
    out = {name: float("nan") if times[name] is None else times[name] - t0 for name in PHASES}
    out["target to exit"] = t_exit - reached
    return out


def _median(values: list[float]) -> float:
    """Of the runs that got there (a run whose budget ran out before the target has no target phases)."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else float("nan")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--config", default=str(ROOT / "configs" / "ppo-CartPole-v1.yaml"))
    p.add_argument("--actors", default="2,32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--compare-compiler-import", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.actors, a.rounds = "2", 1
    variants = {"": {}}  # name -> environment of its `qrl run`; "" is qrl as it is
    if a.compare_compiler_import:
        variants[COMPILER] = {"QRL_TORCH_COMPILE": "1"}
    results: dict[str, dict] = {name: {} for name in variants}
    for actors in [int(n) for n in a.actors.split(",")]:
        runs: dict[str, list] = {name: [] for name in variants}
        for _ in range(a.rounds):
            for name, env in variants.items():  # alternated, so both see the same machine
                with tempfile.TemporaryDirectory() as tmp:
                    runs[name].append(one_run(Path(a.config), actors, Path(tmp) / "run", env))
        for name in variants:
            medians = {k: _median([r[k] for r in runs[name]]) for k in runs[name][0]}
            results[name][str(actors)] = {"median_s": medians, "runs": runs[name]}
    headers = ["actors", *(f"to {k} s" for k in PHASES), "target to exit s"]
    rows = lambda name: [[n, *(f"{r['median_s'][k]:.2f}" for k in [*PHASES, "target to exit"])]
                         for n, r in results[name].items()]
    table = print_table(headers, rows(""))
    record = {"quick": a.quick, "config": a.config, "rounds": a.rounds, "actors": results[""], **table}
    if COMPILER in results:
        ratios = "; ".join(
            f"--actors {n}: launch to first update "
            f"{results[''][n]['median_s']['first update'] / r['median_s']['first update']:.2f}x"
            for n, r in results[COMPILER].items())
        text = (f"The same rounds, alternated, {COMPILER} (QRL_TORCH_COMPILE=1: the learner's optimizers import "
                f"it, as torch's own do; qrl.eager saves that). qrl / that run: {ratios}.")
        print("\n" + text)
        record["also"] = [{"text": text, **print_table(headers, rows(COMPILER))}]
        record["compiler_import"] = {"actors": results[COMPILER]}
    save_results("overhead", record)


if __name__ == "__main__":
    main()
