"""Two-player board games (k in a row), with rules that act on batches of positions at once.

A position is canonical: int8 [2, rows, cols], plane 0 the stones of the player to move, plane 1
the opponent's. play() puts the mover's stone, says whether that move won (reward +1 to the
mover) or ended the game, and returns the position as the next mover sees it (planes swapped).
So a position alone is the whole state of the game: the search (qrl/search) plays from any
observation, and a network always sees the board from the side of the player to move.

    tictactoe   3x3, three in a row; an action is a cell (row * 3 + col)
    connect4    6x7, four in a row, stones fall to the lowest empty row; an action is a column

A user's game is any BoardGame subclass, named by entry point ("package.module:MyGame").
"""

from __future__ import annotations

import functools

import numpy as np


def lines(rows: int, cols: int, k: int) -> np.ndarray:
    """Every run of k cells in a row, column or diagonal, as flat cell indices [lines, k]."""
    found = []
    for r in range(rows):
        for c in range(cols):
            for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
                cells = [(r + i * dr, c + i * dc) for i in range(k)]
                if all(0 <= rr < rows and 0 <= cc < cols for rr, cc in cells):
                    found.append([rr * cols + cc for rr, cc in cells])
    return np.array(found, dtype=np.int64)


class BoardGame:
    """k in a row on a rows x cols board; subclasses say where an action puts a stone."""

    name = "board"
    rows = cols = k = 0
    symbols = ("X", "O")  # the first player's stones, the second player's

    def __init__(self):
        self.lines = lines(self.rows, self.cols, self.k)
        self.cells = self.rows * self.cols

    @property
    def num_actions(self) -> int:
        raise NotImplementedError

    @property
    def max_moves(self) -> int:
        return self.cells

    @property
    def shape(self) -> tuple[int, int, int]:
        return (2, self.rows, self.cols)

    def initial(self, n: int) -> np.ndarray:
        return np.zeros((n, *self.shape), dtype=np.int8)

    def legal(self, positions: np.ndarray) -> np.ndarray:
        """bool [B, num_actions]: the moves the player to move may make."""
        raise NotImplementedError

    def cells_of(self, positions: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The flat cell each (legal) action puts its stone on."""
        raise NotImplementedError

    def play(self, positions: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(next positions, reward to the mover [B] float32, game over [B] bool) for legal actions.
        The next positions are the next mover's view; after a game ends they are still the board."""
        n = len(positions)
        boards = positions.reshape(n, 2, self.cells).copy()
        boards[np.arange(n), 0, self.cells_of(positions, actions)] = 1
        won = boards[:, 0][:, self.lines].all(axis=-1).any(axis=-1)
        full = (boards[:, 0] | boards[:, 1]).all(axis=-1)
        return boards[:, ::-1].reshape(positions.shape), won.astype(np.float32), won | full

    @property
    def mirrored_actions(self) -> np.ndarray:
        """The action on the left-right mirrored board that matches each action (a symmetry of
        every k-in-a-row game, for augmenting what a learner sees)."""
        raise NotImplementedError

    def moves_made(self, positions: np.ndarray) -> np.ndarray:
        return positions.reshape(len(positions), -1).sum(axis=1, dtype=np.int64)

    def check(self, positions: np.ndarray) -> None:
        """Refuses an array that is not a batch of this game's boards (shape, cells of 0 or 1), so
        the search never plays from a corrupt observation."""
        if positions.shape[1:] != self.shape:
            raise ValueError(f"{self.name} positions are [B, {', '.join(map(str, self.shape))}], got {positions.shape}")
        if ((positions != 0) & (positions != 1)).any():
            raise ValueError(f"not a {self.name} board: its cells must be 0 or 1")

    def render(self, position: np.ndarray, first_to_move: bool) -> str:
        """The board as text, the first player's stones as symbols[0]."""
        mine, theirs = self.symbols if first_to_move else self.symbols[::-1]
        rows = ["".join(mine if position[0, r, c] else theirs if position[1, r, c] else "."
                        for c in range(self.cols)) for r in range(self.rows)]
        return "\n".join(rows)


class TicTacToe(BoardGame):
    name, rows, cols, k = "tictactoe", 3, 3, 3

    @property
    def num_actions(self) -> int:
        return self.cells

    def legal(self, positions: np.ndarray) -> np.ndarray:
        return (positions.sum(axis=1) == 0).reshape(len(positions), -1)

    def cells_of(self, positions: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return np.asarray(actions, dtype=np.int64)

    @property
    def mirrored_actions(self) -> np.ndarray:
        return np.arange(self.cells).reshape(self.rows, self.cols)[:, ::-1].ravel()


class ConnectFour(BoardGame):
    name, rows, cols, k = "connect4", 6, 7, 4

    @property
    def num_actions(self) -> int:
        return self.cols

    def legal(self, positions: np.ndarray) -> np.ndarray:
        return positions[:, :, 0, :].sum(axis=1) == 0  # the top row of the column is empty

    def cells_of(self, positions: np.ndarray, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.int64)
        column = positions.sum(axis=1)[np.arange(len(positions)), :, actions]  # [B, rows]
        lowest_empty = self.rows - 1 - (column != 0).sum(axis=1)
        return lowest_empty * self.cols + actions

    @property
    def mirrored_actions(self) -> np.ndarray:
        return np.arange(self.cols)[::-1].copy()


GAMES = {"tictactoe": TicTacToe, "connect4": ConnectFour}


@functools.lru_cache(maxsize=None)
def make_game(name: str) -> BoardGame:
    """A game by name (tictactoe, connect4) or entry point ("package.module:MyGame")."""
    if ":" in name:
        from qrl.envs import import_user_module

        module, _, attr = name.partition(":")
        cls = getattr(import_user_module(module), attr, None)
        if not (isinstance(cls, type) and issubclass(cls, BoardGame)):
            raise ValueError(f"game entry point '{name}' is not a qrl.games.BoardGame subclass")
        return cls()
    if name not in GAMES:
        raise ValueError(f"unknown game '{name}'; qrl has {', '.join(GAMES)} (or name a BoardGame as 'module:Class')")
    return GAMES[name]()
