"""C51 by hand: the projected target distribution on a small support (terminal transitions, atoms
landing between and exactly on atoms, values beyond the support), and a learner step that moves
the predicted distribution toward the target."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from qrl import ops
from qrl.algorithms import c51
from qrl.algorithm import to_batch

SUPPORT = torch.tensor([-1.0, 0.0, 1.0])  # three atoms, 1 apart


@pytest.mark.parametrize("ret, discount, probs, expected", [
    (0.5, 0.0, [0.2, 0.3, 0.5], [0.0, 0.5, 0.5]),  # terminal: all mass at 0.5, split between 0 and 1
    (0.0, 1.0, [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]),  # r + Z = Z: every atom lands on itself
    (5.0, 0.0, [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]),  # beyond v_max: all to the last atom
    (-3.0, 0.5, [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]),  # -3.5, -3, -2.5: all below v_min
    (0.5, 0.5, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),  # 0.5 + 0.5 * -1 = 0, exactly on an atom
    # 0.25 + 0.5 z: -0.25 (0.75 to atom 0, 0.25 to atom -1), 0.25 (0.75 to 0, 0.25 to 1), 0.75 (0.25 to 0, 0.75 to 1)
    (0.25, 0.5, [0.2, 0.3, 0.5], [0.05, 0.15 + 0.225 + 0.125, 0.075 + 0.375]),
])
def test_the_categorical_projection_by_hand(ret, discount, probs, expected):
    out = ops.categorical_projection(torch.tensor([ret]), torch.tensor([discount]), torch.tensor([probs]), SUPPORT)
    torch.testing.assert_close(out[0], torch.tensor(expected))
    assert out.sum().item() == pytest.approx(1.0)


def test_a_c51_update_moves_the_distribution_toward_the_target():
    obs_space, action_space = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2)
    args = c51.Args(atoms=11, v_min=-5.0, v_max=5.0, lr=1e-2, hidden=16, n_step=1)
    learner = c51.AGENT.Learner(obs_space, action_space, args, torch.device("cpu"))
    obs = np.zeros((32, 2), np.float32)
    batch = {"obs": obs, "action": np.zeros(32, np.int64), "return": np.full(32, 3.0, np.float32),
             "discount": np.zeros(32, np.float32), "next_obs": obs}
    for _ in range(200):
        learner.update(to_batch(batch))
    with torch.no_grad():
        q = learner.net(torch.zeros(1, 2))[0, 0].item()
        probs = torch.softmax(learner.net.distribution(torch.zeros(1, 2))[0, 0], dim=0)
    assert q == pytest.approx(3.0, abs=0.1) and probs[8].item() > 0.9  # atom 8 of -5..5 is 3


@pytest.mark.parametrize("quantiles, targets, expected", [
    ([0.0], [1.0], 0.25),  # tau 0.5, u = 1: Huber 0.5, weight |0.5 - 0| = 0.5
    ([0.0], [-2.0], 0.75),  # u = -2: Huber 1 * (2 - 0.5) = 1.5, weight |0.5 - 1| = 0.5
    ([0.0, 0.0], [1.0], 0.5),  # taus 0.25 and 0.75, u = 1 for both: 0.25 * 0.5 + 0.75 * 0.5
    ([0.0], [1.0, -2.0], 0.5),  # averaged over the target samples: (0.25 + 0.75) / 2
])
def test_the_quantile_huber_loss_by_hand(quantiles, targets, expected):
    loss = ops.quantile_huber_loss(torch.tensor([quantiles]), torch.tensor([targets]), kappa=1.0)
    assert loss.item() == pytest.approx(expected)


def test_a_qrdqn_update_moves_the_quantiles_toward_the_target_distribution():
    from qrl.algorithms import qrdqn

    obs_space, action_space = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2)
    args = qrdqn.Args(quantiles=4, lr=1e-2, hidden=16, n_step=1)
    learner = qrdqn.AGENT.Learner(obs_space, action_space, args, torch.device("cpu"))
    obs = np.zeros((64, 2), np.float32)
    returns = np.tile(np.array([0.0, 4.0], np.float32), 32)  # returns 0 or 4, half each
    batch = {"obs": obs, "action": np.zeros(64, np.int64), "return": returns,
             "discount": np.zeros(64, np.float32), "next_obs": obs}
    for _ in range(400):
        learner.update(to_batch(batch))
    with torch.no_grad():
        theta = learner.net.distribution(torch.zeros(1, 2))[0, 0]
    # The quantile Huber loss (kappa 1) is minimal where 0.5 (1 - tau) theta = 0.5 tau for theta in
    # (0, 1) (the quadratic part toward 0, the linear part toward 4): theta = tau / (1 - tau), and
    # symmetrically 4 - (1 - tau) / tau near 4. Taus 1/8, 3/8, 5/8, 7/8: 1/7, 0.6, 3.4, 4 - 1/7.
    np.testing.assert_allclose(theta.numpy(), [1 / 7, 0.6, 3.4, 4 - 1 / 7], atol=0.05)
    assert learner.net(torch.zeros(1, 2))[0, 0].item() == pytest.approx(2.0, abs=0.05)
