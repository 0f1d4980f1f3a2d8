"""AlphaZero: self-play guided by tree search, for two-player board games (qrl/games).

Each actor plays both sides of its games (qrl/TicTacToe-v0, qrl/ConnectFour-v0 without an
opponent). For every move it runs a PUCT search (qrl/search/mcts.py) from the position, the
game's own rules as the model and the network's priors and values at the leaves, one network call
per simulation for all of the actor's games at once (on a central inference server, for all of
its actors' games). Dirichlet noise is mixed into the root's priors; the first
`temperature_moves` moves of a game are sampled in proportion to the root's visit counts, the rest
are the most visited. Evaluation searches without noise and plays the most visited move.

An item is (position, the root's visit distribution, the game's outcome to the player to move):
the outcome is known when the game ends, so the items of a segment wait for up to a whole game's
moves after it (History.after = the game's longest). The learner minimizes the cross-entropy to
the visit distribution plus the squared error of the value (tanh), with L2 weight decay, on
batches from a uniform replay of recent games, each board mirrored left-right at random.
References: Silver et al. 2017 (AlphaGo Zero), 2018 (AlphaZero).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from qrl import ops
from qrl.algorithm import Agent, Batch, History, LearnerBase, Rollout, Update, replay_table
from qrl.brokers.tables import TableConfig
from qrl.games.rules import BoardGame, make_game
from qrl.networks import ResidualBlock, on_device, to_numpy
from qrl.search.acting import SearchCore
from qrl.search.mcts import RulesModel, SearchConfig


@dataclass(frozen=True)
class Args:
    game: str = "tictactoe"
    """The rules the search plays by: tictactoe, connect4, or a BoardGame entry point 'module:Class'
    (the environment must be the same game)."""
    channels: int = 64
    blocks: int = 2
    """Residual blocks of 3x3 convolutions in the network's trunk."""
    hidden: int = 64
    """Width of the policy and value heads' hidden layer."""
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    buffer_size: int = 20_000
    """Positions in the replay (the most recent games)."""
    learning_starts: int = 500
    samples_per_insert: float = 4.0
    """Times each position is sampled, on average, before it leaves the replay (the broker's rate limit)."""
    simulations: int = 50
    c_puct: float = 1.25
    dirichlet_alpha: float = 0.3
    """Root noise concentration; about 10 / (legal moves of a typical position) (AlphaZero's rule)."""
    noise_fraction: float = 0.25
    temperature_moves: int = 4
    """Moves of each game sampled from the visit counts; later moves are the most visited."""
    value_coef: float = 1.0
    max_grad_norm: float = 0.0
    mirror: bool = True
    """Mirror each training board left-right with probability 1/2 (both games are symmetric so)."""


# -- network ----------------------------------------------------------------------------------

