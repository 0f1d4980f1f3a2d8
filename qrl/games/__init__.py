"""Two-player board games: vectorised rules for search, fixed opponents, gymnasium environments."""

from qrl.games.rules import BoardGame, ConnectFour, TicTacToe, make_game

__all__ = ["BoardGame", "ConnectFour", "TicTacToe", "make_game"]
