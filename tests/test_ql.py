"""Tabular Q-learning: the update against hand-computed values."""

import numpy as np
import pytest
import torch

from qrl.algorithm import Rollout
from qrl.algorithms import ql
from qrl.envs.grid import GridWorld
from qrl.algorithm import to_batch


def make_learner(lr=0.5):
    env = GridWorld()
    return ql.Learner(env.observation_space, env.action_space, ql.Args(lr=lr, gamma=0.9), torch.device("cpu"))


def batch(**fields):
    types = {"obs": np.int64, "action": np.int64, "next_obs": np.int64, "reward": np.float32, "discount": np.float32}
    return {k: np.asarray(v, dtype=types[k]) for k, v in fields.items()}


def test_one_update_by_hand():
    learner = make_learner()
    q = learner.net.q
    q[7] = torch.tensor([0.0, 2.0, 1.0, 0.0])
    # Q[0, 1] = 0 + 0.5 * (1 + 0.9 * max Q[7] - 0) = 0.5 * 2.8 = 1.4
    learner.update(to_batch(batch(obs=[0], action=[1], reward=[1.0], discount=[0.9], next_obs=[7])))
    assert q[0, 1].item() == pytest.approx(1.4)
    # Terminal (discount 0): Q[3, 2] = 0 + 0.5 * (-1 - 0) = -0.5
    learner.update(to_batch(batch(obs=[3], action=[2], reward=[-1.0], discount=[0.0], next_obs=[7])))
    assert q[3, 2].item() == pytest.approx(-0.5)


def test_repeats_of_a_pair_in_one_batch_are_averaged_not_summed():
    learner = make_learner(lr=1.0)
    learner.update(to_batch(batch(obs=[2, 2], action=[0, 0], reward=[1.0, 3.0], discount=[0.0, 0.0], next_obs=[0, 0])))
    assert learner.net.q[2, 0].item() == pytest.approx(2.0)  # the mean target, not 1 + 3


def test_items_stop_bootstrapping_at_terminal_states_only():
    L, B = 3, 2
    rollout = Rollout(obs=np.arange(6).reshape(L, B), actions=np.ones((L, B), np.int64),
                      rewards=np.full((L, B), -0.01, np.float32),
                      terminated=np.array([[0, 0], [1, 0], [0, 0]], bool),
                      truncated=np.array([[0, 0], [0, 1], [0, 0]], bool),
                      next_obs=np.arange(6).reshape(L, B) + 10)
    items = ql.make_items(rollout, ql.Args(gamma=0.9))
    assert items["discount"].tolist() == pytest.approx([0.9, 0.9, 0.0, 0.9, 0.9, 0.9])
    assert items["next_obs"].tolist() == list(range(10, 16))
