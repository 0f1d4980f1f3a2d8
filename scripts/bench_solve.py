"""Time to solve, the headline: qrl's preset against stable-baselines3 with rl-baselines3-zoo's tuned
hyperparameters, same machine, same run, seeds interleaved.

For each run: wall-clock seconds from launching the process (start-up included) until a
20-episode deterministic evaluation first reaches the threshold, the env steps used by
then, and the evaluation at the end of the step budget (does the solve hold?). Both sides
evaluate every few seconds of wall time (2 s on CartPole, 10 s on LunarLander) on a 20-env vector
env, so evaluation costs them alike. Also the learner's updates/s and the fraction of its wall
time spent waiting for data.

    python scripts/bench_solve.py                           # DQN CartPole-v1, 3 seeds each, ~8 minutes
    python scripts/bench_solve.py --task c51-CartPole-v1    # qrl's c51 preset against SB3's DQN, ~10 minutes
    python scripts/bench_solve.py --task ppo-CartPole-v1    # PPO CartPole-v1, ~3 minutes
    python scripts/bench_solve.py --task ppo-LunarLander-v3 --stop-at-solve   # ~15 minutes
    python scripts/bench_solve.py --quick                   # one short run each: proves it still works
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parser, print_table, rate, save_results

ROOT = Path(__file__).resolve().parents[1]

# rl-baselines3-zoo's hyperparameters (hyperparams/dqn.yml, ppo.yml); "lin_X": linear schedule from X to 0.
ZOO_DQN_CARTPOLE = dict(
    learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
    exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))
# A task runs the preset configs/<task>.yaml; c51 (DQN with a categorical return head) is held
# against the same SB3 DQN, which has no distributional variant.
TASKS = {
    "dqn-CartPole-v1": dict(sb3="DQN", threshold=475.0, steps=100_000, eval_every_s=2.0, target=0.5,
                            zoo=ZOO_DQN_CARTPOLE),
    "c51-CartPole-v1": dict(sb3="DQN", threshold=475.0, steps=100_000, eval_every_s=2.0, target=0.5,
                            zoo=ZOO_DQN_CARTPOLE),
    "ppo-CartPole-v1": dict(sb3="PPO", threshold=475.0, steps=100_000, eval_every_s=2.0, target=1.0, zoo=dict(
        n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
        learning_rate="lin_1e-3", clip_range="lin_0.2")),
    "ppo-LunarLander-v3": dict(sb3="PPO", threshold=200.0, steps=1_000_000, eval_every_s=10.0, target=0.5, zoo=dict(
        n_envs=16, n_steps=1024, batch_size=64, gae_lambda=0.98, gamma=0.999, n_epochs=4, ent_coef=0.01)),
}
EVAL_EPISODES = 20


def _schedules(hyper: dict) -> dict:
    out = {}
    for k, v in hyper.items():
        if isinstance(v, str) and v.startswith("lin_"):
            start = float(v[4:])
            out[k] = lambda progress, start=start: progress * start  # SB3's progress goes from 1 to 0
        else:
            out[k] = v
    return out


def sb3_worker(task: str, seed: int, steps: int, out: Path, launched: float, stop_at_solve: bool) -> None:
    """Runs in its own process: SB3 with a time-based 20-episode deterministic evaluation."""
    import stable_baselines3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    t = TASKS[task]
    env_id = task.split("-", 1)[1]
    hyper = _schedules(t["zoo"])
    n_envs = hyper.pop("n_envs", 1)
    # render_mode=None: make_vec_env would otherwise create rgb_array envs (slower; see MEASURED.md).
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=dict(render_mode=None))
    eval_env = make_vec_env(env_id, n_envs=EVAL_EPISODES, seed=seed + 7, env_kwargs=dict(render_mode=None))
    curve = []

    class TimedEval(BaseCallback):
        last = 0.0

        def _on_step(self) -> bool:
            if time.time() - self.last >= t["eval_every_s"]:
                mean, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
                self.last = time.time()
                curve.append({"time": self.last - launched, "frames": self.num_timesteps, "mean_return": float(mean)})
                if stop_at_solve and mean >= t["threshold"]:
                    return False
            return True

    model = getattr(stable_baselines3, t["sb3"])("MlpPolicy", env, seed=seed, verbose=0, **hyper)
    model.learn(total_timesteps=steps, callback=TimedEval())
    if not (stop_at_solve and curve and curve[-1]["mean_return"] >= t["threshold"]):
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
        curve.append({"time": time.time() - launched, "frames": model.num_timesteps, "mean_return": float(mean),
                      "final": True})
    out.write_text(json.dumps({"curve": curve}))


def run_sb3(task: str, seed: int, steps: int, tmp: Path, stop_at_solve: bool) -> dict:
    out = tmp / f"sb3-{seed}.json"
    launched = time.time()
    subprocess.run([sys.executable, __file__, "--sb3-worker", task, str(seed), str(steps), str(out), str(launched),
                    str(int(stop_at_solve))], check=True, timeout=3600)
    return {"curve": json.loads(out.read_text())["curve"], "wall_s": time.time() - launched}


def run_qrl(task: str, seed: int, steps: int, actors: int | None, tmp: Path, stop_at_solve: bool) -> dict:
    t = TASKS[task]
    run_dir = tmp / f"qrl-{seed}"
    launched = time.time()
    subprocess.run([sys.executable, "-m", "qrl", "run", "--config", str(ROOT / "configs" / f"{task}.yaml"),
                    *(["--actors", str(actors)] if actors else []),
                    "--seed", str(seed), "--total-steps", str(steps),
                    "--target-return", str(t["threshold"]) if stop_at_solve else "1e9", "--run-dir",
                    str(run_dir), "--no-progress", "--set", f"run.eval_every_s={t['eval_every_s']}",
                    "--set", "run.eval_every_frames=0",
                    "--set", f"run.eval_episodes={EVAL_EPISODES}"],
                   check=True, timeout=3600, stdout=subprocess.DEVNULL)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [{"time": m["time"] - launched, "frames": m["frames"], "mean_return": m["mean_return"],
              **({"final": True} if m.get("final") else {})} for m in metrics if m["kind"] == "eval"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"curve": curve, "wall_s": time.time() - launched,
            "updates_per_s": summary["updates"] / summary["elapsed_s"], "wait_fraction": summary["wait_fraction"]}


def solve_point(curve: list[dict], threshold: float) -> dict | None:
    return next((c for c in curve if c["mean_return"] >= threshold), None)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--task", default="dqn-CartPole-v1", choices=sorted(TASKS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, help="env step budget of each run, both systems (default: the task's)")
    p.add_argument("--actors", type=int, help="qrl actor processes (default: the preset's)")
    p.add_argument("--stop-at-solve", action="store_true", help="stop each run at the threshold (no hold check)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    t = TASKS[a.task]
    steps = a.steps or t["steps"]
    if a.quick:
        a.seeds, steps = 1, 5_000
    runs: dict[str, list[dict]] = {"qrl": [], "sb3": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):  # interleaved: qrl, sb3, qrl, sb3, ...
            runs["qrl"].append(run_qrl(a.task, seed, steps, a.actors, Path(tmp), a.stop_at_solve))
            runs["sb3"].append(run_sb3(a.task, seed, steps, Path(tmp), a.stop_at_solve))
            for system in runs:
                r = runs[system][-1]
                hit = solve_point(r["curve"], t["threshold"])
                when = "-" if hit is None else f"{hit['time']:.1f} s"
                print(f"{a.task} seed {seed} {system}: solved at {when}"
                      f", final {r['curve'][-1]['mean_return']:.1f}, run {r['wall_s']:.1f} s", flush=True)
    rows, solve_times, holds = [], {}, {}
    for system, rs in runs.items():
        times = []
        holds[system] = 0
        for seed, r in enumerate(rs):
            hit = solve_point(r["curve"], t["threshold"])
            final = r["curve"][-1]["mean_return"]
            times.append(hit["time"] if hit else float("inf"))
            held = not a.stop_at_solve and final >= t["threshold"]
            holds[system] += held
            rows.append([system, seed, "-" if hit is None else f"{hit['time']:.1f}",
                         "-" if hit is None else f"{hit['frames']:,}", f"{final:.1f}",
                         "-" if a.stop_at_solve else "yes" if held else "no",
                         rate(r["updates_per_s"]) if "updates_per_s" in r else "",
                         f"{100 * r['wait_fraction']:.1f}%" if "wait_fraction" in r else ""])
        solve_times[system] = statistics.median(times)
    header = ["system", "seed", f"s to {t['threshold']:g}", "env steps", "final eval", "holds",
              "learner upd/s", "learner waiting"]
    print()
    table = print_table(header, rows)
    ratio = solve_times["qrl"] / solve_times["sb3"] if solve_times["sb3"] not in (0, float("inf")) else None
    print(f"\nmedian time to solve: qrl {solve_times['qrl']:.1f} s, sb3 {solve_times['sb3']:.1f} s"
          + (f", ratio qrl/sb3 {ratio:.2f} (target <= {t['target']})" if ratio is not None else ""))
    save_results(f"solve-{a.task}", {
        "quick": a.quick, "task": a.task, "env": a.task.split("-", 1)[1], "threshold": t["threshold"],
        "steps": steps, "stop_at_solve": a.stop_at_solve, **table,
        "median_solve_s": solve_times, "ratio": ratio, "target_ratio": t["target"], "holds": holds,
        "seeds": a.seeds, "runs": runs, "sb3_hyperparameters": {k: str(v) for k, v in t["zoo"].items()}})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--sb3-worker":
        task, seed, steps, out, launched, stop = sys.argv[2:8]
        sb3_worker(task, int(seed), int(steps), Path(out), float(launched), stop == "1")
    else:
        main()
