"""PPO pieces: per-environment unroll items, log-probabilities, and one update moving the
policy toward advantaged actions."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from qrl.algorithm import Rollout
from qrl.algorithms import ppo
from qrl.algorithm import to_batch


def test_items_are_one_unroll_per_environment_with_true_next_observations():
    T, B = 3, 2
    obs = np.arange(T * B * 4, dtype=np.float32).reshape(T, B, 4)
    rollout = Rollout(obs=obs, actions=np.ones((T, B), np.int64), rewards=np.ones((T, B), np.float32),
                      terminated=np.zeros((T, B), bool), truncated=np.zeros((T, B), bool), next_obs=obs + 100,
                      extras={"logp": np.full((T, B), -0.5, np.float32)})
    items = ppo.make_items(rollout, ppo.Args())
    assert items["obs"].shape == (B, T, 4) and items["action"].dtype == np.int64
    np.testing.assert_array_equal(items["obs"][1, 2], obs[2, 1])
    np.testing.assert_array_equal(items["next_obs"][0, 0], obs[0, 0] + 100)


def test_continuous_actions_are_clipped_for_the_env_but_stored_raw():
    space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    net = ppo.make_policy(gym.spaces.Box(-1, 1, (3,)), space, ppo.Args(log_std_init=2.0))
    core = ppo.PolicySampling(ppo.Args(), 0, 1, 64, seed=0)
    env_action, _, extras = core.act(net, np.zeros((64, 3), np.float32), {}, np.zeros(64, bool))
    assert np.all(np.abs(env_action) <= 1.0) and np.any(np.abs(extras["raw_action"]) > 1.0)
    dist = net.distribution(torch.zeros(64, 3))
    np.testing.assert_allclose(net.log_prob(dist, torch.as_tensor(extras["raw_action"])).detach().numpy(),
                               extras["logp"], rtol=1e-5)


@pytest.mark.parametrize("space,args", [
    (gym.spaces.Discrete(5), ppo.Args()),
    (gym.spaces.Box(-1.0, 1.0, (2,), np.float32), ppo.Args(log_std_init=-0.5)),
    (gym.spaces.Box(-1.0, 1.0, (2,), np.float32), ppo.Args(use_sde=True)),
], ids=["discrete", "gaussian", "gsde"])
def test_policy_terms_equal_the_distributions_log_prob_and_entropy_and_the_value(space, args):
    torch.manual_seed(0)
    net = ppo.make_policy(gym.spaces.Box(-1, 1, (3,)), space, args)
    with torch.no_grad():  # larger logits than at initialisation, so the rows differ
        net.policy[-1].weight.mul_(50)
    obs = torch.randn(64, 3)
    dist = net.distribution(obs)
    actions = dist.sample()
    logp, entropy, value = net.policy_terms(obs, actions)
    torch.testing.assert_close(logp, net.log_prob(dist, actions))
    torch.testing.assert_close(entropy, net.entropy(dist))
    torch.testing.assert_close(value, net.values(obs))
    assert logp.shape == entropy.shape == (64,) and entropy.std() > 0
    logp.sum().backward()  # and the gradient reaches the policy
    assert net.policy[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("max_grad_norm", [0.5, 0.0])  # 0: no clipping (it used to scale the gradient to 0)
def test_an_update_raises_the_probability_of_advantaged_actions(max_grad_norm):
    obs_space, act_space = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2)
    args = ppo.Args(epochs=4, minibatches=1, lr=1e-2, normalize_advantages=False, gamma=0.0,
                    max_grad_norm=max_grad_norm)
    learner = ppo.Learner(obs_space, act_space, args, torch.device("cpu"))
    N, T = 4, 8
    obs = np.zeros((N, T, 2), np.float32)
    actions = np.tile([0, 1], (N, T // 2))
    with torch.no_grad():
        p0 = learner.net.distribution(torch.zeros(1, 2)).probs[0, 1].item()
        logp = np.log(np.where(actions == 1, p0, 1 - p0)).astype(np.float32)
    batch = {"obs": obs, "action": actions, "logp": logp, "reward": (actions == 1).astype(np.float32),
             "terminated": np.zeros((N, T), bool), "truncated": np.ones((N, T), bool), "next_obs": obs}
    metrics = learner.update(to_batch(batch)).metrics
    with torch.no_grad():
        p1 = learner.net.distribution(torch.zeros(1, 2)).probs[0, 1].item()
    assert p1 > p0 + 0.01 and learner.updates == 1 and metrics["clip_fraction"] >= 0


def test_an_image_update_runs_the_torso_once_per_minibatch():
    """The shared torso is the costly part of a pixel update: one pass for the values of the batch,
    then one per minibatch for the policy and the value together."""
    obs_space, act_space = gym.spaces.Box(0, 255, (4, 36, 36), np.uint8), gym.spaces.Discrete(3)
    args = ppo.Args(epochs=2, minibatches=4, hidden=16)
    learner = ppo.Learner(obs_space, act_space, args, torch.device("cpu"))
    calls = []
    learner.net.encoder.register_forward_hook(lambda *_: calls.append(1))
    N, T = 4, 8
    obs = np.random.default_rng(0).integers(0, 256, (N, T, 4, 36, 36), dtype=np.uint8)
    batch = {"obs": obs, "action": np.zeros((N, T), np.int64), "logp": np.full((N, T), -1.1, np.float32),
             "reward": np.ones((N, T), np.float32), "terminated": np.zeros((N, T), bool),
             "truncated": np.zeros((N, T), bool), "next_obs": obs}
    learner.update(to_batch(batch))
    assert len(calls) == 1 + args.epochs * args.minibatches


@pytest.mark.parametrize("max_grad_norm", [40.0, 0.0])
def test_an_impala_update_follows_the_v_trace_policy_gradient(max_grad_norm):
    from qrl.algorithms import impala

    obs_space, act_space = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2)
    learner = impala.Learner(obs_space, act_space, impala.Args(lr=5e-2, ent_coef=0.0, max_grad_norm=max_grad_norm),
                             torch.device("cpu"))
    N, T = 4, 8
    obs = np.zeros((N, T, 2), np.float32)
    actions = np.tile([0, 1], (N, T // 2))
    with torch.no_grad():
        p0 = learner.net.distribution(torch.zeros(1, 2)).probs[0, 1].item()
    # Behaviour policy mu = 0.5 each: off-policy, corrected by V-trace.
    batch = {"obs": obs, "action": actions, "logp": np.full((N, T), np.log(0.5), np.float32),
             "reward": (actions == 1).astype(np.float32), "terminated": np.zeros((N, T), bool),
             "truncated": np.ones((N, T), bool), "next_obs": obs}
    for _ in range(5):
        metrics = learner.update(to_batch(batch)).metrics
    with torch.no_grad():
        p1 = learner.net.distribution(torch.zeros(1, 2)).probs[0, 1].item()
    assert p1 > p0 + 0.05 and learner.updates == 5 and metrics["rho_mean"] > 0


def test_gsde_noise_is_held_for_sde_sample_freq_steps_and_matches_its_variance():
    space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
    args = ppo.Args(use_sde=True, sde_sample_freq=3, log_std_init=-1.0)
    net = ppo.make_policy(gym.spaces.Box(-1, 1, (3,)), space, args)
    core = ppo.PolicySampling(args, 0, 1, 2, seed=0)
    obs = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    actions = [core.act(net, obs, {}, np.zeros(2, bool))[0] for _ in range(4)]
    np.testing.assert_allclose(actions[0], actions[2])  # same observation, same exploration weights
    assert not np.allclose(actions[2], actions[3])  # resampled at step 3
    with torch.no_grad():
        latent, _ = net.features(torch.as_tensor(obs))
        expected = (latent**2) @ (net.log_std.exp() ** 2)
        np.testing.assert_allclose(net.distribution(torch.as_tensor(obs)).variance, expected + 1e-6, rtol=1e-5)
