"""RND: its running statistics, the non-episodic intrinsic return, novelty that fades where the agent
has been, and a learner whose two value heads and predictor train and checkpoint together."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from qrl.algorithm import to_batch
from qrl.algorithms import ppo, rnd

OBS = gym.spaces.Box(-1, 1, (3,), np.float32)


def unrolls(n=4, t=8, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, t, 3)).astype(np.float32)
    return {"obs": obs, "action": rng.integers(0, 2, (n, t)), "logp": np.full((n, t), np.log(0.5), np.float32),
            "reward": np.zeros((n, t), np.float32), "terminated": np.zeros((n, t), bool),
            "truncated": np.zeros((n, t), bool), "next_obs": np.roll(obs, -1, axis=1)}


def test_running_moments_merge_batches_like_the_whole():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (300, 2)).astype(np.float32)
    moments = rnd.RunningMoments((2,))
    for part in np.split(x, [10, 110]):
        moments.update(torch.as_tensor(part))
    np.testing.assert_allclose(moments.mean.numpy(), x.mean(0), rtol=1e-4)
    np.testing.assert_allclose(moments.var.numpy(), x.var(0), rtol=1e-3)


def test_the_intrinsic_return_flows_across_an_episode_end():
    """One env, two steps, reward 1 each, values 0, gamma 0.5, lambda 1, the episode terminating
    at step 0: episodic, the advantage at step 0 is its own reward; non-episodic, 1 + 0.5 * 1."""
    t = {"terminated": torch.tensor([[True, False]]), "truncated": torch.tensor([[False, False]])}
    rewards, zeros = torch.ones(1, 2), torch.zeros(1, 2)
    episodic, _ = ppo.step_advantages(t, rewards, zeros, zeros, 0.5, 1.0)
    flowing, _ = ppo.step_advantages(t, rewards, zeros, zeros, 0.5, 1.0, episodic=False)
    assert episodic.tolist() == [1.0, 1.0] and flowing.tolist() == [1.5, 1.0]


def test_novelty_fades_where_the_predictor_has_trained_and_stays_elsewhere():
    torch.manual_seed(0)
    distillation = rnd.Distillation((3,), rnd.Args())
    seen, unseen = torch.full((64, 3), 0.5), torch.full((64, 3), -0.5)
    optimizer = torch.optim.Adam(distillation.predictor.parameters(), lr=1e-3)
    before = distillation.novelty(seen).mean().item()
    for _ in range(300):
        optimizer.zero_grad()
        distillation.novelty(seen).mean().backward()
        optimizer.step()
    with torch.no_grad():
        assert distillation.novelty(seen).mean().item() < 0.05 * before
        assert distillation.novelty(unseen).mean().item() > 10 * distillation.novelty(seen).mean().item()


def test_intrinsic_rewards_are_scaled_by_the_deviation_of_their_discounted_sums():
    torch.manual_seed(0)
    distillation = rnd.Distillation((3,), rnd.Args())
    next_obs = torch.as_tensor(unrolls()["next_obs"])
    rewards, normalized = distillation.intrinsic_rewards(next_obs, gamma=0.99)
    with torch.no_grad():  # the raw novelty under the statistics the call left behind
        raw = distillation.novelty(distillation.normalize(next_obs.reshape(-1, 3))).reshape(4, 8)
    scale = torch.sqrt(distillation.return_moments.var + 1e-8)
    torch.testing.assert_close(rewards, raw / scale)
    torch.testing.assert_close(normalized, distillation.normalize(next_obs.reshape(-1, 3)))
    assert distillation.obs_moments.count.item() == pytest.approx(32, abs=1e-3)
    assert distillation.return_moments.count.item() == pytest.approx(32, abs=1e-3)


def test_an_rnd_update_trains_both_value_heads_and_the_predictor_and_checkpoints_them():
    torch.manual_seed(0)
    args = rnd.Args(epochs=4, minibatches=2, rnd_update_proportion=1.0, lr=3e-3)
    learner = rnd.Learner(OBS, gym.spaces.Discrete(2), args, torch.device("cpu"))
    assert learner.net.values(torch.zeros(5, 3)).shape == (5, 2)
    batch = to_batch(unrolls())
    first = learner.update(batch).metrics
    for _ in range(10):
        last = learner.update(batch).metrics
    assert last["predictor_loss"] < 0.5 * first["predictor_loss"] and first["intrinsic_reward"] > 0
    fresh = rnd.Learner(OBS, gym.spaces.Discrete(2), args, torch.device("cpu"))
    fresh.load_state_dict(learner.state_dict())
    obs = torch.randn(16, 3)
    novelty = lambda lrn: lrn.distillation.novelty(lrn.distillation.normalize(obs))
    torch.testing.assert_close(novelty(fresh), novelty(learner))  # the random target too, and the statistics
    torch.testing.assert_close(fresh.net.values(obs), learner.net.values(obs))


def test_rnd_refuses_the_lstm_variant_with_a_clear_error():
    with pytest.raises(ValueError, match="rnd: the LSTM variant"):
        rnd.make_policy(OBS, gym.spaces.Discrete(2), rnd.Args(lstm=8))
