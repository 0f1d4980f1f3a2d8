"""The in-process runner (qrl/local.py) and, through it, every registered algorithm in one process:
act -> items -> table -> update -> weights -> checkpoint -> loaded policy, in a few seconds each
(the multi-process smoke runs of the same cases are in test_algorithms.py, marked slow)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qrl import algorithm
from qrl.config import RunConfig, build, parse_overrides
from qrl.evaluation import load_policy, run_episodes
from qrl.learner import LearnerOptions
from qrl.local import LocalRun
from test_algorithms import ATTENTION_SMOKE, PIXEL_SMOKE, SMOKE

ROOT = Path(__file__).resolve().parent.parent


def local_run(algo: str, env: str, sets: list[str], run_dir, total_steps: int = 1024, actors: int = 2,
              resume: bool = False) -> LocalRun:
    agent = algorithm.load(algo)
    sets = ["run.num_envs=4", "run.segment_length=32", "run.eval_episodes=1", "run.eval_every_frames=0",
            "run.publish_every=5", f"run.total_steps={total_steps}", "run.target_return=1e9", *sets]
    overrides = parse_overrides(sets, {"run": RunConfig, "algo": agent.Args})
    run_cfg = build(RunConfig, {**agent.run_defaults, **overrides["run"]}, "run")
    opts = LearnerOptions(algo=algo, env=env, run_dir=str(run_dir), device="cpu", progress=False, resume=resume)
    return LocalRun(opts, run_cfg, overrides["algo"], actors)


NETWORK_OPTIONS = [  # spectral normalisation and network randomisation (qrl/networks.py) train end to end
    ("dqn", "CartPole-v1", ["algo.learning_starts=256", "algo.spectral_norm=true"]),
    ("ppo", "MinAtar/Breakout-v1", ["algo.hidden=32", "algo.spectral_norm=true", "algo.torso=minatar+randconv"]),
    ("sac", "Pendulum-v1", ["algo.learning_starts=256", "algo.hidden=[64, 64]", "algo.batch_size=64",
                            "algo.spectral_norm=true"]),
    ("r2d2", "MinAtar/Breakout-v1", ["algo.burn_in=4", "algo.sequence_length=8", "run.segment_length=8",
                                     "algo.learning_starts=16", "algo.batch_size=8", "algo.lstm=16", "algo.hidden=32",
                                     "algo.spectral_norm=true", "algo.torso=impala+randconv"]),
]
CASES = SMOKE + PIXEL_SMOKE + ATTENTION_SMOKE + NETWORK_OPTIONS
CASE_IDS = [f"{a}-{e}" + ("-" + s[-1].rpartition("=")[2] if "torso" in str(s) else "")
            + ("-attention" if "algo.core=attention" in s else "")
            + ("-spectral" if "algo.spectral_norm=true" in s else "")
            + ("-pixels" if "ResizeObservation" in str(s) else "") for a, e, s in CASES]


@pytest.mark.parametrize("algo, env, sets", CASES, ids=CASE_IDS)
def test_every_algorithm_trains_in_process_and_its_checkpoint_loads(algo, env, sets, tmp_path):
    run = local_run(algo, env, sets, tmp_path)
    summary = run.run()
    assert summary["stop_reason"] == "frame budget of 1024 reached" and summary["frames"] >= 1024
    assert summary["updates"] > 0 and run.learner.updates == summary["updates"]
    # weights every publish_every updates, and the last ones
    assert summary["weights_version"] == 1 + summary["updates"] // run.cfg.publish_every
    agent_batch, demo_batch = run.batch_sizes()  # (with run.demos, part of each batch is demonstrations)
    assert run.table.limiter.inserted > 0 and run.table.limiter.sampled >= agent_batch * summary["updates"]
    if demo_batch:
        assert run.demo_table.limiter.sampled >= demo_batch * summary["updates"]
    # the actors act on the weights the learner published last
    for name, value in run.learner.policy_state().items():
        np.testing.assert_array_equal(run.policy.state_dict()[name].numpy(), value)
    if run.table.prioritized:  # the learner's priorities reached the table
        assert run.sampler.priorities_set > 0
    loaded = load_policy(tmp_path)
    for name, value in run.learner.policy_state().items():
        np.testing.assert_array_equal(loaded.net.state_dict()[name].numpy(), value)
    mean, _, _ = run_episodes(loaded.agent, loaded.args, loaded.net, env, 1, seed=3, env_kwargs=loaded.run.env_kwargs,
                              wrappers=loaded.run.wrappers)
    assert np.isfinite(mean)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if r.get("final")], "no final evaluation record"


def test_a_resumed_local_run_continues_from_its_checkpoint(tmp_path):
    first = local_run("dqn", "CartPole-v1", ["algo.learning_starts=256"], tmp_path)
    first.run()
    # A larger budget: a resume of a run whose budget is spent is refused (tests/test_everyday.py).
    resumed = local_run("dqn", "CartPole-v1", ["algo.learning_starts=256"], tmp_path, total_steps=2048, resume=True)
    for name, value in first.learner.policy_state().items():
        np.testing.assert_array_equal(resumed.learner.policy_state()[name], value)
    assert resumed.learner.updates == first.learner.updates and resumed.run_id == first.run_id
    assert resumed.frames_before == 1024 and resumed.weights_version == first.weights_version + 1


def test_qrl_run_local_trains_ppo_on_cartpole_to_the_threshold(tmp_path):
    """The command line: `qrl run --local` with the preset reaches 475 (within the budget) in one process."""
    out = subprocess.run([sys.executable, "-m", "qrl", "run", "--local", "--config", "configs/ppo-CartPole-v1.yaml",
                          "--run-dir", str(tmp_path), "--no-progress", "--total-steps", "100000"],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stop_reason"].startswith("evaluation reached") and summary["final_eval_mean"] >= 475


def test_local_refuses_central_inference():
    out = subprocess.run([sys.executable, "-m", "qrl", "run", "--local", "--inference"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "--local runs everything in one process: not with --inference or --keys" in out.stderr


def test_the_python_api_trains_in_process(tmp_path):
    import qrl

    result = qrl.train("ql", "qrl/Grid-v0", actors=2, steps=3000, local=True, run_dir=tmp_path / "run",
                       target_return=1e9, config={"run.eval_episodes": 2, "run.eval_every_frames": 1000})
    assert result.summary["stop_reason"] == "frame budget of 3000 reached" and result.summary["updates"] > 0
    assert result.checkpoint.exists() and result.run_dir == tmp_path / "run"
    evals = [m for m in result.metrics if m["kind"] == "eval"]
    assert len(evals) >= 3 and evals[-1].get("final")  # every 1000 frames, and the final one


@pytest.mark.parametrize("algo, sets", [
    ("dqn", ["algo.learning_starts=256", "algo.hidden=32"]),  # a replay table: frames, links
    ("r2d2", ["algo.burn_in=4", "algo.sequence_length=8", "run.segment_length=8", "algo.learning_starts=16",
              "algo.batch_size=8", "algo.lstm=16", "algo.hidden=32"]),  # sequences reaching back 2 segments
    ("ppo", ["algo.hidden=32"]),  # a queue: frames, no links
])
def test_frames_once_trains_exactly_as_pixels_do(algo, sets, tmp_path):
    """The same run with frames stored once and with pixels in every item: the learner sees the
    same batches, so it ends with the same weights (the frame path changes bytes, not data)."""
    weights = {}
    for store in ("true", "false"):
        run = local_run(algo, "MinAtar/Breakout-v1", [*sets, f"run.store_frames={store}"], tmp_path / store)
        assert (run.item_schema.frames is not None) == (store == "true")
        run.run()
        weights[store] = run.learner.policy_state()
    for name, value in weights["true"].items():
        np.testing.assert_array_equal(value, weights["false"][name], err_msg=name)
