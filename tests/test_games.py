"""Board games (qrl/games): the rules, the environments, the fixed opponents."""

import gymnasium as gym
import numpy as np
import pytest

from qrl import envs  # noqa: F401  (registers qrl/TicTacToe-v0, qrl/ConnectFour-v0)
from qrl.games.env import IllegalMove
from qrl.games.opponents import Minimax, make_opponent
from qrl.games.rules import lines, make_game


def board(game, rows: list[str]) -> np.ndarray:
    """A position from text: X the player to move, O the other, . empty."""
    cells = np.array([list(r) for r in rows])
    return np.stack([cells == "X", cells == "O"]).astype(np.int8)


def test_every_line_of_k_is_found():
    assert len(lines(3, 3, 3)) == 8
    assert len(lines(6, 7, 4)) == 69  # 24 horizontal, 21 vertical, 24 diagonal


def test_tictactoe_win_draw_and_the_next_players_view():
    g = make_game("tictactoe")
    pos = board(g, ["XX.", "OO.", "..."])
    nxt, reward, done = g.play(pos[None], np.array([2]))
    assert reward[0] == 1.0 and done[0]
    assert nxt[0, 1].reshape(-1)[:3].tolist() == [1, 1, 1]  # the winner's stones are now plane 1
    nxt, reward, done = g.play(pos[None], np.array([8]))
    assert reward[0] == 0.0 and not done[0] and nxt[0, 0].sum() == 2  # the opponent (O) moves next
    full = board(g, ["XOX", "XOO", "OX."])
    _, reward, done = g.play(full[None], np.array([8]))
    assert reward[0] == 0.0 and done[0]  # the last cell, no line: a draw


def test_connect_four_stones_fall_and_full_columns_are_illegal():
    g = make_game("connect4")
    pos = board(g, [".......", "X......", "O......", "X......", "O......", "XO....."])
    assert g.legal(pos[None])[0].tolist() == [True] * 7
    nxt, _, _ = g.play(pos[None], np.array([1]))
    assert nxt[0, 1, 4, 1] == 1  # on top of the O in column 1, seen as the opponent's now
    nxt, _, _ = g.play(pos[None], np.array([0]))
    assert not g.legal(nxt)[0, 0] and g.legal(nxt)[0, 1:].all()


@pytest.mark.parametrize("rows, move", [
    ([".......", ".......", ".......", "X......", "X......", "X......"], 0),  # vertical
    ([".......", ".......", ".......", ".......", ".......", "XXX...."], 3),  # horizontal
    ([".......", ".......", ".......", "..XO...", ".XOO...", "XOOO..."], 3),  # diagonal
])
def test_connect_four_wins(rows, move):
    g = make_game("connect4")
    _, reward, done = g.play(board(g, rows)[None], np.array([move]))
    assert reward[0] == 1.0 and done[0]


@pytest.mark.parametrize("name", ["tictactoe", "connect4"])
def test_mirroring_a_board_mirrors_its_moves(name):
    g, rng = make_game(name), np.random.default_rng(0)
    pos = g.initial(32)
    for _ in range(4):
        moves = np.array([rng.choice(np.flatnonzero(m)) for m in g.legal(pos)])
        pos, _, _ = g.play(pos, moves)
    moves = np.array([rng.choice(np.flatnonzero(m)) for m in g.legal(pos)])
    played, _, _ = g.play(pos, moves)
    mirrored, _, _ = g.play(pos[..., ::-1], g.mirrored_actions[moves])
    assert (mirrored == played[..., ::-1]).all()


def test_an_illegal_move_is_refused_and_never_played():
    env = gym.make("qrl/TicTacToe-v0")
    obs, info = env.reset(seed=0)
    obs, *_ , info = env.step(4)
    assert info["action_mask"].tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 1]
    with pytest.raises(IllegalMove, match="move 4 is not legal"):
        env.step(4)
    with pytest.raises(IllegalMove):
        env.step(9)
    after, reward, terminated, _, _ = env.step(0)  # the game goes on from the same position
    assert after.sum() == 2 and reward == 0.0 and not terminated


def test_minimax_is_perfect_a_random_player_never_beats_it():
    g = make_game("tictactoe")
    assert Minimax(g).value(g.initial(1)[0]) == 0.0  # tic-tac-toe is a draw
    env = gym.make("qrl/TicTacToe-v0", opponent="minimax")
    rng, results = np.random.default_rng(1), []
    for episode in range(30):
        _, info = env.reset(seed=episode)
        done = False
        while not done:
            _, reward, done, _, info = env.step(rng.choice(np.flatnonzero(info["action_mask"])))
        results.append(reward)
    assert max(results) <= 0.0 and min(results) == -1.0


def test_minimax_against_itself_always_draws_and_seats_alternate():
    g, rng = make_game("tictactoe"), np.random.default_rng(2)
    env = gym.make("qrl/TicTacToe-v0", opponent="minimax")
    player, firsts = Minimax(g), set()
    for episode in range(10):
        obs, info = env.reset(seed=episode)
        firsts.add(int(obs.sum()))  # 0 stones: the agent moves first; 1: second
        done = False
        while not done:
            obs, reward, done, _, info = env.step(player.move(obs.astype(np.int8), rng))
        assert reward == 0.0
    assert firsts == {0, 1}


def test_rollout_mcts_beats_a_random_player():
    env = gym.make("qrl/TicTacToe-v0", opponent="random")
    mcts, rng, results = make_opponent("mcts:100", make_game("tictactoe")), np.random.default_rng(3), []
    for episode in range(10):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            obs, reward, done, _, _ = env.step(mcts.move(obs.astype(np.int8), rng))
        results.append(reward)
    assert min(results) >= 0.0 and sum(results) >= 7


def test_bad_games_and_opponents_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown game 'chess'"):
        make_game("chess")
    with pytest.raises(ValueError, match="unknown opponent 'perfect'"):
        make_opponent("perfect", make_game("tictactoe"))
    with pytest.raises(ValueError, match="minimax solves games of at most"):
        make_opponent("minimax", make_game("connect4"))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        make_game("tictactoe").check(np.full((1, 2, 3, 3), 2, np.int8))


def test_the_terminal_rendering_shows_both_players():
    env = gym.make("qrl/TicTacToe-v0", render_mode="ansi")
    env.reset(seed=0)
    env.step(0)
    env.step(4)
    assert env.render().splitlines() == ["X..", ".O.", "..."]
