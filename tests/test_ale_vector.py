"""Atari on ale-py's C++ vector env (actor.vector_env=ale) gives what qrl's gymnasium Atari
pipeline gives: the same spaces, and with no-op starts and sticky actions off (the two random
parts) the same stacked frames and rewards step for step, episode starts included (the first
stacks repeat the first frame, never zeros and never the last episode's frames)."""

import re

import numpy as np
import pytest

from qrl import envs
from qrl.envs import ale_vector

pytest.importorskip("ale_py")
DETERMINISTIC = {"repeat_action_probability": 0.0}


@pytest.fixture
def no_noops(monkeypatch):
    monkeypatch.setattr(envs, "ATARI_NOOP_MAX", 0)


def _both(num_envs, env_id="ALE/Pong-v5", kwargs=DETERMINISTIC):
    return (envs.make_vector_env(env_id, num_envs, kwargs),
            envs.make_vector_env(env_id, num_envs, kwargs, backend="ale"))


def test_the_same_frames_and_rewards_as_the_gymnasium_pipeline_step_for_step(no_noops):
    gym_env, ale_env = _both(2)
    try:
        assert ale_env.single_observation_space == gym_env.single_observation_space
        assert ale_env.single_action_space == gym_env.single_action_space
        obs_g, _ = gym_env.reset(seed=3)
        obs_a, _ = ale_env.reset(seed=3)
        np.testing.assert_array_equal(obs_a, obs_g)  # the first stack: the first frame four times
        assert (obs_a[:, 0] == obs_a[:, 3]).all()
        rng = np.random.default_rng(0)
        for _ in range(200):
            actions = rng.integers(0, 6, 2)
            obs_g, r_g, te_g, tr_g, _ = gym_env.step(actions)
            obs_a, r_a, te_a, tr_a, _ = ale_env.step(actions)
            np.testing.assert_array_equal(obs_a, obs_g)
            np.testing.assert_array_equal(r_a, r_g)
            np.testing.assert_array_equal(te_a, te_g)
    finally:
        gym_env.close()
        ale_env.close()


def test_a_new_episode_s_first_stacks_repeat_its_first_frame_and_final_obs_is_the_old_episode_s():
    stacks = np.arange(3 * 4, dtype=np.uint8).reshape(3, 4, 1, 1) + 1  # frames 1..4, 5..8, 9..12
    stacks[0, :3] = 0  # as ale-py gives them: zeros before the episode's first frame
    stacks[1, :2] = 0
    out = ale_vector.fill_first_frames(stacks, np.array([0, 1, 7]))
    assert out[0, :, 0, 0].tolist() == [4, 4, 4, 4]  # at reset: the first frame four times
    assert out[1, :, 0, 0].tolist() == [7, 7, 7, 8]  # one step in: first frame three times, then the new one
    assert out[2, :, 0, 0].tolist() == [9, 10, 11, 12]  # well into the episode: untouched
    assert stacks[0, 0, 0, 0] == 0  # a copy: the env's own buffer is not written


def test_episode_ends_carry_the_final_stack_and_the_next_episode_starts_clean():
    env = envs.make_vector_env("ALE/Pong-v5", 1, DETERMINISTIC, backend="ale")
    try:
        env.reset(seed=0)
        for step in range(3000):  # random Pong loses 21 points in about 800 agent steps
            obs, _, terminated, truncated, info = env.step(np.array([0]))
            if terminated[0] or truncated[0]:
                assert info["final_obs"].shape == (1, 4, 84, 84)
                assert (obs[0, 0] == obs[0, 3]).all() and (obs[0, 1] == obs[0, 3]).all()  # the new episode's
                assert not (info["final_obs"][0] == obs[0]).all()
                break
        else:
            pytest.fail("no episode ended within 3000 steps")
    finally:
        env.close()


@pytest.mark.parametrize("env_id, kwargs, wrappers, message", [
    ("CartPole-v1", {}, [], "actor.vector_env=ale steps ALE/<Game>-v5 ids, not 'CartPole-v1'"),
    ("ALE/Pong-v5", {"frameskip": 2}, [], "actor.vector_env=ale takes env_kwargs repeat_action_probability, "
                                          "full_action_space, max_num_frames_per_episode, not frameskip"),
    ("ALE/Pong-v5", {}, ["ClipReward"], "actor.vector_env=ale cannot apply run.wrappers"),
])
def test_what_the_ale_backend_cannot_build_is_refused_in_one_line(env_id, kwargs, wrappers, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        envs.make_vector_env(env_id, 1, kwargs, wrappers, backend="ale")


def test_rom_names():
    assert ale_vector.game_name("ALE/SpaceInvaders-v5") == "space_invaders"
    assert ale_vector.game_name("ALE/Pong-v5") == "pong"


def test_local_cluster_settings_reach_the_actors_and_not_the_learner():
    from qrl.api import actor_sets, learner_sets

    sets = ("algo.lr=0.001", "actor.vector_env=ale", "inference.deadline_ms=1", "run.num_envs=8")
    assert learner_sets(sets) == ("algo.lr=0.001", "run.num_envs=8")
    assert actor_sets(sets, "ALE/Pong-v5", []) == ("--set=actor.vector_env=ale",)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_local_cluster_trains_on_pong_with_the_ale_backend(tmp_path):
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "qrl", "run", "--algo", "dqn", "--env", "ALE/Pong-v5", "--actors", "2",
         "--total-steps", "1200", "--run-dir", str(tmp_path), "--no-progress", "--set", "actor.vector_env=ale",
         "--set", "run.num_envs=4", "--set", "algo.learning_starts=256", "--set", "algo.batch_size=16",
         "--set", "algo.hidden=32", "--set", "algo.samples_per_insert=1", "--set", "run.eval_every_frames=0",
         "--set", "run.eval_episodes=1"],
        capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] >= 1200 and summary["updates"] > 0
    assert "vector_env" not in (tmp_path / "config.yaml").read_text()  # the actors' choice, not the run's
