"""The batched PUCT search (qrl/search/mcts.py): selection, backup and root noise by hand on tiny
trees, the same visit counts as the plain reference search, and play that finds the obvious move."""

import math

import numpy as np
import pytest

from qrl.algorithm import Rollout
from qrl.algorithms.alphazero import outcomes
from qrl.games.rules import make_game
from qrl.search.mcts import (Expansion, RulesModel, SearchConfig, Trees, backup, choose_moves, descend,
                             dirichlet_noise, masked_softmax, search)
from qrl.search.reference import reference_search


def uniform(game):
    """An evaluator that knows nothing: equal logits, value 0."""
    return lambda positions: (np.zeros((len(positions), game.num_actions)), np.zeros(len(positions)))


def hashed(game):
    """A fixed, arbitrary evaluator (the same for both searches)."""
    def evaluate(positions):
        h = (positions.reshape(len(positions), -1) * np.arange(1, positions[0].size + 1)).sum(1)
        return np.sin(np.outer(h, np.arange(game.num_actions))), 0.5 * np.cos(h)
    return evaluate


def test_puct_selection_by_hand():
    legal = np.array([[True, True, True, False]])
    priors = np.array([[0.5, 0.3, 0.2, 0.0]])
    trees = Trees(np.zeros((1, 1)), legal, priors, capacity=4)
    trees.visits[0, 0, :3] = [2, 1, 0]
    trees.value_sum[0, 0, :3] = [1.0, 0.8, 0.0]
    c = 1.5
    # Q + c P sqrt(3) / (1 + N): 0.5 + 1.5*0.5*1.732/3 = 0.933; 0.8 + 1.5*0.3*1.732/2 = 1.190; 0 + 1.5*0.2*1.732 = 0.520
    expected = [0.5 + c * 0.5 * math.sqrt(3) / 3, 0.8 + c * 0.3 * math.sqrt(3) / 2, c * 0.2 * math.sqrt(3)]
    assert np.argmax(expected) == 1
    assert trees.select(np.zeros(1, np.int64), SearchConfig(c_puct=c))[0] == 1
    trees.value_sum[0, 0, :2] = [-1.0, -0.8]  # -0.067, -0.410, 0.520: the unvisited move's exploration wins
    assert trees.select(np.zeros(1, np.int64), SearchConfig(c_puct=c))[0] == 2
    legal[0, 2] = False
    trees.legal[0, 0] = legal[0]
    assert trees.select(np.zeros(1, np.int64), SearchConfig(c_puct=c))[0] == 0  # never an illegal move


def test_backup_by_hand_alternates_sign_in_two_player_games():
    trees = Trees(np.zeros((1, 1)), np.ones((1, 2), bool), np.full((1, 2), 0.5), capacity=4)
    trees.children[0, 0, 1], trees.children[0, 1, 0] = 1, 2  # root -1-> node 1 -0-> node 2
    trees.rewards[0, 1, 0] = 1.0  # the move from node 1 won for its mover
    path = [(np.array([0]), np.array([1]), np.array([True])), (np.array([1]), np.array([0]), np.array([True]))]
    backup(trees, path, np.array([0.0]), SearchConfig(two_player=True))
    assert trees.value_sum[0, 1, 0] == 1.0 and trees.value_sum[0, 0, 1] == -1.0  # a win for node 1's mover
    assert trees.visits[0, 1, 0] == 1 and trees.visits[0, 0, 1] == 1
    backup(trees, path, np.array([0.5]), SearchConfig(two_player=False, discount=0.9))
    assert trees.value_sum[0, 1, 0] == pytest.approx(1.0 + 1.0 + 0.9 * 0.5)
    assert trees.value_sum[0, 0, 1] == pytest.approx(-1.0 + 0.9 * (1.0 + 0.9 * 0.5))


