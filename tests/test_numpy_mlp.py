"""Numpy inference for small MLP policies (qrl/numpy_mlp.py): the same outputs and actions as the
torch policy for the same weights and inputs, and torch kept for what it cannot run."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from qrl import algorithm
from qrl.config import build
from qrl.numpy_mlp import compile_mlp, sample_categorical


def random_weights(net: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_a_compiled_mlp_computes_what_torch_computes(activation):
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 32), activation(), nn.Linear(32, 32), activation(), nn.Linear(32, 3))
    twin = compile_mlp(net)
    x = np.random.default_rng(0).normal(size=(64, 2, 3)).astype(np.float32)
    kept = x.copy()
    with torch.no_grad():
        expected = net(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(twin(x), expected, rtol=1e-5, atol=1e-5)
    net.load_state_dict(random_weights(net, 1))  # in place: the twin reads the new weights
    with torch.no_grad():
        np.testing.assert_allclose(twin(x), net(torch.as_tensor(x)).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(x, kept)


def test_what_numpy_cannot_run_keeps_torch():
    assert compile_mlp(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())) is None
    assert compile_mlp(nn.LSTM(4, 8)) is None
    assert compile_mlp(nn.Linear(4, 2).double()) is None


def make(name: str, obs_space, action_space, **values):
    agent = algorithm.load(name)
    args = build(agent.Args, values, "algo")
    return agent.make_core(args, 0, 1, 1, seed=3), args, agent.make_policy(obs_space, action_space, args)


@pytest.mark.parametrize("name, values", [("dqn", {"dueling": True}), ("dqn", {"dueling": False}),
                                          ("apex", {}), ("ppo", {}), ("impala", {}), ("c51", {}),
                                          ("c51", {"dueling": False, "atoms": 7}), ("qrdqn", {}),
                                          ("iqn", {}), ("mdqn", {}), ("rainbow", {})])
def test_greedy_actions_equal_the_torch_policys(name, values):
    obs_space, action_space = gym.spaces.Box(-3, 3, (8,), np.float32), gym.spaces.Discrete(5)
    core, args, net = make(name, obs_space, action_space, **values)
    obs = np.random.default_rng(1).normal(size=(4096, 8)).astype(np.float32)
    for seed in range(3):
        net.load_state_dict(random_weights(net, seed))
        with torch.no_grad():
            t = torch.as_tensor(obs)
            value_based = name in ("dqn", "apex", "c51", "qrdqn", "iqn", "mdqn", "rainbow")
            torch_out = net(t) if value_based else net.features(t)[1]
        actions, _ = core.greedy(net, obs, {}, np.zeros(len(obs), bool))
        np.testing.assert_array_equal(actions, torch_out.argmax(dim=1).numpy())


@pytest.mark.parametrize("name", ["ppo", "impala"])
def test_sampled_actions_equal_the_torch_policys_with_the_same_uniforms(name):
    obs_space, action_space = gym.spaces.Box(-3, 3, (4,), np.float32), gym.spaces.Discrete(3)
    core, args, net = make(name, obs_space, action_space)
    net.load_state_dict(random_weights(net, 7))
    obs = np.random.default_rng(2).normal(size=(2048, 4)).astype(np.float32)
    actions, _, extras = core.act(net, obs, {}, np.zeros(len(obs), bool))
    uniforms = np.random.default_rng(3).random(len(obs))  # what the actor core drew
    with torch.no_grad():
        dist = torch.distributions.Categorical(logits=net.features(torch.as_tensor(obs))[1])
    torch_actions, _ = sample_categorical(dist.logits.numpy(), uniforms)
    np.testing.assert_array_equal(actions, torch_actions)
    np.testing.assert_allclose(extras["logp"], dist.log_prob(torch.as_tensor(actions)).numpy(), atol=1e-5)
    assert len(set(actions.tolist())) == 3  # it samples, it does not take the argmax


def test_inverse_cdf_sampling_has_the_policys_probabilities():
    logits = np.log(np.array([[0.2, 0.5, 0.3]] * 200_000))
    actions, logp = sample_categorical(logits, np.random.default_rng(0).random(len(logits)))
    np.testing.assert_allclose(np.bincount(actions) / len(actions), [0.2, 0.5, 0.3], atol=0.005)
    np.testing.assert_allclose(logp, np.log([0.2, 0.5, 0.3])[actions], rtol=1e-6)


def test_a_copied_network_runs_on_its_own_weights():
    obs_space, action_space = gym.spaces.Box(-3, 3, (4,), np.float32), gym.spaces.Discrete(2)
    core, args, net = make("dqn", obs_space, action_space)
    obs = np.random.default_rng(4).normal(size=(16, 4)).astype(np.float32)
    values = lambda n: core.forward(n, obs, {}, np.zeros(len(obs), bool))[0]
    before = values(net)  # builds net's twin
    target = copy.deepcopy(net)
    net.load_state_dict(random_weights(net, 9))
    np.testing.assert_allclose(values(target), before, rtol=1e-6)
    assert not np.allclose(values(net), before)
