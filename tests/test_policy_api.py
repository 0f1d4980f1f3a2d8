"""A trained policy outside qrl's processes: qrl.load(RUN_DIR).predict, as stable-baselines3's
predict, and `qrl export --onnx`, checked against ONNX Runtime."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import qrl
from tests.test_cli import one_line_error

SHORT = {"run.eval_episodes": 2, "run.eval_every_frames": 0}


def trained(tmp_path, algo, env, steps=1024, **config):
    """A short in-process run (the weights need not be good, only trained and saved)."""
    result = qrl.train(algo, env, actors=1, steps=steps, target_return=1e9, local=True, run_dir=tmp_path / algo,
                       config={**SHORT, **config})
    return result.run_dir


@pytest.mark.parametrize("algo, env, config", [
    ("ppo", "CartPole-v1", {}),
    ("rppo", "qrl/CartPoleNoVel-v1", {"algo.lstm": 16}),
    ("r2d2", "qrl/CartPoleNoVel-v1", {"algo.learning_starts": 8, "algo.lstm": 16}),
])
def test_predict_acts_as_the_evaluation_does_recurrent_state_included(tmp_path, algo, env, config):
    """Episodes stepped one observation at a time with predict (state carried, SB3 style) have
    exactly the returns of qrl.evaluate on the same seeds."""
    run_dir = trained(tmp_path, algo, env, steps=1536, **config)
    policy = qrl.load(run_dir)
    returns = []
    for episode in range(3):
        e = gym.make(env)
        obs, _ = e.reset(seed=episode)
        state, start, total, done = None, True, 0.0, False
        while not done:
            action, state = policy.predict(obs, state, episode_start=np.array([start]))
            obs, reward, terminated, truncated, _ = e.step(action)
            total, start, done = total + reward, False, terminated or truncated
        returns.append(total)
    assert returns == qrl.evaluate(run_dir, episodes=3, seed=0)["returns"]
    if policy.loaded.agent.make_core(policy.loaded.args, 0, 1, 1, 0).initial_state(1):  # recurrent
        obs = np.stack([policy.observation_space.sample() for _ in range(4)])
        _, after_one = policy.predict(obs)
        fresh, _ = policy.predict(obs, None)
        again, _ = policy.predict(obs, after_one, episode_start=np.ones(4, bool))  # a start resets the state
        np.testing.assert_array_equal(fresh, again)


ONNX_CASES = [
    ("dqn", "CartPole-v1", {"algo.learning_starts": 256}),
    ("c51", "CartPole-v1", {"algo.learning_starts": 256}),
    ("iqn", "CartPole-v1", {"algo.learning_starts": 256}),
    ("ppo", "CartPole-v1", {}),
    ("ppo", "Pendulum-v1", {"run.normalize_obs": True}),
    ("td3", "Pendulum-v1", {"algo.learning_starts": 256}),
    ("sac", "Pendulum-v1", {}),
    # a Dict observation with an image part (a convolutional torso for it, the vector beside it)
    ("ppo", "tests.structured_envs:GoalCorridor", {"run.env_kwargs": {"image": True}, "algo.torso": "minatar"}),
]


@pytest.mark.parametrize("algo, env, config", ONNX_CASES, ids=[f"{a}-{e.rpartition(':')[2]}" for a, e, _ in ONNX_CASES])
def test_onnx_runtime_gives_the_actions_qrl_gives(tmp_path, algo, env, config):
    import onnxruntime

    run_dir = trained(tmp_path, algo, env, **config)
    onnx_file = tmp_path / "policy.onnx"
    out = subprocess.run([sys.executable, "-m", "qrl", "export", str(run_dir), "--onnx", str(onnx_file)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    policy = qrl.load(run_dir)
    space = policy.observation_space
    space.seed(0)
    obs = np.stack([space.sample() for _ in range(1000)])
    expected, _ = policy.predict(obs)
    got = onnxruntime.InferenceSession(str(onnx_file)).run(None, {"obs": obs})[0]
    assert got.shape == expected.shape
    if isinstance(policy.action_space, gym.spaces.Discrete):
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert np.ptp(expected) > 0  # the actions vary with the observation: not a constant


def test_a_recurrent_policy_is_not_exported_and_the_error_is_one_line(tmp_path):
    run_dir = trained(tmp_path, "rppo", "qrl/CartPoleNoVel-v1", steps=1024, **{"algo.lstm": 8})
    out = subprocess.run([sys.executable, "-m", "qrl", "export", str(run_dir), "--onnx", str(tmp_path / "x.onnx")],
                         capture_output=True, text=True, timeout=120)
    one_line_error(out, "cannot be exported to ONNX", "feed-forward")


def test_predict_refuses_observations_of_another_shape(tmp_path):
    policy = qrl.load(trained(tmp_path, "ppo", "CartPole-v1", steps=512))
    with pytest.raises(ValueError, match="do not fit the policy's observation space"):
        policy.predict(np.zeros(5, np.float32))
    action, state = policy.predict(np.zeros(4, np.float32))
    assert np.ndim(action) == 0 and state == {}