def test_root_noise_lies_on_legal_moves_and_sums_to_one():
    rng = np.random.default_rng(0)
    legal = np.array([[True, False, True, True]] * 2000)
    noise = dirichlet_noise(legal, 0.3, rng)
    assert (noise[:, 1] == 0).all() and np.allclose(noise.sum(1), 1.0)
    assert np.allclose(noise.mean(0)[[0, 2, 3]], 1 / 3, atol=0.03)  # Dirichlet(alpha) is uniform on average
    assert (noise.max(1) > 0.9).mean() > 0.2  # and spiky for alpha < 1
    g = make_game("tictactoe")
    roots = g.initial(1)
    legal = g.legal(roots)
    logits = np.log(np.linspace(1, 2, 9))[None]
    fixed = np.eye(9)[[4]]  # all the noise on the centre
    config = SearchConfig(simulations=1, noise_fraction=0.25)
    result = search(RulesModel(g, uniform(g)), roots, legal, logits, config, noise=fixed)
    priors = 0.75 * masked_softmax(logits, legal) + 0.25 * fixed
    assert result.visits[0].argmax() == priors[0].argmax() == 4


@pytest.mark.parametrize("name", ["tictactoe", "connect4"])
@pytest.mark.parametrize("config", [SearchConfig(simulations=48),
                                    SearchConfig(simulations=48, two_player=False, discount=0.9, normalize_q=True)])
def test_the_batched_search_visits_what_the_reference_does(name, config):
    g, rng = make_game(name), np.random.default_rng(1)
    positions = g.initial(12)
    for _ in range(3):
        positions, _, _ = g.play(positions, np.array([rng.choice(np.flatnonzero(m)) for m in g.legal(positions)]))
    model, legal = RulesModel(g, hashed(g)), g.legal(positions)
    logits, _ = hashed(g)(positions)
    result = search(model, positions, legal, logits, config)
    for i in range(len(positions)):
        visits, value = reference_search(model, positions[i], legal[i], logits[i], config)
        assert result.visits[i].tolist() == visits and result.value[i] == pytest.approx(value)
    assert (result.visits.sum(1) == config.simulations).all()


def test_search_takes_a_win_and_blocks_a_loss():
    g = make_game("tictactoe")
    win = np.stack([np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]]), np.array([[0, 0, 0], [1, 1, 0], [0, 0, 0]])])
    block = np.stack([np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]]), np.array([[0, 0, 0], [1, 1, 0], [0, 0, 0]])])
    roots = np.stack([win, block]).astype(np.int8)
    result = search(RulesModel(g, uniform(g)), roots, g.legal(roots), np.zeros((2, 9)), SearchConfig(simulations=200))
    assert result.visits.argmax(1).tolist() == [2, 5]
    assert result.value[0] > 0.9


def test_a_finished_game_is_never_expanded():
    calls = []

    class Model:
        def expand(self, states, actions):
            calls.append(len(states))
            n = len(states)
            return Expansion(states, np.ones(n), np.ones(n, bool), np.ones((n, 2), bool), np.zeros((n, 2)), np.zeros(n))

    result = search(Model(), np.zeros((1, 1)), np.ones((1, 2), bool), np.zeros((1, 2)), SearchConfig(simulations=10))
    assert sum(calls) == 2  # each of the two moves ends the game: expanded once, then backed up from the edge
    assert result.visits.sum() == 10 and result.value[0] == 1.0


def test_descend_stops_at_the_first_new_edge():
    trees = Trees(np.zeros((2, 1)), np.ones((2, 3), bool), np.full((2, 3), 1 / 3), capacity=4)
    path = descend(trees, SearchConfig())
    assert len(path) == 1 and path[0][2].all()


def test_moves_follow_the_visit_counts():
    rng = np.random.default_rng(0)
    visits = np.tile([[10.0, 30.0, 0.0, 60.0]], (4000, 1))
    assert (choose_moves(visits, 0.0, rng) == 3).all()
    counts = np.bincount(choose_moves(visits, 1.0, rng), minlength=4) / 4000
    assert np.allclose(counts, [0.1, 0.3, 0.0, 0.6], atol=0.03)


