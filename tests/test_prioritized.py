"""Prioritized replay: the vectorized segment trees, the table's sampler, importance weights,
priority updates by id, snapshots, the broker's messages, and Ape-X's initial priorities."""

import dataclasses

import numpy as np
import pytest

from qrl.algorithm import Rollout
from qrl.algorithms import apex
from qrl.brokers import snapshot
from qrl.brokers.sumtree import MinTree, SumTree
from qrl.brokers.tables import ReplayTable, SchemaError, TableConfig


def test_trees_match_brute_force_after_batched_updates():
    rng = np.random.default_rng(0)
    cap = 1000
    s, m, ref, written = SumTree(cap), MinTree(cap), np.zeros(cap), np.zeros(cap, bool)
    for _ in range(20):
        idx = rng.integers(0, cap, size=64)
        val = rng.random(64) * 10
        s.update(idx, val)
        m.update(idx, val)
        last = {}
        for i, v in zip(idx, val):  # repeated index: the last write wins
            last[i] = v
        for i, v in last.items():
            ref[i], written[i] = v, True
    assert s.root == pytest.approx(ref.sum())
    assert m.root == pytest.approx(ref[written].min())  # leaves never written do not count
    u = rng.random(5000) * ref.sum()
    expected = np.searchsorted(np.cumsum(ref), u, side="right")
    np.testing.assert_array_equal(s.find_prefix(u), expected)


def prioritized(capacity=8, alpha=1.0):
    return ReplayTable(TableConfig(capacity=capacity, min_size=0, sampler="prioritized", priority_exponent=alpha),
                       seed=1)


def test_sampling_follows_priority_to_the_alpha():
    table = prioritized(alpha=0.5)
    table.insert({"x": np.arange(4, dtype=np.float32)}, priorities=np.array([1.0, 4.0, 9.0, 16.0]))
    counts = np.zeros(4)
    for _ in range(400):
        batch, ids, _ = table.sample(100)
        np.testing.assert_array_equal(batch["x"], ids)  # rows stay whole
        counts += np.bincount(ids, minlength=4)
    expected = np.array([1, 2, 3, 4]) / 10  # sqrt of the priorities, normalized
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.01)


def test_importance_weights_by_hand():
    table = prioritized()
    table.insert({"x": np.arange(4, dtype=np.float32)}, priorities=np.array([1.0, 1.0, 2.0, 4.0]))
    _, ids, w = table.sample(64, beta=0.5)
    # P = p / 8, min P = 1/8: w_i = (P_i / P_min) ** -beta = p_i ** -0.5
    np.testing.assert_allclose(w, np.array([1.0, 1.0, 2 ** -0.5, 0.5])[ids], rtol=1e-6)
    _, ids, w = table.sample(64, beta=0.0)
    assert np.all(w == 1.0)


def test_new_items_get_the_largest_priority_and_updates_skip_overwritten_ids():
    table = prioritized(capacity=4)
    table.insert({"x": np.zeros(2, np.float32)})
    assert table.update_priorities(np.array([0, 1]), np.array([5.0, 0.5])) == 2
    table.insert({"x": np.zeros(1, np.float32)})
    assert table.sum_tree[2] == pytest.approx(5.0)  # the largest seen so far
    table.insert({"x": np.zeros(2, np.float32)})  # ids 3, 4: id 4 overwrites slot 0 (id 0)
    updated = table.update_priorities(np.array([0, 4, 1, 99, -1, 2]), np.array([7.0, 2.0, np.nan, 1.0, 1.0, -3.0]))
    assert updated == 1  # only id 4; id 0 was overwritten, nan, unknown, negative and bad ids are skipped
    assert table.sum_tree[0] == pytest.approx(2.0) and table.sum_tree[1] == pytest.approx(0.5)


def test_bad_initial_priorities_are_a_schema_error():
    table = prioritized()
    with pytest.raises(SchemaError, match="_priority"):
        table.insert({"x": np.zeros(2, np.float32)}, priorities=np.array([1.0, np.inf]))
    with pytest.raises(SchemaError, match="_priority"):
        table.insert({"x": np.zeros(2, np.float32)}, priorities=np.array([1.0]))


def test_priorities_survive_a_snapshot(tmp_path):
    table = prioritized(capacity=6, alpha=0.6)
    table.insert({"x": np.arange(5, dtype=np.float32)}, priorities=np.array([1.0, 2.0, 3.0, 4.0, 8.0]))
    snapshot.save(tmp_path, table, {"run_id": "r"}, None, 0)
    restored = snapshot.load(tmp_path).table
    np.testing.assert_allclose(restored.priority_leaves(), table.priority_leaves())
    assert restored.min_tree.root == pytest.approx(table.min_tree.root)
    assert restored.max_priority == 8.0
    _, ids, w = restored.sample(16, beta=1.0)
    assert ids.max() < 5 and w.max() <= 1.0 + 1e-6


def test_apex_initial_priorities_are_n_step_td_errors_by_hand():
    args = apex.Args(n_step=2, gamma=0.5)
    L, B, T = 4, 1, 2  # T starts, window of T + n_step steps
    rollout = Rollout(obs=np.zeros((L, B, 1), np.float32), actions=np.zeros((L, B), np.int64),
                      rewards=np.array([[1.0], [2.0], [4.0], [8.0]], np.float32),
                      terminated=np.zeros((L, B), bool), truncated=np.zeros((L, B), bool),
                      next_obs=np.zeros((L, B, 1), np.float32),
                      extras={"q_taken": np.array([[1.0], [2.0], [0.0], [0.0]], np.float32),
                              "q_max": np.array([[0.0], [0.0], [10.0], [20.0]], np.float32)})
    rollout.num_steps = T  # the last n_step steps are history after the segment
    priorities = apex.initial_priorities(rollout, args)
    # t=0: 1 + 0.5*2 + 0.25 * maxQ(s_2)=10 -> 4.5, minus Q=1 -> 3.5; t=1: 2 + 0.5*4 + 0.25*20 = 9, minus 2 -> 7
    np.testing.assert_allclose(priorities, np.array([3.5, 7.0]) + 1e-3, rtol=1e-6)
    assert apex.initial_priorities(rollout, dataclasses.replace(args, actor_priorities=False)) is None
    assert apex.sample_options(args, 0)["beta"] == pytest.approx(0.4)
    assert apex.sample_options(args, args.importance_anneal_updates)["beta"] == 1.0
