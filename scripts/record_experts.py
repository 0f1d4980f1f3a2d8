"""The expert demonstrations the imitation presets learn from (configs/bc-*.yaml, the dqn demos
contrast): train one of qrl's own presets until its deterministic evaluation reaches the expert
return, then record its first 10 deterministic episodes as a Minari dataset under configs/demos/.

    python scripts/record_experts.py [--env CartPole-v1] [--episodes 10]

The datasets are small (a few hundred KiB) and committed, so `make learn` needs no expert run;
this script is how they were made and how to make them again.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMOS = ROOT / "configs" / "demos"

# env -> (preset, expert return its evaluation must reach, frame budget, dataset id)
EXPERTS = {
    "CartPole-v1": ("configs/ppo-CartPole-v1.yaml", 500.0, 200_000, "cartpole/qrl-ppo-v0"),
    "LunarLander-v3": ("configs/ppg-LunarLander-v3.yaml", 250.0, 3_000_000, "lunarlander/qrl-ppg-v0"),
    "Pendulum-v1": ("configs/sac-Pendulum-v1.yaml", -160.0, 40_000, "pendulum/qrl-sac-v0"),
}


def qrl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "qrl", *args], cwd=ROOT, check=True)


def record_expert(env: str, episodes: int, seed: int, stochastic: bool = False) -> None:
    preset, expert_return, budget, dataset_id = EXPERTS[env]
    if stochastic:  # (cartpole/qrl-ppo-v0 -> cartpole/qrl-ppo-stochastic-v0)
        dataset_id = dataset_id.replace("-v0", "-stochastic-v0")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "expert"
        qrl("run", "--config", preset, "--run-dir", str(run_dir), "--set", f"run.target_return={expert_return}",
            "--set", f"run.total_steps={budget}", "--set", f"run.seed={seed}", "--set", "run.eval_episodes=20")
        qrl("record", str(run_dir), "--dataset-id", dataset_id, "--episodes", str(episodes), "--data-dir", str(DEMOS),
            *(["--stochastic"] if stochastic else []))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=sorted(EXPERTS), action="append", help="default: every one")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stochastic", action="store_true",
                   help="record the expert's sampled actions instead of its greedy ones (the dataset id gets "
                        "-stochastic): a maximum-entropy expert, as AIRL's model assumes")
    a = p.parse_args()
    for env in a.env or sorted(EXPERTS):
        record_expert(env, a.episodes, a.seed, a.stochastic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
