"""Environments: ids, entry points, kwargs, wrappers by name, Atari preprocessing, the grid world."""

import numpy as np
import pytest

from qrl import envs
from qrl.envs.grid import GridWorld


def test_an_entry_point_is_registered_on_first_use():
    env = envs.make_vector_env("qrl.envs.grid:GridWorld", 2)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.tolist() == [0, 0] and env.single_action_space.n == 4
    finally:
        env.close()


@pytest.mark.parametrize("env_id, message", [
    ("CartPole-v9", "did you mean CartPole-v1"),
    ("qrl.envs.grid:Nowhere", "cannot load environment entry point 'qrl.envs.grid:Nowhere'"),
    ("qrl.envs.grid:LAYOUT", "is not a gymnasium.Env subclass"),
    ("no_such_module:Env", "cannot load environment entry point"),
])
def test_unknown_environments_are_clear(env_id, message):
    with pytest.raises(envs.UnknownEnvironment, match=message):
        envs.check_env_id(env_id)


def test_kwargs_and_wrappers_by_name_reach_every_env():
    env = envs.make_vector_env("CartPole-v1", 2, {"sutton_barto_reward": True},
                               [{"name": "ClipReward", "min_reward": -0.5, "max_reward": 0.5}])
    try:
        env.reset(seed=0)
        _, reward, *_ = env.step(np.zeros(2, dtype=np.int64))
        assert reward.tolist() == [0.0, 0.0]  # Sutton-Barto reward is 0 while alive; clipping keeps it
        for _ in range(200):
            _, reward, terminated, *_ = env.step(np.zeros(2, dtype=np.int64))
            if terminated.any():
                assert reward[terminated].tolist() == [-0.5] * int(terminated.sum())  # -1 clipped to -0.5
                break
        else:
            pytest.fail("always pushing left never ended an episode")
    finally:
        env.close()


def test_an_unknown_wrapper_suggests_close_names():
    with pytest.raises(envs.UnknownEnvironment, match="unknown wrapper 'ClipRewards'; did you mean ClipReward"):
        envs.make_vector_env("CartPole-v1", 1, None, ["ClipRewards"])


def test_atari_ids_get_the_dqn_preprocessing():
    pytest.importorskip("ale_py", reason="the atari extra (ale-py) is not installed")
    pytest.importorskip("cv2", reason="the atari extra (opencv) is not installed")
    obs_space, action_space = envs.spaces("ALE/Pong-v5")
    assert obs_space.shape == (4, 84, 84) and obs_space.dtype == np.uint8 and action_space.n == 6
    from qrl.algorithms import dqn

    net = dqn.make_policy(obs_space, action_space, dqn.Args())
    core = dqn.EpsilonGreedy(dqn.Args(), 0, 1, 1, seed=0)
    assert net.image and core.greedy(net, obs_space.sample()[None], {}, np.ones(1, bool))[0].shape == (1,)


def test_the_grid_world_walls_pit_goal_and_best_return():
    env = GridWorld()
    obs, _ = env.reset()
    assert obs == 0
    assert env.step(3)[:3] == (0, -0.01, False)  # left edge: stays put
    assert env.step(2)[:3] == (5, -0.01, False)  # down
    assert env.step(1)[:3] == (5, -0.01, False)  # a wall at (1, 1)
    env.reset()
    for a in (2, 2, 1, 1):
        obs, reward, terminated, *_ = env.step(a)
    assert (obs, reward, terminated) == (12, -1.0, True)  # the pit
    env.reset()
    total = 0.0
    for a in (1, 1, 1, 2, 1, 2, 2, 2):  # right x3, down, right, down x3: 8 moves
        obs, reward, terminated, *_ = env.step(a)
        total += reward
    assert terminated and obs == 24 and total == pytest.approx(0.93)
    assert GridWorld(render_mode="ansi").render().splitlines()[0] == "A . . . ."
    assert GridWorld(render_mode="rgb_array").render().shape == (160, 160, 3)
