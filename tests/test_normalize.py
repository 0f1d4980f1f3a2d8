"""Observation and reward normalization: running statistics, batches, what actors receive,
and a run that ships the statistics end to end."""

import json

import numpy as np
import pytest

from qrl.normalize import ActorNormalizer, Normalizer, RunningMeanStd


def test_running_statistics_match_numpy_over_all_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 3))
    rms = RunningMeanStd((3,))
    for chunk in np.array_split(data, 7):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(rms.var, data.var(axis=0), rtol=1e-4)


def test_batches_are_normalized_and_statistics_reach_actors():
    n = Normalizer((2,), obs=True, reward=True)
    batch = {"obs": np.array([[0.0, 10.0], [2.0, 30.0]], np.float32),
             "next_obs": np.array([[1.0, 20.0]] * 2, np.float32),
             "return": np.array([2.0, -2.0], np.float32), "_id": np.array([5, 6])}
    out = n.process_batch(batch)
    np.testing.assert_allclose(out["obs"], [[-1, -1], [1, 1]], atol=1e-3)  # mean (1, 20), std (1, 10)
    np.testing.assert_allclose(out["next_obs"], [[0, 0]] * 2, atol=1e-3)
    np.testing.assert_allclose(out["return"], [1.0, -1.0], atol=1e-3)  # divided by std 2
    assert out["_id"] is batch["_id"] and batch["obs"][0, 1] == 10.0  # raw items untouched
    actor = ActorNormalizer()
    weights = actor.split({"w": np.zeros(1), **n.arrays()})
    assert set(weights) == {"w"}
    np.testing.assert_allclose(actor(np.array([[1.0, 20.0]])), [[0.0, 0.0]], atol=1e-3)
    restored = Normalizer((2,), obs=True, reward=True)
    restored.load_state(json.loads(json.dumps(n.state())))  # plain data: fine for weights_only checkpoints
    np.testing.assert_allclose(restored.normalize_obs(batch["obs"]), out["obs"])


@pytest.mark.parametrize("reward", [1.0, -1.0])
def test_a_constant_reward_is_scaled_down_not_blown_up(reward):
    """CartPole's +1 and MountainCar's -1 per step have no one-step deviation: scaling by it divided
    them by ~1e-4. The scale is the root mean square of the unrolls' discounted sums (here they
    ramp from 1 to 1 + 0.99 + ... over 8 steps)."""
    n = Normalizer((2,), obs=False, reward=True)
    rewards = np.full((4, 8), reward, np.float32)
    out = n.process_batch({"reward": rewards})["reward"]
    sums = np.cumsum(0.99 ** np.arange(8))  # the discounted sum after 1..8 steps, for reward 1
    expected = reward / np.sqrt(np.mean(sums ** 2))
    np.testing.assert_allclose(out, np.full((4, 8), expected), rtol=1e-4)
    assert 0.1 < abs(expected) < 1.0


@pytest.mark.slow
def test_a_run_with_normalization_ships_statistics_and_evaluates_with_them(tmp_path):
    import subprocess
    import sys

    import torch

    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "qrl", "run", "--algo", "ppo", "--env", "CartPole-v1", "--actors", "1",
                          "--total-steps", "4000", "--target-return", "1e9", "--run-dir", str(run_dir), "--no-progress",
                          "--set", "run.normalize_obs=true", "--set", "run.normalize_reward=true"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert saved["normalizer"]["obs_count"] > 1000 and len(saved["normalizer"]["obs_mean"]) == 4
    ev = subprocess.run([sys.executable, "-m", "qrl", "evaluate", str(run_dir), "--episodes", "2", "--json"],
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr
