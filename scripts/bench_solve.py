"""Time to solve, the headline: qrl against stable-baselines3 with rl-baselines3-zoo's tuned
hyperparameters, same machine, same run, seeds interleaved.

For each run: wall-clock seconds from launching the process (start-up included) until a
20-episode deterministic evaluation first reaches the threshold, the env steps used by
then, and the evaluation at the end of the step budget (does the solve hold?). Both sides
evaluate every 2 s of wall time on a 20-env vector env, so evaluation costs them alike.
Also the learner's updates/s and the fraction of its wall time spent waiting for data.

    python scripts/bench_solve.py                 # DQN CartPole-v1, 3 seeds each, ~8 minutes
    python scripts/bench_solve.py --quick         # one short run each: proves it still works
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, save_results

# rl-baselines3-zoo hyperparams/dqn.yml, CartPole-v1 (n_timesteps 5e4 there).
ZOO_DQN_CARTPOLE = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
                        target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                        exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))
EVAL_EVERY_S = 2.0
EVAL_EPISODES = 20


def sb3_worker(env_id: str, seed: int, steps: int, out: Path, launched: float) -> None:
    """Runs in its own process: SB3 DQN with a time-based 20-episode deterministic evaluation."""
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    # render_mode=None: make_vec_env would otherwise create rgb_array envs (slower; see MEASURED.md).
    env = make_vec_env(env_id, n_envs=1, seed=seed, env_kwargs=dict(render_mode=None))
    eval_env = make_vec_env(env_id, n_envs=EVAL_EPISODES, seed=seed + 7, env_kwargs=dict(render_mode=None))
    curve = []

    class TimedEval(BaseCallback):
        last = 0.0

        def _on_step(self) -> bool:
            if time.time() - self.last >= EVAL_EVERY_S:
                mean, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
                self.last = time.time()
                curve.append({"time": self.last - launched, "frames": self.num_timesteps, "mean_return": float(mean)})
            return True

    model = DQN("MlpPolicy", env, seed=seed, verbose=0, **ZOO_DQN_CARTPOLE)
    model.learn(total_timesteps=steps, callback=TimedEval())
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    curve.append({"time": time.time() - launched, "frames": steps, "mean_return": float(mean), "final": True})
    out.write_text(json.dumps({"curve": curve}))


def run_sb3(env_id: str, seed: int, steps: int, tmp: Path) -> dict:
    out = tmp / f"sb3-{seed}.json"
    launched = time.time()
    subprocess.run([sys.executable, __file__, "--sb3-worker", env_id, str(seed), str(steps), str(out), str(launched)],
                   check=True, timeout=1800)
    return {"curve": json.loads(out.read_text())["curve"], "wall_s": time.time() - launched}


def run_qrl(env_id: str, seed: int, steps: int, actors: int, tmp: Path) -> dict:
    run_dir = tmp / f"qrl-{seed}"
    launched = time.time()
    subprocess.run([sys.executable, "-m", "qrl", "run", "--algo", "dqn", "--env", env_id, "--actors", str(actors),
                    "--seed", str(seed), "--total-steps", str(steps), "--target-return", "1e9", "--run-dir",
                    str(run_dir), "--no-progress", "--set", f"run.eval_every_s={EVAL_EVERY_S}",
                    "--set", "run.eval_every_frames=0",
                    "--set", f"run.eval_episodes={EVAL_EPISODES}"],
                   check=True, timeout=1800, stdout=subprocess.DEVNULL)
    metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [{"time": m["time"] - launched, "frames": m["frames"], "mean_return": m["mean_return"],
              **({"final": True} if m.get("final") else {})} for m in metrics if m["kind"] == "eval"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"curve": curve, "wall_s": time.time() - launched, "updates_per_s": summary["updates"] / summary["elapsed_s"],
            "wait_fraction": summary["wait_fraction"]}


def solve_point(curve: list[dict], threshold: float) -> dict | None:
    return next((c for c in curve if c["mean_return"] >= threshold), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--threshold", type=float, default=475.0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100_000, help="env step budget of each run, both systems")
    p.add_argument("--actors", type=int, default=4)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.seeds, a.steps = 1, 5_000
    runs: dict[str, list[dict]] = {"qrl": [], "sb3": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):  # interleaved: qrl, sb3, qrl, sb3, ...
            runs["qrl"].append(run_qrl(a.env, seed, a.steps, a.actors, Path(tmp)))
            runs["sb3"].append(run_sb3(a.env, seed, a.steps, Path(tmp)))
            for system in runs:
                r = runs[system][-1]
                hit = solve_point(r["curve"], a.threshold)
                when = "-" if hit is None else f"{hit['time']:.1f} s"
                print(f"seed {seed} {system}: solved at {when}"
                      f", final {r['curve'][-1]['mean_return']:.1f}, run {r['wall_s']:.1f} s", flush=True)
    rows, solve_times = [], {}
    for system, rs in runs.items():
        times = []
        for seed, r in enumerate(rs):
            hit = solve_point(r["curve"], a.threshold)
            final = r["curve"][-1]["mean_return"]
            times.append(hit["time"] if hit else float("inf"))
            rows.append([system, seed, "-" if hit is None else f"{hit['time']:.1f}",
                         "-" if hit is None else f"{hit['frames']:,}", f"{final:.1f}",
                         "yes" if final >= a.threshold else "no",
                         f"{r['updates_per_s']:.0f}" if "updates_per_s" in r else "",
                         f"{100 * r['wait_fraction']:.1f}%" if "wait_fraction" in r else ""])
        solve_times[system] = statistics.median(times)
    print()
    print_table(["system", "seed", f"s to {a.threshold:g}", "env steps", "final eval", "holds",
                 "learner upd/s", "learner waiting"], rows)
    ratio = solve_times["qrl"] / solve_times["sb3"] if solve_times["sb3"] not in (0, float("inf")) else None
    print(f"\nmedian time to solve: qrl {solve_times['qrl']:.1f} s, sb3 {solve_times['sb3']:.1f} s"
          + (f", ratio qrl/sb3 {ratio:.2f}" if ratio is not None else ""))
    save_results("solve", {"quick": a.quick, "env": a.env, "threshold": a.threshold, "steps": a.steps,
                           "table": rows, "median_solve_s": solve_times, "ratio": ratio, "runs": runs,
                           "sb3_hyperparameters": {k: str(v) for k, v in ZOO_DQN_CARTPOLE.items()}})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--sb3-worker":
        env_id, seed, steps, out, launched = sys.argv[2:7]
        sb3_worker(env_id, int(seed), int(steps), Path(out), float(launched))
    else:
        main()