class PolicyValueNet(nn.Module):
    """A residual convolutional trunk on the board planes, a policy head (logits over moves) and a
    value head (tanh: the expected outcome to the player to move)."""

    def __init__(self, board: tuple[int, int, int], num_actions: int, args: Args):
        super().__init__()
        planes, rows, cols = board
        self.stem = nn.Conv2d(planes, args.channels, 3, padding=1)
        self.trunk = nn.Sequential(*[ResidualBlock(args.channels) for _ in range(args.blocks)], nn.ReLU())
        flat = args.channels * rows * cols
        head = lambda outputs: nn.Sequential(nn.Flatten(), nn.Linear(flat, args.hidden), nn.ReLU(),
                                             nn.Linear(args.hidden, outputs))
        self.policy, self.value = head(num_actions), head(1)

    def forward(self, boards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trunk(self.stem(boards))
        return self.policy(x), torch.tanh(self.value(x)).squeeze(-1)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> PolicyValueNet:
    game = make_game(args.game)
    if tuple(obs_space.shape) != game.shape or int(action_space.n) != game.num_actions:
        raise ValueError(f"algo.game={args.game} plays on {game.shape} boards with {game.num_actions} moves; the "
                         f"environment has observations {tuple(obs_space.shape)} and {action_space.n} actions")
    return PolicyValueNet(game.shape, game.num_actions, args)


def evaluator(net: PolicyValueNet):
    """positions -> (prior logits, values) as numpy, one network call."""
    def evaluate(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            logits, values = net(on_device(net, positions.astype(np.float32)))
        return to_numpy(logits).astype(np.float64), to_numpy(values).astype(np.float64)
    return evaluate


# -- acting -----------------------------------------------------------------------------------

class BoardSearchCore(SearchCore):
    """Search with the game's own rules; the first temperature_moves moves of a game are sampled."""

    def __init__(self, args: Args, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.game: BoardGame = make_game(args.game)

    def positions(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The boards of a batch of observations and their legal moves."""
        positions = np.rint(obs).astype(np.int8)
        self.game.check(positions)
        legal = self.game.legal(positions)
        # A board with no legal move (a full one, or a made-up one such as the schema probe's) lets
        # the search try every move rather than divide by zero; the environment refuses the move.
        return positions, legal | ~legal.any(axis=1, keepdims=True)

    def roots(self, net, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        positions, legal = self.positions(obs)
        logits, _ = evaluator(net)(positions)
        return positions, legal, logits

    def model(self, net) -> RulesModel:
        return RulesModel(self.game, evaluator(net))

    def search_config(self, training: bool) -> SearchConfig:
        return SearchConfig.of(self.args, training, two_player=True)

    def explores(self, moves: np.ndarray) -> np.ndarray:
        return moves < self.args.temperature_moves


def make_items(rollout: Rollout, args: Args) -> dict[str, np.ndarray]:
    """(position, visit distribution, outcome to the player to move) for the segment's steps."""
    T = rollout.num_steps
    flat = lambda x: x[:T].reshape((-1,) + x.shape[2:])
    return {"obs": flat(rollout.obs).astype(np.float32), "policy": flat(rollout.extras["policy"]),
            "value": flat(outcomes(rollout)).astype(np.float32)}


def outcomes(rollout: Rollout) -> np.ndarray:
    """[L, B] each step's final outcome to the player who moved: the reward of the move that ended
    the game, negated at every move between (the players alternate). Where no end lies within
    the rollout (a truncated game, the end of the history) the search's root value stands in."""
    rewards, root_value = rollout.rewards, rollout.extras["root_value"]
    out = np.zeros(rewards.shape, np.float64)
    following = np.zeros(rewards.shape[1])  # the outcome to the player to move after step t
    for t in range(len(rewards) - 1, -1, -1):
        unknown = rollout.truncated[t] | (t == len(rewards) - 1)
        following = np.where(rollout.terminated[t], rewards[t],
                             np.where(unknown, root_value[t], rewards[t] - following))
        out[t] = following
    return out


def history(args: Args) -> History:
    return History(after=make_game(args.game).max_moves)


def table_config(args: Args) -> TableConfig:
    return replay_table(args, args.samples_per_insert)


# -- learner ----------------------------------------------------------------------------------

class Learner(LearnerBase):
    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.optimizer = ops.adam(list(self.net.parameters()), lr=args.lr, weight_decay=args.weight_decay)
        self.mirrored = torch.as_tensor(make_game(args.game).mirrored_actions, device=device)
        self.generator = torch.Generator(device=device).manual_seed(0)

    def mirror(self, boards: torch.Tensor, policy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Half of the batch, chosen at random, mirrored left-right (boards and visit distributions)."""
        flip = torch.rand(len(boards), generator=self.generator, device=boards.device) < 0.5
        boards = torch.where(flip[:, None, None, None], boards.flip(-1), boards)
        return boards, torch.where(flip[:, None], policy[:, self.mirrored], policy)

    def update(self, batch: Batch) -> Update:
        a = self.args
        boards, policy = batch["obs"], batch["policy"]
        if a.mirror:
            boards, policy = self.mirror(boards, policy)
        logits, value = self.net(boards)
        policy_loss = -(policy * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        value_loss = F.mse_loss(value, batch["value"])
        loss = policy_loss + a.value_coef * value_loss
        self.minimize(loss, a.max_grad_norm)
        entropy = -(policy * torch.log(policy.clamp_min(1e-12))).sum(-1).mean()
        return Update({"loss": loss.item(), "policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                       "target_entropy": entropy.item()})


AGENT = Agent(name="alphazero", Args=Args, make_policy=make_policy, make_core=BoardSearchCore, make_items=make_items,
              Learner=Learner, table_config=table_config, history=history,
              run_defaults={"publish_every": 10, "segment_length": 8})
