"""Reactor: distributional Retrace against hand-made cases and the scalar Retrace, and a learner
whose policy follows the critic."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from qrl import ops
from qrl.algorithm import to_batch
from qrl.algorithms import reactor

SUPPORT = torch.linspace(-10.0, 10.0, 41, dtype=torch.float64)


def random_case(T=5, N=3, seed=0, ends_at=None):
    g = torch.Generator().manual_seed(seed)
    probs = lambda: torch.softmax(torch.randn(T, N, len(SUPPORT), generator=g, dtype=torch.float64), -1)
    rewards = torch.rand(T, N, generator=g, dtype=torch.float64)
    cs = torch.rand(T, N, generator=g, dtype=torch.float64)
    ends = torch.zeros(T, N, dtype=torch.bool)
    if ends_at is not None:
        ends[ends_at] = True
    return rewards, cs, ends, probs(), probs()


def test_with_no_trace_the_target_is_the_one_step_projection():
    rewards, _, ends, next_probs, taken_probs = random_case()
    cs = torch.zeros_like(rewards)
    target = reactor.distributional_retrace(rewards, ends, ends, cs, next_probs, taken_probs, SUPPORT, 0.9)
    for t in range(len(rewards)):
        one_step = ops.categorical_projection(rewards[t], torch.full_like(rewards[t], 0.9), next_probs[t], SUPPORT)
        torch.testing.assert_close(target[t], one_step)


@pytest.mark.parametrize("ends_at", [None, 2], ids=["continuing", "episode-end"])
def test_the_mean_of_the_distributional_target_is_the_retrace_target(ends_at):
    """The projection keeps the mean (no atom falls off the support here), so the signed mixture's mean
    is Retrace's target for the critic's means; its mass sums to one."""
    rewards, cs, ends, next_probs, taken_probs = random_case(ends_at=ends_at)
    terminated = ends.clone()
    target = reactor.distributional_retrace(rewards, terminated, ends, cs, next_probs, taken_probs, SUPPORT, 0.9)
    mean = lambda p: (p * SUPPORT).sum(-1)
    scalar = ops.retrace(mean(taken_probs), mean(next_probs), rewards, torch.log(cs), terminated, ends, 0.9, 1.0)
    torch.testing.assert_close(mean(target), scalar)
    torch.testing.assert_close(target.sum(-1), torch.ones_like(rewards))


def test_the_policy_moves_toward_the_action_the_critic_and_returns_favour():
    """One-step episodes: action 1 pays 1, action 0 pays 0; behaviour uniform."""
    torch.manual_seed(0)
    obs_space, act_space = gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(2)
    args = reactor.Args(hidden=16, atoms=11, v_min=-2, v_max=2, lr=1e-2, ent_coef=0.0)
    learner = reactor.Learner(obs_space, act_space, args, torch.device("cpu"))
    N, T = 8, 4
    actions = np.tile([0, 1], (N, T // 2))
    batch = {"obs": np.zeros((N, T, 2), np.float32), "action": actions,
             "logp": np.full((N, T), np.log(0.5), np.float32),
             "reward": actions.astype(np.float32), "terminated": np.ones((N, T), bool),
             "truncated": np.zeros((N, T), bool), "next_obs": np.zeros((N, T, 2), np.float32)}
    with torch.no_grad():
        before = torch.softmax(learner.net.policy_logits(torch.zeros(1, 2)), -1)[0, 1].item()
    for _ in range(30):
        update = learner.update(to_batch(batch))
    with torch.no_grad():
        after = torch.softmax(learner.net.policy_logits(torch.zeros(1, 2)), -1)[0, 1].item()
        q = (torch.softmax(learner.net(torch.zeros(1, 2))[1], -1) * learner.net.support).sum(-1)[0]
    assert after > before + 0.2 and q[1] > q[0] + 0.5
    assert update.priorities.shape == (N,) and np.all(update.priorities > 0)


def test_reactor_refuses_continuous_actions_with_a_clear_error():
    with pytest.raises(ValueError, match="reactor needs Discrete actions"):
        reactor.make_policy(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-1, 1, (1,)), reactor.Args())


def test_beta_loo_has_the_leave_one_out_gradient_and_its_scaled_form_ignores_the_return_scale():
    from qrl.algorithms.reactor import beta_loo

    logits = torch.tensor([[0.2, -0.1, 0.4]], requires_grad=True)
    q = torch.tensor([[1.0, 3.0, 2.0]])
    action, ret, beta = torch.tensor([1]), torch.tensor([5.0]), torch.tensor([0.5])
    beta_loo(torch.softmax(logits, -1), q, action, ret, beta, scaled=False).sum().backward()
    probs = torch.softmax(logits.detach(), -1)[0]
    jacobian = torch.diag(probs) - probs[:, None] * probs[None, :]  # d pi(b) / d logit(c)
    by_hand = 0.5 * (5.0 - 3.0) * jacobian[1] + (q[0][:, None] * jacobian).sum(0)
    torch.testing.assert_close(logits.grad[0], by_hand)

    grads = []
    for k in (1.0, 100.0):  # returns 100 times larger: the same scaled step
        x = logits.detach().clone().requires_grad_(True)
        beta_loo(torch.softmax(x, -1), k * q, action, k * ret, beta).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])
