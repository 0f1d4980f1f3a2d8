"""DQN's update by hand: the double-DQN target, and prioritized replay's importance weights
and returned priorities (Ape-X)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from qrl.algorithms import dqn
from qrl.algorithm import to_batch

OBS, ACT = gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(2)


def fixed(module, rows):
    """Make a Q network answer fixed Q values: rows[i] for the i-th observation of each call."""
    zero = lambda: 0 * next(module.parameters()).sum()  # keeps the output on the autograd graph
    module.forward = lambda obs: torch.tensor(rows[: len(obs)], dtype=torch.float32) + zero()
    return module


def batch(weights=None):
    b = {"obs": np.zeros((1, 2), np.float32), "action": np.array([0]), "return": np.array([1.0], np.float32),
         "discount": np.array([0.5], np.float32), "next_obs": np.ones((1, 2), np.float32)}
    if weights is not None:
        b["_weight"] = np.asarray(weights, np.float32)
    return b


def test_double_dqn_picks_with_the_online_net_and_evaluates_with_the_target():
    learner = dqn.Learner(OBS, ACT, dqn.Args(huber=False, max_grad_norm=0), torch.device("cpu"))
    # online net: Q(obs) = (2, 0), Q(next_obs) = (0, 1) -> picks action 1; target: Q'(next_obs) = (10, 4)
    q_online = torch.nn.Parameter(torch.zeros(()))
    learner.net.forward = lambda obs: (torch.tensor([[2.0, 0.0], [0.0, 1.0]]) + q_online)[: len(obs)]
    fixed(learner.target, [[10.0, 4.0]])
    update = learner.update(to_batch(batch(weights=[0.5])))
    # target = 1 + 0.5 * Q'(next, argmax online = 1) = 3; TD = 3 - 2 = 1; weighted MSE = 0.5 * 1
    assert update.metrics["loss"] == pytest.approx(0.5)
    np.testing.assert_allclose(update.priorities, [1.0 + dqn.PRIORITY_FLOOR], rtol=1e-6)


def test_without_importance_weights_no_priorities_are_returned():
    learner = dqn.Learner(OBS, ACT, dqn.Args(), torch.device("cpu"))
    assert learner.update(to_batch(batch())).priorities is None


def test_the_target_follows_the_online_net_by_polyak_averaging_every_update():
    learner = dqn.Learner(OBS, ACT, dqn.Args(target_tau=0.25, max_grad_norm=10.0), torch.device("cpu"))
    assert learner.parameters_of(learner.net) is learner.parameters_of(learner.net)  # kept between updates
    with torch.no_grad():
        for p in learner.target.parameters():
            p.zero_()
    learner.update(to_batch({**batch(), "obs": np.ones((1, 2), np.float32)}))
    for target, online in zip(learner.target.parameters(), learner.net.parameters()):
        torch.testing.assert_close(target, 0.25 * online.detach())  # 0.75 * 0 + 0.25 * online (after its step)


def test_the_learning_rate_anneals_linearly_to_lr_final_and_stays_there():
    learner = dqn.Learner(OBS, ACT, dqn.Args(lr=1e-2, anneal_updates=4, lr_final=1e-3), torch.device("cpu"))
    used = []
    for _ in range(6):
        learner.update(to_batch(batch()))
        used.append(learner.optimizer.param_groups[0]["lr"])  # the rate the update just stepped with
    np.testing.assert_allclose(used, [1e-2, 7.75e-3, 5.5e-3, 3.25e-3, 1e-3, 1e-3])
    constant = dqn.Learner(OBS, ACT, dqn.Args(lr=1e-2), torch.device("cpu"))
    for _ in range(3):
        constant.update(to_batch(batch()))
    assert constant.optimizer.param_groups[0]["lr"] == 1e-2


@pytest.mark.parametrize("huber, delta, expected", [
    (False, 1.0, 3.0**2),  # squared error
    (True, 1.0, 1.0 * (3.0 - 0.5)),  # beyond the threshold: linear, slope 1
    (True, 10.0, 0.5 * 3.0**2),  # within a threshold of 10: squared
    (True, 2.0, 2.0 * (3.0 - 1.0)),  # beyond 2: slope 2
])
def test_the_td_loss_is_huber_with_the_given_threshold(huber, delta, expected):
    learner = dqn.Learner(OBS, ACT, dqn.Args(double=False, huber=huber, huber_delta=delta, max_grad_norm=0),
                          torch.device("cpu"))
    fixed(learner.net, [[2.0, 0.0]])
    fixed(learner.target, [[10.0, 4.0]])
    metrics = learner.update(to_batch({**batch(), "return": np.array([0.0], np.float32)})).metrics
    # target = 0 + discount 0.5 * max Q'(next) 10 = 5; TD error = 5 - Q(obs, action 0) 2 = 3
    assert metrics["loss"] == pytest.approx(expected)


def test_clip_rewards_puts_each_reward_s_sign_in_the_items_and_reports_raw_returns():
    from qrl import algorithm
    from qrl.acting.segments import SegmentWriter
    from qrl.config import build

    dqn = algorithm.load("dqn")
    args = build(dqn.Args, {"n_step": 1, "gamma": 0.5}, "algo")
    writer = SegmentWriter(dqn, args, "r", 0, "x", 1, {"segment_length": 3, "clip_rewards": True})
    obs, start = np.zeros((1, 2), np.float32), np.ones(1, bool)
    for t, reward in enumerate([5.0, -3.0, 0.0, 2.0]):
        done = np.array([t == 2])
        writer.record(obs, np.zeros(1, np.int64), np.array([reward], np.float32), done, np.zeros(1, bool), obs,
                      {}, start, {})
        start = done
    meta, items = writer.segment()
    np.testing.assert_array_equal(items["return"], [1.0, -1.0, 0.0])  # n_step 1: the clipped rewards
    assert meta["episode_returns"] == [2.0]  # 5 - 3 + 0: the environment's own return


def test_episodic_life_ends_the_episode_for_learning_only_when_a_life_is_lost():
    """Hand-computed, 1-step DQN items (discount = gamma unless terminated): lives 3, 3, 2, 2 then a
    game over (the new game reports 3 again): the step that lost a life is terminal for learning,
    the game goes on (no episode start after it) and its return is reported whole."""
    from qrl import algorithm
    from qrl.acting.segments import SegmentWriter
    from qrl.config import build

    dqn = algorithm.load("dqn")
    args = build(dqn.Args, {"n_step": 1, "gamma": 0.5}, "algo")
    writer = SegmentWriter(dqn, args, "r", 0, "x", 1, {"segment_length": 5, "episodic_life": True})
    obs, start = np.zeros((1, 2), np.float32), np.ones(1, bool)
    for t, lives in enumerate([3, 3, 2, 2, 3]):
        done = np.array([t == 4])  # the last life lost: a real game over, the env reset to 3 lives
        writer.record(obs, np.zeros(1, np.int64), np.ones(1, np.float32), done, np.zeros(1, bool), obs, {}, start,
                      {}, np.array([lives]))
        start = done
    meta, items = writer.segment()
    np.testing.assert_array_equal(items["discount"], [0.5, 0.5, 0.0, 0.5, 0.0])
    assert meta["episode_returns"] == [5.0]  # one game of 5 rewards, not one episode per life
    plain = SegmentWriter(dqn, args, "r", 0, "x", 1, {"segment_length": 1})
    plain.record(obs, np.zeros(1, np.int64), np.ones(1, np.float32), np.zeros(1, bool), np.zeros(1, bool), obs,
                 {}, start, {}, None)  # without the option, envs without lives are fine
    with pytest.raises(ValueError, match="run.episodic_life needs an env that reports info"):
        writer.record(obs, np.zeros(1, np.int64), np.ones(1, np.float32), np.zeros(1, bool), np.zeros(1, bool), obs,
                      {}, start, {}, None)


def test_episodic_life_is_refused_before_start_for_an_env_without_lives():
    from qrl import api
    from qrl.config import ConfigError

    with pytest.raises(ConfigError, match=r"run.episodic_life needs an environment that reports info\['lives'\]"):
        api.resolve(None, "dqn", "CartPole-v1", ("run.episodic_life=true",))
