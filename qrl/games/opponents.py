"""Fixed opponents for the board games: the baselines a learned player is measured against.

    random      a uniformly random legal move
    minimax     perfect play (negamax over every position, memoized; ties broken at random);
                for games small enough to solve outright (tic-tac-toe)
    mcts:N      plain UCT with N simulations, each ending in a uniformly random rollout (the
                classic baseline "MCTS with N rollouts"; no network)

An opponent picks a move for the player to move in a canonical position (qrl/games/rules.py).
"""

from __future__ import annotations

import math

import numpy as np

from qrl.games.rules import BoardGame

MINIMAX_MAX_CELLS = 16  # beyond this the memo would not fit: refuse rather than run for hours


class Opponent:
    def move(self, position: np.ndarray, rng: np.random.Generator) -> int:
        raise NotImplementedError


class RandomOpponent(Opponent):
    def __init__(self, game: BoardGame):
        self.game = game

    def move(self, position: np.ndarray, rng: np.random.Generator) -> int:
        return int(rng.choice(np.flatnonzero(self.game.legal(position[None])[0])))


class Minimax(Opponent):
    """Perfect play: every move of the best value, one of them at random."""

    def __init__(self, game: BoardGame):
        if game.cells > MINIMAX_MAX_CELLS:
            raise ValueError(f"minimax solves games of at most {MINIMAX_MAX_CELLS} cells; "
                             f"{game.name} has {game.cells} (use mcts:N)")
        self.game = game
        self.values: dict[bytes, float] = {}

    def action_values(self, position: np.ndarray) -> dict[int, float]:
        """The value of each legal move to the player making it: +1 a forced win, 0 a draw, -1 a loss."""
        actions = np.flatnonzero(self.game.legal(position[None])[0])
        nxt, reward, done = self.game.play(np.repeat(position[None], len(actions), 0), actions)
        return {int(a): float(r) if d else -self.value(p) for a, p, r, d in zip(actions, nxt, reward, done)}

    def value(self, position: np.ndarray) -> float:
        key = position.tobytes()
        if key not in self.values:
            self.values[key] = max(self.action_values(position).values())
        return self.values[key]

    def move(self, position: np.ndarray, rng: np.random.Generator) -> int:
        values = self.action_values(position)
        best = max(values.values())
        return int(rng.choice([a for a, v in values.items() if v == best]))


class RolloutMCTS(Opponent):
    """UCT (Kocsis and Szepesvari 2006) with random rollouts, one position at a time in plain Python."""

    def __init__(self, game: BoardGame, simulations: int, exploration: float = math.sqrt(2)):
        self.game, self.simulations, self.exploration = game, simulations, exploration

    def move(self, position: np.ndarray, rng: np.random.Generator) -> int:
        root = _Node(self.game, position)
        for _ in range(self.simulations):
            self._simulate(root, rng)
        visits = {a: child.visits for a, child in root.children.items()}
        most = max(visits.values())
        return int(rng.choice([a for a, n in visits.items() if n == most]))

    def _simulate(self, root: "_Node", rng: np.random.Generator) -> None:
        node, path = root, [root]
        while not node.terminal and not node.untried and node.children:
            node = max(node.children.values(), key=lambda c: c.ucb(node.visits, self.exploration))
            path.append(node)
        if not node.terminal and node.untried:
            node = node.expand(node.untried.pop(int(rng.integers(len(node.untried)))))
            path.append(node)
        value = node.outcome if node.terminal else self._rollout(node.position, rng)  # to the player to move at node
        for visited in reversed(path):
            visited.visits += 1
            visited.wins -= value  # a node's score is for the player who moved into it
            value = -value

    def _rollout(self, position: np.ndarray, rng: np.random.Generator) -> float:
        sign, position = 1.0, position[None]
        while True:
            move = rng.choice(np.flatnonzero(self.game.legal(position)[0]))
            position, reward, done = self.game.play(position, np.array([move]))
            if done[0]:
                return sign * float(reward[0])  # the mover won (+1 to them) or drew
            sign = -sign


class _Node:
    def __init__(self, game: BoardGame, position: np.ndarray, terminal: bool = False, outcome: float = 0.0):
        self.game, self.position, self.terminal, self.outcome = game, position, terminal, outcome
        self.untried = [] if terminal else [int(a) for a in np.flatnonzero(game.legal(position[None])[0])]
        self.children: dict[int, _Node] = {}
        self.visits, self.wins = 0, 0.0

    def expand(self, action: int) -> "_Node":
        nxt, reward, done = self.game.play(self.position[None], np.array([action]))
        # A finished game's value to the player to move there: they lost if the last move won.
        child = _Node(self.game, nxt[0], bool(done[0]), -float(reward[0]))
        self.children[action] = child
        return child

    def ucb(self, parent_visits: int, exploration: float) -> float:
        return self.wins / self.visits + exploration * math.sqrt(math.log(parent_visits) / self.visits)


def make_opponent(spec: str, game: BoardGame) -> Opponent:
    """'random', 'minimax' or 'mcts:N' for `game`; anything else is a one-line error."""
    if spec == "random":
        return RandomOpponent(game)
    if spec == "minimax":
        return Minimax(game)
    name, _, simulations = spec.partition(":")
    if name == "mcts" and simulations.isdigit() and int(simulations) > 0:
        return RolloutMCTS(game, int(simulations))
    raise ValueError(f"unknown opponent '{spec}': use random, minimax or mcts:N (N simulations)")
