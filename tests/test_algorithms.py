"""Every registered algorithm runs end to end with real processes on a tiny step budget:
broker, one actor process (running the policy, or env-only behind `qrl inference`), learner;
batches flow, weights are published, a checkpoint is written, and the learner exits 0. A new
algorithm must add its smoke environment here."""

import json
from pathlib import Path

import pytest
import zmq

from qrl import algorithm
from qrl.protocol.transport import Client, free_port_block
from conftest import wait_for

pytestmark = pytest.mark.slow
DEMOS = Path(__file__).resolve().parents[1] / "configs" / "demos"  # expert datasets (scripts/record_experts.py)

SMOKE = [  # (algorithm, environment, extra overrides); continuous-action algorithms on Pendulum
    ("dqn", "CartPole-v1", ["algo.learning_starts=256"]),
    ("apex", "CartPole-v1", ["algo.learning_starts=256"]),
    ("c51", "CartPole-v1", ["algo.learning_starts=256", "algo.v_min=0", "algo.v_max=100"]),
    ("qrdqn", "CartPole-v1", ["algo.learning_starts=256"]),
    # (the quantile learners and SAC update less often, or on smaller batches, than their presets: the
    # slowest smoke runs, 15-60 s each, did the same work several times over)
    ("iqn", "CartPole-v1", ["algo.learning_starts=256", "algo.iqn_n=8", "algo.iqn_n_target=8",
                            "algo.samples_per_insert=6"]),
    ("iqn", "CartPole-v1", ["algo.learning_starts=256", "algo.iqn_n=8", "algo.munchausen=true",  # M-IQN
                            "algo.double=false", "algo.samples_per_insert=6"]),
    ("fqf", "CartPole-v1", ["algo.learning_starts=256", "algo.iqn_n=8", "algo.samples_per_insert=6"]),
    ("mdqn", "CartPole-v1", ["algo.learning_starts=256"]),
    ("rainbow", "CartPole-v1", ["algo.learning_starts=256", "algo.v_min=0", "algo.v_max=100"]),
    ("ql", "qrl/Grid-v0", []),
    ("ppo", "CartPole-v1", []),
    ("ppo", "Pendulum-v1", ["run.sync_actors=true", "run.publish_every=1", "algo.batch_size=4", "algo.use_sde=true"]),
    ("impala", "CartPole-v1", []),
    ("rnd", "MountainCar-v0", []),
    ("ppg", "CartPole-v1", ["algo.policy_iterations=2"]),
    ("daac", "CartPole-v1", ["algo.value_epochs=2"]),
    ("ddpg", "Pendulum-v1", ["algo.learning_starts=256", "algo.random_frames=256", "algo.hidden=[64, 64]"]),
    ("td3", "Pendulum-v1", ["algo.learning_starts=256", "algo.random_frames=256", "algo.hidden=[64, 64]"]),
    ("sac", "Pendulum-v1", ["algo.learning_starts=256", "algo.hidden=[64, 64]", "algo.batch_size=64"]),
    ("sac", "CartPole-v1", ["algo.learning_starts=256", "algo.hidden=[64, 64]",  # the discrete-action variant
                            "algo.batch_size=64"]),
    ("tac", "Pendulum-v1", ["algo.learning_starts=256", "algo.hidden=[64, 64]", "algo.batch_size=64",
                            "algo.entropic_index=2.0"]),
    ("reactor", "CartPole-v1", ["algo.learning_starts=16", "run.segment_length=8", "algo.batch_size=8",
                                "algo.v_min=0", "algo.v_max=100"]),
    ("r2d2", "qrl/CartPoleNoVel-v1", ["algo.burn_in=4", "algo.sequence_length=8", "run.segment_length=8",
                                      "algo.learning_starts=16", "algo.batch_size=8", "algo.lstm=16"]),
    ("rppo", "qrl/CartPoleNoVel-v1", ["algo.lstm=16", "run.segment_length=16"]),  # recurrent PPO
    ("impala", "qrl/CartPoleNoVel-v1", ["algo.lstm=16", "run.segment_length=16"]),  # recurrent IMPALA
    # Learning from demonstrations: the broker's demonstration table beside the agent's (run.demos).
    ("bc", "CartPole-v1", [f"run.demos={DEMOS}/cartpole/qrl-ppo-v0"]),
    ("bc", "Pendulum-v1", [f"run.demos={DEMOS}/pendulum/qrl-sac-v0"]),
    ("gail", "CartPole-v1", [f"run.demos={DEMOS}/cartpole/qrl-ppo-v0", "algo.demo_batch=64"]),
    ("airl", "Pendulum-v1", [f"run.demos={DEMOS}/pendulum/qrl-sac-v0", "run.sync_actors=true",
                             "run.publish_every=1", "algo.batch_size=4", "algo.demo_batch=64"]),
    ("gail-sac", "Pendulum-v1", [f"run.demos={DEMOS}/pendulum/qrl-sac-v0", "algo.learning_starts=256",
                                 "algo.hidden=[64, 64]", "algo.batch_size=64", "algo.demo_batch=64"]),
    ("dqn", "CartPole-v1", ["algo.learning_starts=256", f"run.demos={DEMOS}/cartpole/qrl-ppo-v0"]),  # demo_ratio
    # Search: self-play tic-tac-toe, evaluated against a fixed opponent (run.eval_env_kwargs).
    ("alphazero", "qrl/TicTacToe-v0", ["algo.simulations=4", "algo.channels=8", "algo.blocks=1", "algo.batch_size=32",
                                       "algo.learning_starts=64", "run.eval_env_kwargs={opponent: random}"]),
    ("muzero", "CartPole-v1", ["algo.simulations=4", "algo.hidden=16", "algo.latent=8", "algo.batch_size=32",
                               "algo.learning_starts=64", "algo.td_steps=5", "algo.unroll=3"]),
]
ATTENTION_SMOKE = [  # the attention core (qrl/cores.py) through every recurrent agent's state seam
    ("rppo", "qrl/CartPoleNoVel-v1", ["algo.lstm=16", "algo.core=attention", "run.segment_length=16"]),
    ("r2d2", "qrl/CartPoleNoVel-v1", ["algo.burn_in=4", "algo.sequence_length=8", "run.segment_length=8",
                                      "algo.learning_starts=16", "algo.batch_size=8", "algo.lstm=16",
                                      "algo.core=attention", "algo.attention_memory=4"]),
    ("impala", "qrl/CartPoleNoVel-v1", ["algo.lstm=16", "algo.core=attention", "run.segment_length=16"]),
]


