"""The distributed peer: RLlib PPO on CartPole-v1 with 2 env runners, against qrl at the same
core count, in the same run. Optional and heavy (ray): `make bench PEERS=rllib` installs
ray[rllib] into its own virtual environment (.venv-rllib) and runs this; never in CI.

Both run PPO: qrl its preset (configs/ppo-CartPole-v1.yaml, rl-baselines3-zoo's hyperparameters)
with 2 actor processes, RLlib its default PPO with 2 env runners. For each: environment frames
consumed by training per second with learning on (qrl: frames the learner trained on, from the
broker's count; RLlib: its sampled steps, every one of which it trains on), and wall-clock seconds
from launch (start-up included) until the return first reaches 475: for RLlib the mean return of
its training episodes (what it reports), for qrl its 10-episode deterministic evaluation. qrl
trains for as long as RLlib took, so both throughputs span the same phases.

    python scripts/bench_rllib.py --rllib-python .venv-rllib/bin/python [--seeds 2]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parser, print_table, save_results

THRESHOLD = 475.0
PRESET = Path(__file__).resolve().parents[1] / "configs" / "ppo-CartPole-v1.yaml"

RLLIB_WORKER = r"""
import json, sys, time
launched = float(sys.argv[1]); seed = int(sys.argv[2]); max_s = float(sys.argv[3])
import ray
from ray.rllib.algorithms.ppo import PPOConfig
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
config = (PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=2).debugging(seed=seed))
algo = config.build_algo()
curve = []
while time.time() - launched < max_s:
    r = algo.train()
    runners = r.get("env_runners", {})
    steps = r.get("num_env_steps_sampled_lifetime") or runners.get("num_env_steps_sampled_lifetime")
    curve.append({"time": time.time() - launched, "frames": int(steps or 0),
                  "mean_return": float(runners.get("episode_return_mean", float("nan")))})
    if curve[-1]["mean_return"] >= 475:
        break
print("RESULT " + json.dumps(curve), flush=True)
"""


def run_rllib(python: str, seed: int, max_s: float) -> dict:
    launched = time.time()
    out = subprocess.run([python, "-c", RLLIB_WORKER, str(launched), str(seed), str(max_s)], capture_output=True,
                         text=True, timeout=max_s + 300)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"rllib run failed: {out.stderr[-2000:]}")
    return {"curve": json.loads(line[7:]), "wall_s": time.time() - launched}


def run_qrl(seed: int, max_s: float, tmp: Path) -> dict:
    run_dir = tmp / f"qrl-{seed}"
    launched = time.time()
    subprocess.run([sys.executable, "-m", "qrl", "run", "--config", str(PRESET), "--actors", "2",
                    "--seed", str(seed), "--total-steps", "10000000", "--target-return", "1e9", "--run-dir",
                    str(run_dir), "--no-progress", "--set", f"run.max_seconds={max_s}"],
                   check=True, timeout=max_s + 300, stdout=subprocess.DEVNULL)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [{"time": m["time"] - launched, "frames": m.get("frames_consumed") or 0, "mean_return": float("nan")}
             for m in metrics if m["kind"] == "train"]
    curve += [{"time": m["time"] - launched, "frames": None, "mean_return": m["mean_return"]}
              for m in metrics if m["kind"] == "eval" and not m.get("final")]
    return {"curve": sorted(curve, key=lambda c: c["time"]), "wall_s": time.time() - launched}


def summarize(curve: list[dict]) -> tuple[float, float]:
    """(seconds from launch to the threshold or inf, env frames consumed per second between the
    first and last report: with learning on, start-up excluded)."""
    hit = next((c for c in curve if c["mean_return"] >= THRESHOLD), None)
    counted = [c for c in curve if c["frames"] is not None]
    first, last = counted[0], counted[-1]
    return (hit["time"] if hit else float("inf")), (last["frames"] - first["frames"]) / (last["time"] - first["time"])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rllib-python", default=".venv-rllib/bin/python")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=300)
    a = p.parse_args()
    runs = {"qrl": [], "rllib": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):
            runs["rllib"].append(run_rllib(a.rllib_python, seed, a.max_seconds))
            runs["qrl"].append(run_qrl(seed, max(30.0, runs["rllib"][-1]["wall_s"]), Path(tmp)))
    rows, med = [], {}
    for system, rs in runs.items():
        solved, speed = zip(*(summarize(r["curve"]) for r in rs))
        med[system] = (statistics.median(solved), statistics.median(speed))
        for seed, (s, v) in enumerate(zip(solved, speed)):
            rows.append([system, seed, f"{s:.1f}", f"{v:,.0f}"])
    table = print_table(["system", "seed", "s to return 475", "env frames consumed/s, learning on"], rows)
    print(f"\nqrl/rllib: throughput {med['qrl'][1] / med['rllib'][1]:.1f}x, time to solve "
          f"{med['qrl'][0] / med['rllib'][0]:.2f}x")
    save_results("rllib", {**table, "medians": med, "runs": runs})


if __name__ == "__main__":
    main()