def test_outcomes_are_the_final_result_to_each_mover():
    # Two envs: env 0's game ends at step 2 with a win for that move's player, then a new game
    # runs to the end of the rollout; env 1's game ends at step 3 in a draw.
    rewards = np.array([[0, 0], [0, 0], [1, 0], [0, 0], [0, 0]], np.float32)
    terminated = np.zeros((5, 2), bool)
    terminated[2, 0] = terminated[3, 1] = True
    root_value = np.full((5, 2), 0.25, np.float32)
    rollout = Rollout(obs=np.zeros((5, 2, 1)), actions=np.zeros((5, 2), np.int64), rewards=rewards,
                      terminated=terminated, truncated=np.zeros((5, 2), bool), next_obs=np.zeros((5, 2, 1)),
                      extras={"root_value": root_value})
    z = outcomes(rollout)
    assert z[:3, 0].tolist() == [1.0, -1.0, 1.0]  # the winner moved at steps 0 and 2
    assert z[3:, 0].tolist() == [-0.25, 0.25]  # unfinished: the search's value at the last step stands in
    assert z[:4, 1].tolist() == [0.0] * 4


def test_muzero_support_round_trips_and_two_hot_keeps_the_mean():
    import torch

    from qrl.algorithms.muzero import from_support, scale, to_support, unscale

    x = torch.tensor([-300.0, -2.5, 0.0, 0.4, 1.0, 17.0, 333.0])
    assert torch.allclose(unscale(scale(x)), x, atol=1e-3)
    dist = to_support(x, 20)
    assert torch.allclose(dist.sum(-1), torch.ones(len(x)))
    bins = torch.arange(-20, 21, dtype=torch.float32)
    assert torch.allclose((dist * bins).sum(-1), scale(x), atol=1e-5)  # two-hot: the mean is the scaled value
    assert torch.allclose(from_support(torch.log(dist.clamp_min(1e-30)), 20), x, rtol=1e-3, atol=1e-3)


def test_muzero_items_by_hand():
    from qrl.algorithms.muzero import Args, make_items

    # One env, 2 segment steps, unroll 2, td_steps 2: L = 2 + 2 + 2 = 6 steps; the episode ends
    # (terminated) at step 2, a new one starts at step 3.
    args = Args(unroll=2, td_steps=2, gamma=0.5)
    L = 6
    rewards = np.array([[1.0], [2.0], [4.0], [8.0], [16.0], [32.0]], np.float32)
    terminated = np.zeros((L, 1), bool)
    terminated[2, 0] = True
    root_value = np.array([[10.0], [20.0], [30.0], [40.0], [50.0], [60.0]], np.float32)
    policy = np.repeat(np.array([[[0.25, 0.75]]], np.float32), L, axis=0)
    rollout = Rollout(obs=np.arange(L, dtype=np.float32).reshape(L, 1, 1), actions=np.arange(L).reshape(L, 1) % 2,
                      rewards=rewards, terminated=terminated, truncated=np.zeros((L, 1), bool),
                      next_obs=np.zeros((L, 1, 1), np.float32), extras={"policy": policy, "root_value": root_value},
                      num_steps=2)
    items = make_items(rollout, args)
    assert items["obs"][:, 0].tolist() == [0.0, 1.0] and items["actions"].tolist() == [[0, 1], [1, 0]]
    # start 0: v0 = 1 + 0.5*2 + 0.25*V(s2) = 2 + 0.25*30; v1 = 2 + 0.5*4 (ends at 2); v2 = 4 (the last step)
    assert items["value"][0].tolist() == pytest.approx([2 + 0.25 * 30, 4.0, 4.0])
    assert items["reward"][0].tolist() == [0.0, 1.0, 2.0] and items["alive"][0].tolist() == [1, 1, 1]
    # start 1: positions 1, 2 and then 3, which is past the end at step 2: absorbing
    assert items["value"][1].tolist() == pytest.approx([4.0, 4.0, 0.0])
    assert items["reward"][1].tolist() == [0.0, 2.0, 4.0] and items["alive"][1].tolist() == [1, 1, 0]