MINATAR = "MinAtar/Breakout-v1"  # 10x10x4 bool images, 3 actions
PENDULUM_PIXELS = [  # Pendulum seen as 24x24x3 pixels: an image environment with continuous actions
    "run.env_kwargs={render_mode: rgb_array}", "algo.batch_size=32",
    "run.wrappers=[{name: AddRenderObservation, render_only: true}, {name: ResizeObservation, shape: [24, 24]}]"]
PIXEL_SMOKE = [  # every algorithm that takes images, on images (its convolutional torso, qrl/networks.py)
    ("dqn", MINATAR, ["algo.learning_starts=256", "algo.hidden=32"]),
    ("dqn", MINATAR, ["algo.learning_starts=256", "algo.hidden=32", "algo.torso=impala"]),
    ("dqn", MINATAR, ["algo.learning_starts=256", "algo.hidden=32", "algo.torso=impala-se"]),
    ("apex", MINATAR, ["algo.learning_starts=256", "algo.hidden=32"]),
    ("c51", MINATAR, ["algo.learning_starts=256", "algo.hidden=32"]),
    ("qrdqn", MINATAR, ["algo.learning_starts=256", "algo.hidden=32"]),
    ("iqn", MINATAR, ["algo.learning_starts=256", "algo.hidden=32", "algo.iqn_n=8", "algo.iqn_n_target=8",
                      "algo.samples_per_insert=6"]),
    ("fqf", MINATAR, ["algo.learning_starts=256", "algo.hidden=32", "algo.iqn_n=8", "algo.samples_per_insert=6"]),
    ("mdqn", MINATAR, ["algo.learning_starts=256", "algo.hidden=32"]),
    ("rainbow", MINATAR, ["algo.learning_starts=256", "algo.hidden=32"]),
    ("ppo", MINATAR, ["algo.hidden=32"]),
    ("ppo", MINATAR, ["algo.hidden=32", "algo.torso=impala"]),
    ("ppo", MINATAR, ["algo.hidden=32", "algo.torso=impala-cbam"]),
    ("impala", MINATAR, ["algo.hidden=32"]),
    ("rnd", MINATAR, ["algo.hidden=32"]),
    ("ppg", MINATAR, ["algo.hidden=32", "algo.policy_iterations=2"]),
    ("daac", MINATAR, ["algo.hidden=32", "algo.value_epochs=2"]),
    ("rppo", MINATAR, ["algo.hidden=32", "algo.lstm=16", "run.segment_length=16"]),
    ("reactor", MINATAR, ["algo.learning_starts=16", "run.segment_length=8", "algo.batch_size=8", "algo.hidden=32"]),
    ("r2d2", MINATAR, ["algo.burn_in=4", "algo.sequence_length=8", "run.segment_length=8", "algo.learning_starts=16",
                       "algo.batch_size=8", "algo.lstm=16", "algo.hidden=32"]),
    ("sac", MINATAR, ["algo.learning_starts=256", "algo.hidden=[32, 32]", "algo.batch_size=32",  # discrete SAC
                      "algo.updates_per_step=0.25"]),
    ("sac", "Pendulum-v1", ["algo.learning_starts=256", "algo.hidden=[32, 32]", *PENDULUM_PIXELS]),
    ("tac", MINATAR, ["algo.learning_starts=256", "algo.hidden=[32, 32]", "algo.batch_size=32",  # discrete TAC
                      "algo.updates_per_step=0.25"]),
    ("ddpg", "Pendulum-v1", ["algo.learning_starts=256", "algo.random_frames=256", "algo.hidden=[32, 32]",
                             *PENDULUM_PIXELS]),
    ("td3", "Pendulum-v1", ["algo.learning_starts=256", "algo.random_frames=256", "algo.hidden=[32, 32]",
                            *PENDULUM_PIXELS]),
]
"""ql alone takes no images: its table has one row per discrete observation."""
VARIANTS = {"rnd": "ppo", "ppg": "ppo", "daac": "ppo", "tac": "sac", "gail": "ppo", "airl": "ppo", "gail-sac": "sac"}
"""Algorithms whose actor side (core, items, table) is another's: only their learners differ."""
PIXEL_PROCESS = [case for case in PIXEL_SMOKE
                 if case[1] == MINATAR and not any(o.startswith("algo.torso=") for o in case[2])
                 and case[0] not in VARIANTS]
