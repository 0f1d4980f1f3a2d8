"""Recurrent cores (qrl/cores.py): an attention core's unroll in the learner computes what its steps
in the actor did, sees only its own episode and its window of past steps, and goes through the same
state seam as the LSTM."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from qrl import cores, ops
from qrl.algorithms import ppo, r2d2


@dataclass(frozen=True)
class CoreArgs:
    core: str = "attention"
    lstm: int = 16
    attention_memory: int = 4
    attention_heads: int = 2
    attention_layers: int = 2


def make(args: CoreArgs = CoreArgs(), inputs: int = 3):
    torch.manual_seed(0)
    core = cores.make_core(args, inputs)
    if args.core == "attention":
        for block in core.blocks:  # a bias that varies with age, so that ages mixed up would show
            torch.nn.init.normal_(block.age_bias)
    return core


def initial(args: CoreArgs, n: int) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in cores.initial_state(args, n).items()}


def step_by_step(core, x, state, starts):
    """The actor's way: one step at a time, each from the state the previous one gave."""
    outs = []
    for t in range(len(x)):
        out, states = core.unroll(x[t:t + 1], state, starts[t:t + 1])
        state = {k: v[0] for k, v in states.items()}
        outs.append(out[0])
    return torch.stack(outs), state


@pytest.mark.parametrize("kind", ["attention", "lstm"])
def test_an_unroll_computes_what_the_actor_computed_step_by_step(kind):
    args = CoreArgs(core=kind)
    core = make(args)
    T, N = 11, 3
    x = torch.randn(T, N, 3)
    starts = torch.zeros(T, N, dtype=torch.bool)
    starts[0, :] = True
    starts[5, 1] = starts[7, 2] = starts[8, 2] = True
    with torch.no_grad():
        expected, _ = step_by_step(core, x, initial(args, N), starts)
        # the learner: an item from step 6 on, with the state the actor had there
        _, before = step_by_step(core, x[:6], initial(args, N), starts[:6])
        outs, states = core.unroll(x[6:], before, starts[6:])
        torch.testing.assert_close(outs, expected[6:], atol=1e-5, rtol=1e-5)
        # the state after each step serves a next step from it (a bootstrap value)
        _, after = step_by_step(core, x[:9], initial(args, N), starts[:9])
        for k in after:
            torch.testing.assert_close(states[k][2], after[k], atol=1e-5, rtol=1e-5)
        next_out = core.step_from(x[9], {k: v[2] for k, v in states.items()})
        torch.testing.assert_close(next_out, expected[9], atol=1e-5, rtol=1e-5)


def test_attention_sees_its_own_episode_only_and_at_most_its_memory_back():
    args = CoreArgs(attention_layers=1)  # one block: a step depends on exactly the steps it attends to
    core = make(args)
    T, M = 12, args.attention_memory
    x = torch.randn(T, 1, 3)
    starts = torch.zeros(T, 1, dtype=torch.bool)
    starts[0] = starts[6] = True

    def outputs(x):
        with torch.no_grad():
            return core.unroll(x, initial(args, 1), starts)[0][:, 0]

    base = outputs(x)
    changed = x.clone()
    changed[4] += 1.0  # a step of the first episode
    moved = (outputs(changed) - base).abs().sum(1) > 1e-6
    assert moved.tolist() == [False] * 4 + [True, True] + [False] * 6  # steps 4 and 5; nothing after the start
    changed = x.clone()
    changed[6] += 1.0  # the second episode's first step: seen by steps 6 .. 6 + M only
    moved = (outputs(changed) - base).abs().sum(1) > 1e-6
    assert moved.tolist() == [False] * 6 + [True] * (M + 1) + [False] * (T - 7 - M)


def test_attention_memory_restarts_where_an_episode_starts():
    args = CoreArgs()
    core = make(args)
    x = torch.randn(5, 2, 3)
    starts = torch.zeros(5, 2, dtype=torch.bool)
    starts[0] = starts[3, 0] = True
    with torch.no_grad():
        _, states = core.unroll(x, initial(args, 2), starts)
    # the memory's slots hold the last M steps (oldest first); valid: those of the current episode
    assert states["memory_valid"][4].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]  # env 1: steps 1-4 of its episode
    assert states["memory"].shape == (5, 2, args.attention_layers, args.attention_memory, args.lstm)
    torch.testing.assert_close(states["memory"][4, :, 0, -1], core.embed(x[4]))  # the newest: the step's input


