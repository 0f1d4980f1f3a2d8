"""Recurrent cores: what a recurrent agent (rppo, r2d2, impala with a core) runs between its
encoder and its heads, chosen with `algo.core`:

    lstm       an LSTM cell; its state is (h, c)
    attention  a transformer over the last `algo.attention_memory` steps: Parisotto et al. 2020's
               GTrXL (pre-LayerNorm blocks of multi-head self-attention and a feed-forward layer,
               each joined to the residual stream by a GRU-type gate that starts near the
               identity), with a learned bias per head and step age in place of position
               embeddings (Press et al. 2022's relative bias, learned). Its state is a memory: each block's
               inputs at the last `attention_memory` steps, and which of them belong to the current
               episode (Transformer-XL's memory, Dai et al. 2019, kept by the actor)

Both go through the same state seam: actors carry a dict of arrays per environment, reset it
where an episode starts and send the state an item starts from with the item; the learner replays
the item's steps from that state. Every core has

    unroll(x [T, N, D], state {name: [N, ...]}, episode_start [T, N])
        -> outputs [T, N, width], the state after each step {name: [T, N, ...]}
    step_from(x [B, D], state {name: [B, ...]}) -> outputs [B, width]  (no episode start)

An attention step attends to its own input and to the memory's steps of the same episode, at most
`attention_memory` steps back; the learner's unroll attends over the stored memory and the item's
steps with the same window, so it computes what the actor did (for the memory's steps, with the
weights the actor had, as an LSTM's stored state does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from qrl import ops

CORES = ("lstm", "attention")


class LSTMCore(nn.LSTMCell):
    """An LSTM cell as a core (the state {h, c}; its parameters are named as nn.LSTMCell's)."""

    def unroll(self, x: torch.Tensor, state: dict[str, torch.Tensor], episode_start: torch.Tensor):
        hs, cs = ops.lstm_unroll(self, x, state["h"], state["c"], episode_start)
        return hs, {"h": hs, "c": cs}

    def step_from(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        h, _ = self(x, (state["h"], state["c"]))
        return h


class GRUGate(nn.Module):
    """GTrXL's gate g(x, y): a GRU update of the residual stream x by a sublayer's output y, with
    the update gate's bias starting at `bias` so that g begins near x (the identity)."""

    def __init__(self, width: int, bias: float = 2.0):
        super().__init__()
        self.from_y = nn.Linear(width, 3 * width, bias=False)
        self.from_x = nn.Linear(width, 2 * width, bias=False)
        self.candidate_x = nn.Linear(width, width, bias=False)
        self.bias = nn.Parameter(torch.full((width,), bias))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y_r, y_z, y_h = self.from_y(y).chunk(3, -1)
        x_r, x_z = self.from_x(x).chunk(2, -1)
        r = torch.sigmoid(y_r + x_r)
        z = torch.sigmoid(y_z + x_z - self.bias)
        return (1 - z) * x + z * torch.tanh(y_h + self.candidate_x(r * x))


class AttentionBlock(nn.Module):
    """h gated with relu(attention(LN(memory and h))), then with relu(feed-forward(LN(h))): new steps
    [N, S, width] attend to the memory [N, M, width] and to each other where `visible` [N, S, M + S]
    allows, with a learned bias per head and age (steps between query and key, 0..M)."""

    def __init__(self, width: int, heads: int, memory: int):
        super().__init__()
        self.heads = heads
        self.norm_attention, self.norm_ff = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.gate_attention, self.gate_ff = GRUGate(width), GRUGate(width)
        self.age_bias = nn.Parameter(torch.zeros(heads, memory + 1))

    def forward(self, h: torch.Tensor, memory: torch.Tensor, visible: torch.Tensor, age: torch.Tensor
                ) -> torch.Tensor:
        N, S, D = h.shape
        K = memory.shape[1] + S
        qkv = self.qkv(self.norm_attention(torch.cat([memory, h], 1)))
        q, k, v = qkv.reshape(N, K, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # [N, heads, K, d]
        bias = self.age_bias[:, age].unsqueeze(0)  # [1, heads, S, K]
        mask = bias.masked_fill(~visible.unsqueeze(1), float("-inf"))  # every step sees itself: no empty row
        attended = F.scaled_dot_product_attention(q[:, :, K - S:], k, v, attn_mask=mask)
        h = self.gate_attention(h, torch.relu(self.out(attended.transpose(1, 2).reshape(N, S, D))))
        return self.gate_ff(h, torch.relu(self.ff(self.norm_ff(h))))


class AttentionCore(nn.Module):
    """Inputs -> linear(width) -> `layers` attention blocks -> LayerNorm; the state {memory
    [N, layers, M, width], memory_valid [N, M]} (oldest step first)."""

    def __init__(self, inputs: int, width: int, memory: int, heads: int, layers: int):
        super().__init__()
        self.memory = memory
        self.embed = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(AttentionBlock(width, heads, memory) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def unroll(self, x: torch.Tensor, state: dict[str, torch.Tensor], episode_start: torch.Tensor):
        T, M = x.shape[0], self.memory
        memory, visible, age = state["memory"], *self._visibility(state["memory_valid"], episode_start)
        h, inputs = self.embed(x).transpose(0, 1), []  # batch-first [N, T, width]
        for layer, block in enumerate(self.blocks):
            inputs.append(h)
            h = block(h, memory[:, layer], visible, age)
        # The memory after step t: each block's inputs at steps t - M + 1 .. t (keys t + 1 .. t + M).
        window = torch.arange(T, device=x.device)[:, None] + 1 + torch.arange(M, device=x.device)
        after = torch.stack([torch.cat([memory[:, layer], h_in], 1)[:, window] for layer, h_in in enumerate(inputs)], 2)
        valid = visible.gather(2, window.expand(len(visible), T, M))
        states = {"memory": after.transpose(0, 1), "memory_valid": valid.transpose(0, 1).to(x.dtype)}
        return self.norm(h).transpose(0, 1), states

    def _visibility(self, memory_valid: torch.Tensor, episode_start: torch.Tensor):
        """Which keys (the memory's M steps, then the unroll's T) each of the T steps sees [N, T, M + T],
        and each key's age from each step [T, M + T], clamped to 0..M."""
        T, M, device = episode_start.shape[0], self.memory, episode_start.device
        episode = torch.cumsum(episode_start.long(), 0).T  # [N, T]: 0 until the unroll's first episode start
        never = torch.full_like(memory_valid, -1, dtype=torch.long)
        key_episode = torch.cat([torch.where(memory_valid > 0, 0, never), episode], 1)  # [N, M + T]
        age = torch.arange(T, device=device)[:, None] - torch.arange(-M, T, device=device)  # [T, M + T]
        in_window = (age >= 0) & (age <= M)
        visible = (episode.unsqueeze(2) == key_episode.unsqueeze(1)) & in_window
        return visible, age.clamp(0, M)

    def step_from(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        no_start = torch.zeros((1, len(x)), dtype=torch.bool, device=x.device)
        return self.unroll(x[None], state, no_start)[0][0]


def check(args: Any) -> None:
    """One line for a core the config cannot build."""
    if args.core not in CORES:
        raise ValueError(f"algo.core must be one of {', '.join(CORES)}, got {args.core!r}")
    if args.core == "attention" and args.lstm % args.attention_heads:
        raise ValueError(f"algo.attention_heads ({args.attention_heads}) must divide the core's width "
                         f"algo.lstm ({args.lstm})")


def make_core(args: Any, inputs: int) -> nn.Module:
    """The core `args.core` names, of width `args.lstm`, on `inputs` features."""
    check(args)
    if args.core == "lstm":
        return LSTMCore(inputs, args.lstm)
    return AttentionCore(inputs, args.lstm, args.attention_memory, args.attention_heads, args.attention_layers)


def initial_state(args: Any, num_envs: int, prefix: str = "") -> dict[str, np.ndarray]:
    """The state of `num_envs` environments before their first step (what an episode start resets to)."""
    zeros = lambda *shape: np.zeros((num_envs,) + shape, np.float32)
    if args.core == "lstm":
        state = {"h": zeros(args.lstm), "c": zeros(args.lstm)}
    else:
        state = {"memory": zeros(args.attention_layers, args.attention_memory, args.lstm),
                 "memory_valid": zeros(args.attention_memory)}
    return {prefix + k: v for k, v in state.items()}


def substate(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of `state` whose names start with prefix, without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
