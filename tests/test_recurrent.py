"""Recurrent agents by hand: value rescaling and its inverse, R2D2's sequence priorities, how a
rollout is split into burn-in, trained steps and n-step tail, LSTM states reset at episode starts
(on actors and when the learner replays), and the masked-velocity observations."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from qrl import algorithm, envs, ops
from qrl.algorithm import Rollout
from qrl.algorithms import ppo, r2d2


def test_value_rescaling_by_hand_and_its_inverse():
    eps = 1e-3
    # h(3) = sqrt(4) - 1 + 0.003 = 1.003; h(-8) = -(3 - 1) - 0.008 = -2.008; h(0) = 0
    np.testing.assert_allclose(ops.value_rescale(np.array([3.0, -8.0, 0.0]), eps), [1.003, -2.008, 0.0], rtol=1e-12)
    x = np.array([-1e4, -37.5, -1.0, 0.0, 0.25, 99.0, 1e5])
    np.testing.assert_allclose(ops.inverse_value_rescale(ops.value_rescale(x, eps), eps), x, rtol=1e-9, atol=1e-9)
    t = torch.tensor([3.0, -8.0], dtype=torch.float64)  # the same functions on tensors
    torch.testing.assert_close(ops.inverse_value_rescale(ops.value_rescale(t)), t)


def test_sequence_priority_is_eta_max_plus_one_minus_eta_mean_over_valid_steps():
    td = np.array([[1.0, 3.0, 2.0, 100.0], [0.5, 0.5, 0.5, 0.5]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=float)  # the 100 is padding, not counted
    # row 0: 0.9 * 3 + 0.1 * 2 = 2.9; row 1: 0.9 * 0.5 + 0.1 * 0.5 = 0.5
    np.testing.assert_allclose(ops.sequence_priority(td, mask, 0.9), [2.9, 0.5])
    torch.testing.assert_close(ops.sequence_priority(torch.tensor(td), torch.tensor(mask), 0.9),
                               torch.tensor([2.9, 0.5], dtype=torch.float64))


def test_lstm_state_is_zeroed_where_an_episode_starts():
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(3, 4)
    x = torch.randn(5, 2, 3)
    h0, c0 = torch.randn(2, 4), torch.randn(2, 4)
    start = torch.zeros(5, 2, dtype=torch.bool)
    start[3, 1] = True  # env 1 starts an episode at step 3
    hs, cs = ops.lstm_unroll(cell, x, h0, c0, start)
    fresh_h, _ = ops.lstm_unroll(cell, x[3:, 1:], torch.zeros(1, 4), torch.zeros(1, 4), start[3:, 1:])
    torch.testing.assert_close(hs[3:, 1:], fresh_h)  # after the start: as if from a zero state
    carried_h, _ = ops.lstm_unroll(cell, x[:, :1], h0[:1], c0[:1], start[:, :1])
    torch.testing.assert_close(hs[:, :1], carried_h)  # env 0 carries its state throughout
    assert not torch.allclose(hs[3, 1], cell(x[3, 1:], (hs[2, 1:], cs[2, 1:]))[0][0])


def rollout(args: r2d2.Args, T: int, B: int = 1) -> Rollout:
    before, after = args.burn_in + args.sequence_length, args.n_step - 1
    L = before + T + after
    steps = np.arange(L, dtype=np.float32)
    obs = np.broadcast_to(steps[:, None, None], (L, B, 1)).copy()  # obs[t] = t: where each field came from
    h = np.broadcast_to(steps[:, None, None], (L, B, args.lstm)).copy()
    return Rollout(obs=obs, actions=np.zeros((L, B), np.int64), rewards=np.ones((L, B), np.float32),
                   terminated=np.zeros((L, B), bool), truncated=np.zeros((L, B), bool), next_obs=obs + 0.5,
                   states={"h": h, "c": -h}, before=before, num_steps=T)


def test_r2d2_items_split_burn_in_trained_steps_and_the_n_step_tail():
    args = r2d2.Args(burn_in=3, sequence_length=4, n_step=2, gamma=0.5, lstm=2)
    T = 2  # segments of 2 steps: a sequence of 4 trained steps overlaps the previous one by 2
    # rollout steps: 0..6 history (burn-in 3 + sequence 4), 7..8 the segment, 9 the n-step tail
    items = r2d2.make_items(rollout(args, T), args)
    # the item starts T steps in: burn-in 2..4, trained 5..8 (ending with the segment), tail 9
    assert items["obs"][0, :, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    assert items["h"][0].tolist() == [2, 2] and items["c"][0].tolist() == [-2, -2]  # state at the first step
    assert items["next_obs"][0, :, 0].tolist() == [5.5, 6.5, 7.5, 8.5, 9.5]  # trained steps and tail
    np.testing.assert_allclose(items["return"][0], [1.5] * 4)  # 1 + 0.5 * 1
    np.testing.assert_allclose(items["discount"][0], [0.25] * 4)
    assert items["bootstrap"][0].tolist() == [1, 2, 3, 4]  # next_obs index: step t + n - 1
    schema = algorithm.item_schema(r2d2.AGENT, r2d2.make_policy(gym.spaces.Box(-1, 1, (1,)), gym.spaces.Discrete(2),
                                                                 args), gym.spaces.Box(-1, 1, (1,)),
                                   gym.spaces.Discrete(2), args, num_envs=3, num_steps=T)
    assert schema.frames_per_item == T  # one sequence per env and segment


def test_r2d2_refuses_segments_longer_than_its_sequences():
    args = r2d2.Args(burn_in=2, sequence_length=4, n_step=1, lstm=2)
    with pytest.raises(ValueError, match="run.segment_length=8 would leave steps untrained"):
        r2d2.make_items(rollout(args, 8), args)


def test_r2d2_actor_state_resets_at_episode_starts_and_the_learner_replays_it():
    args = r2d2.Args(lstm=8, hidden=8)
    obs_space, action_space = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)
    net = r2d2.make_policy(obs_space, action_space, args)
    core = r2d2.AGENT.make_core(args, 0, 1, 2, 0)
    state = core.initial_state(2)
    obs = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    starts = np.array([[1, 1], [0, 0], [0, 1], [0, 0]], bool)
    values = []
    for t in range(4):
        q, state = core.forward(net, obs[t], state, starts[t])
        values.append(q)
    with torch.no_grad():  # the learner's replay from a zero state gives the actor's Q values
        zeros = {"h": torch.zeros(2, 8), "c": torch.zeros(2, 8)}
        hs, _ = net.unroll(torch.as_tensor(obs), zeros, torch.as_tensor(starts))
        np.testing.assert_allclose(net.head(hs).numpy(), np.stack(values), rtol=1e-5, atol=1e-6)
        # env 1 restarted at step 2: from there it acts as a fresh LSTM would
        fresh, _ = net.unroll(torch.as_tensor(obs[2:, 1:]), {"h": torch.zeros(1, 8), "c": torch.zeros(1, 8)},
                              torch.tensor([[True], [False]]))
        np.testing.assert_allclose(net.head(fresh[1]).numpy()[0], values[3][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("core, key", [("lstm", "pi_h"), ("attention", "pi_memory")])
def test_recurrent_ppo_items_carry_the_unrolls_initial_state_and_episode_starts(core, key):
    args = ppo.RecurrentArgs(lstm=4, hidden=8, core=core, attention_heads=2, attention_memory=2)
    obs_space, action_space = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)
    net = ppo.make_policy(obs_space, action_space, args)
    core = ppo.RECURRENT_AGENT.make_core(args, 0, 1, 2, 0)
    state, start = core.initial_state(2), np.ones(2, bool)
    steps = []
    obs = np.random.default_rng(1).normal(size=(6, 2, 3)).astype(np.float32)
    for t in range(6):
        actions, next_state, extras = core.act(net, obs[t], state, start)
        done = np.array([t == 2, False])
        steps.append(dict(obs=obs[t], actions=actions, rewards=np.ones(2, np.float32), terminated=done,
                          truncated=np.zeros(2, bool), next_obs=obs[t], extras=extras, episode_start=start,
                          state=state, valid=np.ones(2, bool)))
        state, start = next_state, done
    items = ppo.make_items(algorithm.stack_steps(steps[3:], 0, 3), args)  # the second unroll: steps 3..5
    assert items["episode_start"].tolist() == [[True, False, False], [False, False, False]]
    np.testing.assert_array_equal(items[key], steps[3]["state"][key])  # the state it started from
    assert np.abs(items[key][1]).sum() > 0  # env 1 carries its state over from the first unroll
    # the learner's replay from that state gives back the actors' log-probabilities
    t = {k: torch.as_tensor(v) for k, v in items.items()}
    with torch.no_grad():
        dist, _, _ = net.replay(t)
        logp = net.log_prob(dist, t["action"].reshape(-1)).reshape(2, 3)
    np.testing.assert_allclose(logp.numpy(), items["logp"], rtol=1e-5, atol=1e-6)


def test_mask_velocity_hides_cartpole_velocities():
    env = envs.make_env("qrl/CartPoleNoVel-v1")
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, *_ = env.step(1)
    full = envs.make_env("CartPole-v1")
    full_obs, _ = full.reset(seed=0)
    for _ in range(5):
        full_obs, *_ = full.step(1)
    assert obs[1] == 0 and obs[3] == 0 and full_obs[1] != 0 and full_obs[3] != 0
    np.testing.assert_allclose(obs[[0, 2]], full_obs[[0, 2]])  # position and angle stay
    with pytest.raises(ValueError, match="MaskVelocity knows no velocity components of"):
        envs.make_env("qrl/Grid-v0", wrappers=["MaskVelocity"])


def r2d2_checkpoint(run_dir, env_id: str):
    """A checkpoint as the learner writes it, of an untrained R2D2 (seeded random weights)."""
    import dataclasses
    import json

    from qrl import checkpoint
    from qrl.config import RunConfig, to_dict

    args = r2d2.Args(lstm=8, hidden=8)
    obs_space, action_space = envs.spaces(env_id)
    torch.manual_seed(3)
    learner = r2d2.Learner(obs_space, action_space, args, torch.device("cpu"))
    config = {"algo": "r2d2", "env": env_id, "run": to_dict(RunConfig()), "args": dataclasses.asdict(args)}
    run_dir.mkdir()
    return checkpoint.save(run_dir, {"learner": learner.state_dict(), "config": json.dumps(config)})


def test_a_recurrent_policy_plays_the_same_episodes_in_every_evaluation_path(tmp_path):
    from qrl import evaluation

    ckpt = r2d2_checkpoint(tmp_path / "cartpole", "qrl/CartPoleNoVel-v1")
    vector = evaluation.evaluate(ckpt, episodes=3, seed=5)  # one vector env, as the learner evaluates
    played = evaluation.evaluate(ckpt, episodes=3, seed=5, gif=tmp_path / "episode.gif")  # one env at a time
    assert vector["returns"] == played["returns"] and (tmp_path / "episode.gif").stat().st_size > 0
    lines = []
    grid = r2d2_checkpoint(tmp_path / "grid", "qrl/Grid-v0")
    evaluation.evaluate(grid, episodes=1, render="terminal", out=lines.append)
    assert all(("up " in line and "left " in line) for line in lines[:-1])  # each step: every action's value
