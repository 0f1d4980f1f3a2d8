"""The learner's guard (qrl/guard.py): a non-finite gradient skips its optimizer step, for
learners that step one optimizer through LearnerBase and for those that step several themselves."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from qrl import guard
from qrl.algorithm import to_batch
from qrl.algorithms import dqn, sac

OBS, ACT = gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(2)


def dqn_batch(obs_value: float) -> dict:
    return {"obs": np.full((4, 2), obs_value, np.float32), "action": np.array([0, 1, 0, 1]),
            "return": np.ones(4, np.float32), "discount": np.full(4, 0.5, np.float32),
            "next_obs": np.zeros((4, 2), np.float32)}


def weights(learner) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in learner.policy_state().items()}


def test_a_batch_that_makes_the_loss_non_finite_leaves_the_weights_as_they_were():
    learner = dqn.Learner(OBS, ACT, dqn.Args(max_grad_norm=0), torch.device("cpu"))
    g = guard.UpdateGuard(learner)
    before = weights(learner)
    update = learner.update(to_batch(dqn_batch(np.inf)))  # as the broker would never let through
    assert not np.isfinite(update.metrics["loss"])
    assert g.after_update(update.metrics, learner.updates) and g.skipped_updates == 1
    for k, v in weights(learner).items():
        np.testing.assert_array_equal(v, before[k])  # without the guard: all NaN
    update = learner.update(to_batch(dqn_batch(0.5)))  # a sound batch afterwards trains as usual
    assert not g.after_update(update.metrics, learner.updates) and g.in_a_row == 0
    assert any(not np.array_equal(v, before[k]) for k, v in weights(learner).items())
    assert guard.finite_arrays(learner.policy_state())


def test_learners_that_step_their_own_optimizers_are_guarded_too():
    torch.manual_seed(0)
    box = gym.spaces.Box(-1, 1, (1,), np.float32)
    learner = sac.Learner(OBS, box, sac.Args(), torch.device("cpu"))
    g = guard.UpdateGuard(learner)
    assert len(g.optimizers) == 3  # critic, policy, temperature
    before = weights(learner)
    # Finite float32 observations whose squared TD errors are not (infinite ones would stop SAC's
    # policy before any gradient: torch validates a Normal's parameters).
    bad = {"obs": np.full((4, 2), 1e30, np.float32), "action": np.zeros((4, 1), np.float32),
           "return": np.ones(4, np.float32), "discount": np.full(4, 0.5, np.float32),
           "next_obs": np.zeros((4, 2), np.float32)}
    update = learner.update(to_batch(bad))
    assert g.after_update(update.metrics, learner.updates)
    for k, v in weights(learner).items():
        np.testing.assert_array_equal(v, before[k])


def test_too_many_skipped_updates_in_a_row_stop_the_learner_naming_the_metric():
    learner = dqn.Learner(OBS, ACT, dqn.Args(max_grad_norm=0), torch.device("cpu"))
    g = guard.UpdateGuard(learner)
    with pytest.raises(guard.NonFinite, match="updates in a row skipped.*loss=nan"):
        for _ in range(guard.MAX_SKIPPED_IN_A_ROW):
            update = learner.update(to_batch(dqn_batch(np.inf)))
            g.after_update(update.metrics, learner.updates)
    assert g.skipped_updates == guard.MAX_SKIPPED_IN_A_ROW


def test_the_learner_never_publishes_non_finite_weights():
    """Weights that went non-finite some other way than an optimizer step (the broker would refuse
    them and the learner would log "the broker missed weights" forever) stop the learner instead."""
    from types import SimpleNamespace

    from qrl.learner import LearnerProcess

    process = SimpleNamespace(weights=lambda: {"w": np.array([1.0, np.nan], np.float32)},
                              learner=SimpleNamespace(updates=7), weights_version=3)
    process.finite_weights = lambda: LearnerProcess.finite_weights(process)
    with pytest.raises(guard.NonFinite, match="NaN or infinite values after update 7"):
        LearnerProcess.publish(process)
    assert process.weights_version == 3  # (it has no socket: a send would have raised AttributeError)
