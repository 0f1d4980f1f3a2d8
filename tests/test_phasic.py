"""PPG and DAAC: when their phases run, what each phase trains and what it leaves alone."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from qrl.algorithm import to_batch
from qrl.algorithms import daac, ppg

OBS = gym.spaces.Box(-1, 1, (3,), np.float32)
SPACES = [gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (2,), np.float32)]


def unrolls(action_space, n=4, t=8, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, t, 3)).astype(np.float32)
    if isinstance(action_space, gym.spaces.Discrete):
        actions = rng.integers(0, action_space.n, (n, t))
    else:
        actions = rng.normal(0, 1, (n, t, 2)).astype(np.float32)
    return {"obs": obs, "action": actions, "logp": np.full((n, t), -1.0, np.float32),
            "reward": rng.normal(0, 1, (n, t)).astype(np.float32), "terminated": np.zeros((n, t), bool),
            "truncated": np.zeros((n, t), bool), "next_obs": np.roll(obs, -1, axis=1)}


def parameters(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("action_space", SPACES, ids=["discrete", "gaussian"])
def test_ppg_runs_its_auxiliary_phase_every_policy_iterations_on_what_it_kept(action_space):
    torch.manual_seed(0)
    args = ppg.Args(policy_iterations=2, aux_epochs=4, aux_minibatches=2, lr=3e-3)
    learner = ppg.Learner(OBS, action_space, args, torch.device("cpu"))
    first = learner.update(to_batch(unrolls(action_space, seed=0))).metrics
    assert "aux_kl" not in first and len(learner.kept) == 1
    aux_head = parameters(learner.net.aux_value)
    second = learner.update(to_batch(unrolls(action_space, seed=1))).metrics
    assert {"aux_value_loss", "aux_kl", "aux_phase_value_loss"} <= set(second) and learner.kept == []
    assert changed(aux_head, learner.net.aux_value)  # only the auxiliary phase trains it


def test_ppg_auxiliary_phase_fits_the_value_targets_while_the_clone_loss_holds_the_policy():
    action_space = SPACES[0]
    results = {}
    for clone_coef in (1.0, 0.0):
        torch.manual_seed(0)
        args = ppg.Args(policy_iterations=1000, aux_epochs=100, aux_minibatches=1, lr=3e-3, clone_coef=clone_coef)
        learner = ppg.Learner(OBS, action_space, args, torch.device("cpu"))
        with torch.no_grad():  # logits far from uniform, so that changing features moves the policy
            learner.net.policy[-1].weight.mul_(200)
        obs = torch.as_tensor(unrolls(action_space)["obs"]).reshape(-1, 3)
        targets = 3 * obs[:, 0] - obs[:, 1]  # a function of the observation, as value targets are
        learner.kept = [(obs, targets)]
        with torch.no_grad():
            old = learner.net.distribution(obs)
            aux_before = (learner.net.aux_terms(obs)[1] - targets).pow(2).mean()
        learner.auxiliary_phase()
        with torch.no_grad():
            dist, aux_values, _ = learner.net.aux_terms(obs)
            kl = torch.distributions.kl_divergence(old, dist).mean().item()
        results[clone_coef] = kl
        assert (aux_values - targets).pow(2).mean() < 0.5 * aux_before
    assert results[0.0] > 1e-3 and results[1.0] < 0.5 * results[0.0]


@pytest.mark.parametrize("action_space", SPACES, ids=["discrete", "gaussian"])
def test_daac_policy_phase_leaves_the_value_network_and_the_value_phase_the_policy(action_space):
    torch.manual_seed(0)
    args = daac.Args(value_every=2, value_epochs=3, minibatches=2, lr=3e-3)
    learner = daac.Learner(OBS, action_space, args, torch.device("cpu"))
    value_net, policy = parameters(learner.net.value), parameters(learner.net.policy)
    advantage = parameters(learner.net.advantage)
    first = learner.update(to_batch(unrolls(action_space, seed=0))).metrics
    assert "value_loss" not in first and "advantage_loss" in first
    assert not changed(value_net, learner.net.value) and changed(policy, learner.net.policy)
    assert changed(advantage, learner.net.advantage)
    second = learner.update(to_batch(unrolls(action_space, seed=1))).metrics  # the second: a value phase too
    assert "value_loss" in second and learner.kept == [] and changed(value_net, learner.net.value)
    value_net, policy = parameters(learner.net.value), parameters(learner.net.policy)
    advantage = parameters(learner.net.advantage)
    learner.kept = [{"obs": torch.zeros(8, 3), "value": torch.zeros(8), "return": torch.ones(8)}]
    learner.value_phase()  # alone: it trains the value network and nothing else
    assert changed(value_net, learner.net.value)
    assert not changed(policy, learner.net.policy) and not changed(advantage, learner.net.advantage)


def test_daac_advantage_head_learns_the_normalized_gae_advantages():
    action_space = SPACES[0]
    torch.manual_seed(0)
    args = daac.Args(epochs=40, minibatches=1, lr=3e-3, clip_range=1e-6)  # a policy that barely moves
    learner = daac.Learner(OBS, action_space, args, torch.device("cpu"))
    batch = to_batch(unrolls(action_space))
    metrics = [learner.update(batch).metrics["advantage_loss"] for _ in range(3)]
    assert metrics[-1] < 0.5 * metrics[0]


@pytest.mark.parametrize("algo", [ppg, daac])
def test_phasic_variants_refuse_an_lstm_with_a_clear_error(algo):
    with pytest.raises(ValueError, match=f"{algo.AGENT.name}: the LSTM variant"):
        algo.make_policy(OBS, SPACES[0], algo.Args(lstm=8))
