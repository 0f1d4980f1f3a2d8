import numpy as np
import pytest
import torch

from qrl import ops


def test_nstep_targets_match_hand_computed_values():
    g = 0.5
    # one env, 5 steps; episode terminates at step 1, is truncated at step 3
    r = np.array([[1.0], [2.0], [4.0], [8.0], [16.0]])
    term = np.array([[0], [1], [0], [0], [0]], dtype=bool)
    trunc = np.array([[0], [0], [0], [1], [0]], dtype=bool)
    ret, disc, last = ops.nstep_targets(r, term, trunc, g, n=3, num_starts=3)
    # t=0: 1 + .5*2, terminated at 1 -> no bootstrap
    # t=1: 2, terminated -> no bootstrap
    # t=2: 4 + .5*8, truncated at 3 -> bootstrap from next_obs[3] with .5^2
    np.testing.assert_allclose(ret[:, 0], [2.0, 2.0, 8.0])
    np.testing.assert_allclose(disc[:, 0], [0.0, 0.0, 0.25])
    np.testing.assert_array_equal(last[:, 0], [1, 1, 3])


def test_nstep_targets_without_episode_ends_use_full_windows():
    r = np.ones((4, 2))
    none = np.zeros((4, 2), dtype=bool)
    ret, disc, last = ops.nstep_targets(r, none, none, 0.9, n=3, num_starts=2)
    np.testing.assert_allclose(ret, np.full((2, 2), 1 + 0.9 + 0.81))
    np.testing.assert_allclose(disc, np.full((2, 2), 0.729))
    np.testing.assert_array_equal(last, [[2, 2], [3, 3]])


def test_one_step_targets_are_plain_transitions():
    r = np.array([[1.0], [2.0]])
    term = np.array([[0], [1]], dtype=bool)
    ret, disc, last = ops.nstep_targets(r, term, np.zeros_like(term), 0.99, n=1, num_starts=2)
    np.testing.assert_allclose(ret[:, 0], [1.0, 2.0])
    np.testing.assert_allclose(disc[:, 0], [0.99, 0.0])
    np.testing.assert_array_equal(last[:, 0], [0, 1])


def test_nstep_targets_need_a_long_enough_window():
    with pytest.raises(ValueError):
        ops.nstep_targets(np.zeros((3, 1)), np.zeros((3, 1), bool), np.zeros((3, 1), bool), 0.9, 3, 2)


def test_apex_epsilons_and_linear_schedule():
    eps = [ops.apex_epsilon(i, 8) for i in range(8)]
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4**8)
    assert all(a > b for a, b in zip(eps, eps[1:]))
    assert ops.linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert ops.linear_schedule(1.0, 0.1, 100, 500) == pytest.approx(0.1)


def test_polyak_update():
    target, online = [torch.zeros(3)], [torch.ones(3)]
    ops.polyak_update(target, online, 0.25)
    np.testing.assert_allclose(target[0].numpy(), 0.25)
    ops.polyak_update(target, online, 1.0)
    np.testing.assert_allclose(target[0].numpy(), 1.0)
