"""Dict and Tuple observations, for every algorithm: flattened into one vector at the env
(qrl/envs/wrappers.py FlattenStructured), as stable-baselines3's MultiInputPolicy does with
vector parts; what cannot be done is one line."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import qrl
from tests.test_algorithms import SMOKE
from tests.test_cli import one_line_error
from tests.test_local import local_run

ENV = "tests.structured_envs:GoalCorridor"
CONTINUOUS = ["run.env_kwargs={continuous: true}"]
CASES = [(algo, sets + (CONTINUOUS if env == "Pendulum-v1" else []))
         for algo, env, sets in SMOKE if algo not in ("ql", "alphazero") and "algo.munchausen=true" not in sets
         and not (algo == "sac" and env == "CartPole-v1") and not (algo == "impala" and "algo.lstm=16" in sets)
         and not any(s.startswith("run.demos=") for s in sets)]  # (datasets of CartPole's and Pendulum's spaces)
IDS = [algo + ("-continuous" if CONTINUOUS[0] in sets else "") for algo, sets in CASES]


@pytest.mark.parametrize("algo, sets", CASES, ids=IDS)
def test_every_algorithm_trains_on_dict_observations_and_predicts_from_them(algo, sets, tmp_path):
    run = local_run(algo, ENV, sets, tmp_path)
    summary = run.run()
    assert summary["updates"] > 0 and np.isfinite(summary["final_eval_mean"])
    policy = qrl.load(tmp_path)
    action, _ = policy.predict({"position": np.array([1.0], np.float32), "goal": 4})
    assert policy.action_space.contains(np.asarray(action, policy.action_space.dtype))
    actions, _ = policy.predict([{"position": np.array([p], np.float32), "goal": 0} for p in (0.0, 3.0)])
    assert len(actions) == 2


def test_tuple_observations_train_too(tmp_path):
    run = local_run("ppo", ENV, ["run.env_kwargs={as_tuple: true}"], tmp_path)
    assert run.run()["updates"] > 0
    assert qrl.load(tmp_path).predict((np.array([1.0], np.float32), 4))[0] in (0, 1)


def qrl_cli(*args):
    return subprocess.run([sys.executable, "-m", "qrl", *args], capture_output=True, text=True, timeout=120)


IMAGE_CASES = [(algo, sets) for algo, sets in CASES if algo in ("dqn", "ppo", "r2d2", "sac", "td3")]


@pytest.mark.parametrize("algo, sets", IMAGE_CASES, ids=[algo for algo, _ in IMAGE_CASES])
def test_images_and_vectors_mixed_get_a_convolutional_torso_for_the_image(algo, sets, tmp_path):
    from qrl import networks

    env_kwargs = "{image: true, continuous: true}" if CONTINUOUS[0] in sets else "{image: true}"
    run = local_run(algo, ENV, [s for s in sets if not s.startswith("run.env_kwargs")]
                    + [f"run.env_kwargs={env_kwargs}", "algo.torso=minatar"], tmp_path)
    torso = next(m for m in run.learner.net.modules() if isinstance(m, networks.PartsTorso))
    assert any(isinstance(m, torch.nn.Conv2d) for m in run.learner.net.modules())
    # The parts' slices tile the whole vector: the goal's 5 one-hot entries included, not just its first.
    bounds = [(start, end) for start, end, _, _ in torso.slices]
    assert bounds[0][0] == 0 and bounds[-1][1] == run.obs_space.shape[0] == 1 + 5 + 8 * 8 * 3
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert run.run()["updates"] > 0
    view = np.zeros((8, 8, 3), np.uint8)
    action, _ = qrl.load(tmp_path).predict({"position": np.array([1.0], np.float32), "goal": 4, "view": view})
    assert qrl.load(tmp_path).action_space.contains(np.asarray(action, qrl.load(tmp_path).action_space.dtype))


def test_an_algorithm_that_cannot_take_them_is_one_line(tmp_path):
    one_line_error(qrl_cli("run", "--local", "--algo", "ql", "--env", ENV, "--run-dir", str(tmp_path / "b")),
                   "ql needs discrete observations")