def test_the_lstm_core_is_the_lstm_unroll():
    args = CoreArgs(core="lstm")
    core = make(args)
    x = torch.randn(6, 2, 3)
    starts = torch.zeros(6, 2, dtype=torch.bool)
    starts[3, 1] = True
    h, c = torch.randn(2, 16), torch.randn(2, 16)
    outs, states = core.unroll(x, {"h": h, "c": c}, starts)
    hs, cs = ops.lstm_unroll(core, x, h, c, starts)
    torch.testing.assert_close(outs, hs)
    torch.testing.assert_close(states["c"], cs)
    assert set(core.state_dict()) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}  # as nn.LSTMCell's


def test_a_core_the_config_cannot_build_is_one_line():
    with pytest.raises(ValueError, match="algo.core must be one of lstm, attention, got 'gru'"):
        cores.make_core(CoreArgs(core="gru"), 3)
    with pytest.raises(ValueError, match=r"algo.attention_heads \(3\) must divide"):
        cores.make_core(CoreArgs(attention_heads=3), 3)


def test_recurrent_ppo_and_r2d2_take_an_attention_core_and_replay_it_exactly():
    """The first epoch of PPO on its own fresh unroll: the replayed log-probabilities are the actor's."""
    import gymnasium as gym

    import qrl.envs  # noqa: F401  (registers qrl/CartPoleNoVel-v1)

    args = ppo.RecurrentArgs(core="attention", lstm=16, attention_memory=3)
    env = gym.make("qrl/CartPoleNoVel-v1")
    net = ppo.make_policy(env.observation_space, env.action_space, args)
    assert {k.split(".")[0] for k in net.state_dict()} >= {"pi_attention", "vf_attention"}
    sampler = ppo.PolicySampling(args, 0, 1, 2, seed=0)
    state = sampler.initial_state(2)
    obs = np.random.default_rng(0).normal(size=(8, 2, 4)).astype(np.float32)
    starts = np.zeros((8, 2), bool)
    starts[0] = starts[5, 1] = True
    logps, actions = [], []
    for t in range(8):
        outputs, next_state = sampler.forward(net, obs[t], state, starts[t])
        action, extras = sampler.select(net, outputs)
        if t == 0:
            first = {k: v.copy() for k, v in state.items()}
        state = next_state
        logps.append(extras["logp"])
        actions.append(action)
    fields = {"obs": obs.swapaxes(0, 1), "next_obs": obs.swapaxes(0, 1), "reward": np.zeros((2, 8), np.float32),
              "episode_start": starts.T, **first}
    dist, _, _ = net.replay({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in fields.items()})
    replayed = net.log_prob(dist, torch.as_tensor(np.stack(actions).T.reshape(-1)))
    np.testing.assert_allclose(replayed.detach().numpy(), np.stack(logps).T.reshape(-1), atol=1e-5)
    q_net = r2d2.make_policy(env.observation_space, env.action_space, r2d2.Args(core="attention", lstm=16))
    assert q_net.core is q_net.attention


def test_the_gtrxl_gate_starts_near_the_identity_and_is_a_gru_update():
    gate = cores.GRUGate(3, bias=2.0)
    for linear in (gate.from_y, gate.from_x, gate.candidate_x):
        torch.nn.init.zeros_(linear.weight)
    x, y = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[4.0, 4.0, 4.0]])
    z = 1 / (1 + np.exp(2.0))  # the update gate: sigmoid(0 - bias); the candidate tanh(0) = 0
    torch.testing.assert_close(gate(x, y), (1 - z) * x)
    torch.nn.init.eye_(gate.from_y.weight[6:])  # the candidate reads y: h = tanh(y)
    torch.testing.assert_close(gate(x, y), (1 - z) * x + z * torch.tanh(y))