alternating = lambda cases: [(*case, ("local", "central")[i % 2]) for i, case in enumerate(cases)]
BOTH_MODES = ("dqn", "ppo", "sac", "r2d2")  # a value-based, an on-policy, a continuous and a recurrent agent
both_modes = lambda case: case[0] in BOTH_MODES and not any(s.startswith("run.demos=") for s in case[2])
PROCESS_SMOKE = ([(*case, mode) for case in SMOKE if both_modes(case) for mode in ("local", "central")]
                 + alternating([case for case in SMOKE if not both_modes(case)]) + alternating(PIXEL_PROCESS)
                 + [(*case, mode) for case, mode in zip(ATTENTION_SMOKE, ("central", "local", "central"))])
"""Run as separate processes: one agent of each kind (BOTH_MODES) in both acting modes, every other
case in one of them, alternating (what central inference does per algorithm, act_batched, is checked
for every SMOKE case in-process by test_inference.py; its process path is the same for all), and
every one that takes images on MinAtar in one of them, alternating (the VARIANTS, the torso variants
and the slow-rendering pixel Pendulum run in-process only, test_local.py, where every image
algorithm also runs)."""


def test_every_algorithm_has_a_smoke_run():
    assert {algo for algo, _, _ in SMOKE} == set(algorithm.names())
    # (bc and the adversarial imitators learn from a dataset of the environment's observations: bc on
    # images in test_demos.py; gail, airl and gail-sac take vector observations only; alphazero plays
    # board games, whose boards are its observations; muzero's representation is an MLP)
    assert {algo for algo, _, _ in PIXEL_SMOKE} == set(algorithm.names()) - {"ql", "bc", "gail", "airl", "gail-sac",
                                                                             "alphazero", "muzero"}


@pytest.mark.parametrize("algo, env, sets, mode", PROCESS_SMOKE,
                         ids=[f"{m}-{a}-{e}" + ("-attention" if "algo.core=attention" in s else "")
                              for a, e, s, m in PROCESS_SMOKE])
def test_smoke(algo, env, sets, mode, procs, tmp_path):
    """local: the actor runs the policy; central: `qrl inference` acts for an env-only actor."""
    _, address = procs.start_broker()
    if mode == "local":
        procs.start("actors", "actor", "--n", "1", "--broker", address)
    else:
        port = free_port_block(1)
        procs.start("inference", "inference", "--broker", address, "--bind", f"tcp://127.0.0.1:{port}")
        procs.start("actors", "actor", "--n", "1", "--inference", f"tcp://127.0.0.1:{port}")
    run_dir = tmp_path / "run"
    args = ["learner", "--algo", algo, "--env", env, "--broker", address, "--run-dir", str(run_dir),
            "--no-progress", "--total-steps", "3000", "--target-return", "1e9", "--set", "run.num_envs=4",
            "--set", "run.eval_episodes=2", "--set", "run.eval_every_frames=1000", "--set", "run.publish_every=5"]
    for s in sets:
        args += ["--set", s]
    learner = procs.start("learner", *args)
    assert learner.wait(120) == 0, learner.log_path.read_text()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "frame budget of 3000 reached" and summary["updates"] > 0
    assert summary["weights_version"] > 1 and (run_dir / "checkpoint.pt").exists()
    ctx = zmq.Context()
    try:
        client = Client(ctx, address, "test")
        stats = wait_for(lambda: client.request("get_stats", wait_s=15).meta, 15, "stats")
        assert stats["batches"] > 0 and stats["gaps"] == 0 and stats["rejected"] == {}
        if algo in ("apex", "r2d2", "rainbow", "reactor"):  # prioritized: the learner sent back priorities by id
            assert stats["priority_updates"] > 0
        if algo in ("ppo", "impala", "rnd", "ppg", "daac", "gail", "airl"):  # the on-policy queue: served once
            assert stats["served_policy_lag"] is not None
        if "run.sync_actors=true" in sets:  # actors wait for each update: nothing goes stale
            assert stats["dropped_stale"] == 0 and stats["served_policy_lag"] <= 1.0
        client.close()
    finally:
        ctx.destroy(linger=0)
