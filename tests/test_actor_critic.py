"""DDPG, TD3, SAC and TAC: the critic targets and the policy/temperature updates, by hand with stub
networks whose outputs are known."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from qrl.algorithms import ddpg, sac, tac, td3
from qrl.algorithm import to_batch

OBS = gym.spaces.Box(-1, 1, (2,), np.float32)
ACT = gym.spaces.Box(-2, 2, (1,), np.float32)


class Const(nn.Module):
    """A critic stub: Q = value for every input (with a parameter so optimizers have one)."""

    def __init__(self, value, per_action=None):
        super().__init__()
        self.value, self.per_action = value, per_action
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, obs, action=None):
        n = len(obs)
        if self.per_action is not None:
            return torch.tensor([self.per_action] * n) + 0 * self.p
        return torch.full((n,), float(self.value)) + 0 * self.p


def answer(module, value):
    """Make a real critic return a constant (its parameters stay, so Polyak updates still work)."""
    module.forward = lambda obs, action=None: torch.full((len(obs),), float(value))
    return module


def batch(n=4, discount=0.5):
    return {"obs": np.zeros((n, 2), np.float32), "action": np.zeros((n, 1), np.float32),
            "return": np.ones(n, np.float32), "discount": np.full(n, discount, np.float32),
            "next_obs": np.zeros((n, 2), np.float32)}


def test_ddpg_target_is_reward_plus_discounted_target_critic():
    learner = ddpg.Learner(OBS, ACT, ddpg.Args(hidden=[8]), torch.device("cpu"))
    answer(learner.target_critics[0], 4.0)
    assert learner.update(to_batch(batch())).metrics["q_target"] == pytest.approx(1 + 0.5 * 4.0)


def test_td3_takes_the_smaller_twin_and_delays_the_policy():
    learner = td3.AGENT.Learner(OBS, ACT, td3.Args(hidden=[8]), torch.device("cpu"))
    assert len(learner.critics) == 2
    answer(learner.target_critics[0], 4.0)
    answer(learner.target_critics[1], 2.0)
    # The policy steps along dQ/da of the first critic. A small random critic can have every ReLU
    # dead at the batch's input (dQ/da = 0, the policy rightly stays put: a flaky test), so the
    # critic gets a slope in the action that its own parameters cannot cancel.
    critic = learner.critics[0]
    critic_forward = critic.forward
    critic.forward = lambda obs, action: critic_forward(obs, action) + action.sum(1)
    before = [p.clone() for p in learner.net.parameters()]
    assert learner.update(to_batch(batch())).metrics["q_target"] == pytest.approx(1 + 0.5 * 2.0)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.net.parameters()))  # update 1: critic only
    learner.update(to_batch(batch()))
    assert not all(torch.equal(a, b) for a, b in zip(before, learner.net.parameters()))  # update 2: policy too


def test_td3_target_smoothing_stays_within_the_action_bounds():
    args = td3.Args(hidden=[8], target_noise=5.0, target_noise_clip=5.0)
    learner = td3.AGENT.Learner(OBS, ACT, args, torch.device("cpu"))
    seen = []

    for critic in learner.target_critics:
        critic.forward = lambda obs, action=None: (seen.append(action), torch.zeros(len(obs)))[1]
    learner.update(to_batch(batch(n=256)))
    assert torch.all(seen[0].abs() <= 2.0) and seen[0].std() > 0.5


def discrete_learner(learner_class, args):
    """A discrete-action learner whose policy is (0.25, 0.75) everywhere, target critics answering
    (1, 3) and (2, 2) (min: (1, 2)), critics 0; and a batch taking action 0."""
    learner = learner_class(OBS, gym.spaces.Discrete(2), args, torch.device("cpu"))
    with torch.no_grad():
        last = learner.net.net[-1]
        last.weight.zero_()
        last.bias.copy_(torch.log(torch.tensor([0.25, 0.75])))
    learner.target_critics = nn.ModuleList([Const(0, per_action=[1.0, 3.0]), Const(0, per_action=[2.0, 2.0])])
    learner.critics = nn.ModuleList([Const(0, per_action=[0.0, 0.0]), Const(0, per_action=[0.0, 0.0])])
    learner.critic_optimizer = torch.optim.Adam(learner.critics.parameters())
    b = batch()
    b["action"] = np.zeros(4, np.int64)
    return learner, b


def test_discrete_sac_target_is_the_exact_soft_expectation():
    learner, b = discrete_learner(sac.Learner, sac.Args(hidden=[8], init_alpha=0.5))
    # min Q' = (1, 2); V = sum pi (min Q' - alpha log pi) = .25 (1 - .5 ln .25) + .75 (2 - .5 ln .75)
    v = 0.25 * (1 - 0.5 * np.log(0.25)) + 0.75 * (2 - 0.5 * np.log(0.75))
    expected_loss = 2 * (1 + 0.5 * v) ** 2  # two critics at 0, target r + discount * V
    assert learner.update(to_batch(b)).metrics["critic_loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_sac_temperature_falls_when_entropy_is_above_target():
    learner = sac.Learner(OBS, ACT, sac.Args(hidden=[8], lr=0.1), torch.device("cpu"))
    for _ in range(5):  # a fresh Gaussian policy with std ~1 on one dimension: entropy > -1
        metrics = learner.update(to_batch(batch())).metrics
    assert metrics["alpha"] < 1.0
    action, logp = learner.net.sample(torch.zeros(1000, 2))
    assert torch.all(action.abs() <= 2.0) and logp.shape == (1000,)


# -- TAC --------------------------------------------------------------------------------------------

def test_tsallis_q_logarithm_and_entropy_by_hand():
    p = torch.tensor([0.25, 0.75])
    assert tac.log_q(p.log(), 2.0).tolist() == pytest.approx([-0.75, -0.25])  # (p - 1) / 1
    assert tac.log_q(p.log(), 0.5).tolist() == pytest.approx([-2.0, (0.75 ** -0.5 - 1) / -0.5])
    assert tac.log_q(p.log(), 1.0).tolist() == pytest.approx(p.log().tolist())
    # S_q = -sum p ln_q p = (1 - sum p^q) / (q - 1): at q = 2, 1 - (1/16 + 9/16)
    assert -(p * tac.log_q(p.log(), 2.0)).sum().item() == pytest.approx(0.375)
    assert tac.tsallis_entropy_of_uniform(4, 2.0) == pytest.approx(0.75)
    assert tac.tsallis_entropy_of_uniform(4, 1.0) == pytest.approx(np.log(4))


def test_discrete_tac_target_uses_the_tsallis_entropy():
    args = tac.Args(hidden=[8], init_alpha=0.5, entropic_index=2.0)
    learner, b = discrete_learner(tac.Learner, args)
    # min Q' = (1, 2); V = sum pi (min Q' - alpha ln_2 pi), ln_2 p = p - 1
    v = 0.25 * (1 - 0.5 * -0.75) + 0.75 * (2 - 0.5 * -0.25)
    metrics = learner.update(to_batch(b)).metrics
    assert metrics["critic_loss"] == pytest.approx(2 * (1 + 0.5 * v) ** 2, rel=1e-5)
    assert metrics["entropy"] == pytest.approx(0.375, rel=1e-4)  # the policy's S_2, before its own step
    assert learner.target_entropy == pytest.approx(args.target_entropy_scale * 0.5)  # 0.6 * S_2(uniform over 2)


@pytest.mark.parametrize("action_space", [ACT, gym.spaces.Discrete(3)])
def test_tac_at_entropic_index_one_is_sac(action_space):
    learners = []
    for algo, args in ((sac, sac.Args(hidden=[8])), (tac, tac.Args(hidden=[8], entropic_index=1.0))):
        torch.manual_seed(0)
        learners.append(algo.AGENT.Learner(OBS, action_space, args, torch.device("cpu")))
    b = batch()
    if not isinstance(action_space, gym.spaces.Box):
        b["action"] = np.array([0, 1, 2, 1], np.int64)
    b["obs"] = np.random.default_rng(0).uniform(-1, 1, (4, 2)).astype(np.float32)
    results = []
    for learner in learners:
        torch.manual_seed(1)  # the same policy samples
        results.append([learner.update(to_batch(b)).metrics for _ in range(3)])
    assert results[0] == results[1]
    for p_sac, p_tac in zip(learners[0].net.parameters(), learners[1].net.parameters()):
        assert torch.equal(p_sac, p_tac)
