"""Acting by tree search: the actor core that AlphaZero and MuZero share.

A subclass says what a search starts from and plays in: `roots` (the root states, their legal
moves, the network's prior logits) and `model` (the game's rules or a learned model), its
`search_config`, and how
moves are drawn from the visit counts (`explores`, `temperature`). This class runs the search
for a batch of environments, several actors' at once on a central inference server (each actor's
root noise from its own generator), and keeps the moves made in each episode as its state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qrl.algorithm import ActorCore, RecurrentState, row_slices
from qrl.search.mcts import Model, SearchConfig, SearchResult, choose_moves, dirichlet_noise, search


class SearchCore(ActorCore):
    temperature = 1.0
    """Moves drawn in proportion to N^(1 / temperature) where `explores` says so."""

    def __init__(self, args: Any, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.rng = np.random.default_rng(seed)

    # -- what a subclass gives --------------------------------------------------------------------

    def roots(self, net, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(root states, legal moves [B, A], prior logits [B, A]) for a batch of observations."""
        raise NotImplementedError

    def model(self, net) -> Model:
        raise NotImplementedError

    def search_config(self, training: bool) -> SearchConfig:
        raise NotImplementedError

    def explores(self, moves: np.ndarray) -> np.ndarray:
        """bool [B]: whether the move after `moves` moves of an episode is sampled (else the most visited)."""
        return np.ones(len(moves), bool)

    # -- the ActorCore --------------------------------------------------------------------------

    def initial_state(self, num_envs: int) -> RecurrentState:
        return {"moves": np.zeros(num_envs, np.int64)}

    def search(self, net, obs: np.ndarray, cores: list[SearchCore] | None = None,
               rows: list[slice] | None = None) -> SearchResult:
        """A search from a batch of observations: with root noise when `cores` are given (acting in
        training), each core's Dirichlet sample from its own generator for its `rows`; without
        noise (evaluation) when they are not."""
        states, legal, logits = self.roots(net, obs)
        noise = None if cores is None else np.concatenate(
            [dirichlet_noise(legal[r], core.args.dirichlet_alpha, core.rng) for core, r in zip(cores, rows)])
        return search(self.model(net), states, legal, logits, self.search_config(cores is not None), noise)

    def forward(self, net, obs, state, episode_start):
        return self.forward_many(net, [self], [obs], [state], [episode_start])

    def forward_many(self, net, cores, obs, states, episode_starts):
        """One search for all the cores' environments, each core's root noise from its own generator."""
        moves = np.concatenate([np.where(s, 0, st["moves"]) for s, st in zip(episode_starts, states)])
        result = self.search(net, np.concatenate(obs), cores, row_slices(obs))
        return (result.visits, result.value, moves), {"moves": moves + 1}

    def select(self, net, outputs):
        visits, value, moves = outputs
        sampled = choose_moves(visits, self.temperature, self.rng)
        actions = np.where(self.explores(moves), sampled, visits.argmax(axis=1))
        policy = visits / visits.sum(axis=1, keepdims=True)
        return actions, {"policy": policy.astype(np.float32), "root_value": value.astype(np.float32)}

    def evaluation_outputs(self, net, obs, state, episode_start):
        result = self.search(net, obs)  # no root noise
        return (result.visits, result.value, state["moves"]), state

    def action_values(self, outputs) -> np.ndarray:
        """The share of the root's visits each move got (what evaluation plays the most of)."""
        visits = outputs[0]
        return visits / visits.sum(axis=1, keepdims=True)
