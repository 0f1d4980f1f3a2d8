"""Adversarial imitation side by side: qrl's GAIL and AIRL (configs/{gail,airl}-ENV.yaml) against the
`imitation` library's (on stable-baselines3's PPO with the same PPO settings and network size), on
the same 10 expert episodes (configs/demos), seeds interleaved in one sitting. Measured: env steps and
seconds from launch (start-up included) to the first 10-episode deterministic evaluation at 90% of
the expert's normalized return (scripts/learn.py's target).

imitation pins older gymnasium and stable-baselines3 than qrl, so it runs in a venv of its own:

    python -m venv /tmp/imenv && /tmp/imenv/bin/pip install torch==2.13.0 imitation==1.0.1
    python scripts/bench_imitation.py --imitation-python /tmp/imenv/bin/python --task gail-CartPole-v1 --seeds 3

The imitation side evaluates every --eval-every steps (qrl's presets every 10,000 on CartPole and
8,192 on Pendulum): frames to target are read at that granularity on both sides.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from _common import parser, print_table, save_results  # noqa: E402
from learn import TARGETS  # noqa: E402

# task -> (dataset, imitation's PPO settings as in the qrl preset, its discriminator settings, eval every)
CARTPOLE_PPO = {"n_envs": 8, "n_steps": 32, "batch_size": 256, "n_epochs": 20, "learning_rate": 1e-3,
                "gamma": 0.98, "gae_lambda": 0.8, "clip_range": 0.2, "ent_coef": 0.0,
                "policy_kwargs": {"net_arch": [64, 64]}}
PENDULUM_PPO = {"n_envs": 4, "n_steps": 1024, "batch_size": 64, "n_epochs": 10, "learning_rate": 1e-3,
                "gamma": 0.9, "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.0, "use_sde": True,
                "sde_sample_freq": 4, "policy_kwargs": {"net_arch": [64, 64]}}
TASKS = {
    "gail-CartPole-v1": ("cartpole/qrl-ppo-v0", CARTPOLE_PPO, {"demo_batch_size": 256, "n_disc_updates_per_round": 4},
                         10_240),
    "airl-CartPole-v1": ("cartpole/qrl-ppo-v0", CARTPOLE_PPO, {"demo_batch_size": 256, "n_disc_updates_per_round": 4},
                         10_240),
    # (qrl's preset: 8 discriminator steps per 4096 agent transitions, each beside as many expert ones)
    "gail-Pendulum-v1": ("pendulum/qrl-sac-v0", PENDULUM_PPO, {"demo_batch_size": 512, "n_disc_updates_per_round": 8},
                         8_192),
}


def qrl_seed(task: str, seed: int, target: float, budget: int, tmp: Path) -> dict:
    algo, env = task.split("-", 1)
    run_dir = tmp / f"qrl-{seed}"
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "qrl", "run", "--config", f"configs/{task}.yaml", "--seed", str(seed),
                          "--total-steps", str(budget), "--target-return", str(target), "--run-dir", str(run_dir),
                          "--no-progress"], capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if out.returncode != 0:
        return {"side": "qrl", "seed": seed, "error": out.stderr.strip().splitlines()[-1:]}
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    return solved("qrl", seed, evals, target, t0, time.time() - t0)


def imitation_seed(task: str, seed: int, target: float, budget: int, python: str, tmp: Path) -> dict:
    algo, env = task.split("-", 1)
    dataset, ppo, disc, every = TASKS[task]
    npz = tmp / f"{dataset.replace('/', '-')}.npz"
    if not npz.exists():
        from qrl import demos

        d = demos.load(ROOT / "configs" / "demos" / dataset)
        import numpy as np
        np.savez(npz, obs=d.obs, acts=d.action, next_obs=d.next_obs, dones=d.terminated | d.truncated)
    t0 = time.time()
    out = subprocess.run([python, str(ROOT / "scripts" / "_imitation_side.py"), "--algo", algo, "--env", env,
                          "--demos", str(npz), "--seed", str(seed), "--target", str(target), "--budget", str(budget),
                          "--eval-every", str(every), "--ppo", json.dumps(ppo), "--disc", json.dumps(disc)],
                         capture_output=True, text=True, timeout=3600, cwd=tmp)
    if out.returncode != 0:
        return {"side": "imitation", "seed": seed, "error": out.stderr.strip().splitlines()[-1:]}
    evals = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return solved("imitation", seed, evals, target, t0, time.time() - t0)


def solved(side: str, seed: int, evals: list[dict], target: float, t0: float, wall: float) -> dict:
    hit = next((e for e in evals if e["mean_return"] >= target), None)
    return {"side": side, "seed": seed, "reached": hit is not None, "frames": hit["frames"] if hit else None,
            "seconds": round(hit["time"] - t0, 1) if hit else None, "wall_s": round(wall, 1),
            "best": max((e["mean_return"] for e in evals), default=None)}


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--imitation-python", required=True, help="the Python of a venv with imitation installed")
    a = p.parse_args()
    algo, env = a.task.split("-", 1)
    target, budget = TARGETS[(algo, env)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):  # interleaved: the machine's load falls on both sides alike
            for r in (qrl_seed(a.task, seed, target, budget, Path(tmp)),
                      imitation_seed(a.task, seed, target, budget, a.imitation_python, Path(tmp))):
                results.append(r)
                print(json.dumps(r), flush=True)
                if "error" in r:  # a side that could not run is no result for either
                    print(f"{r['side']} failed: {r['error']}", file=sys.stderr)
                    return 1
    rows, medians = [], {}
    for side in ("qrl", "imitation"):
        mine = [r for r in results if r["side"] == side]
        hit = [r for r in mine if r.get("reached")]
        med = lambda k: statistics.median(r[k] for r in hit) if len(hit) == len(mine) else None
        medians[side] = {"frames": med("frames"), "seconds": med("seconds")}
        rows.append([side, f"{len(hit)} of {len(mine)}", medians[side]["frames"], medians[side]["seconds"]])
    table = print_table(["side", "reached", "median frames", "median seconds"], rows)
    ratio = None
    if medians["qrl"]["seconds"] and medians["imitation"]["seconds"]:
        ratio = medians["qrl"]["seconds"] / medians["imitation"]["seconds"]
        print(f"qrl / imitation, median seconds to {target}: {ratio:.2f}")
    save_results(f"imitation-{a.task}", {"task": a.task, "target": target, "budget": budget, "results": results,
                                         "medians": medians, "seconds_ratio": ratio, **table,
                                         "quick": a.seeds < 3})
    return 0


if __name__ == "__main__":
    sys.exit(main())
