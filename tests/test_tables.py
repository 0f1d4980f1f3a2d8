import numpy as np
import pytest

from qrl.brokers.tables import RateLimiter, ReplayTable, SchemaError, TableConfig


def items(start, n):
    return {"obs": np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, 1),
            "action": np.arange(start, start + n, dtype=np.int64)}


def test_insert_wraps_and_keeps_the_newest_items():
    table = ReplayTable(TableConfig(capacity=10, min_size=0))
    table.insert(items(0, 7))
    table.insert(items(7, 6))  # wraps: slots 7, 8, 9, 0, 1, 2
    assert table.size == 10
    np.testing.assert_array_equal(table.storage["action"], [10, 11, 12, 3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(table.ids, table.storage["action"])  # ids count inserts


def test_a_segment_larger_than_the_table_is_refused_and_changes_nothing():
    table = ReplayTable(TableConfig(capacity=4, min_size=0))
    table.insert(items(0, 3))
    with pytest.raises(SchemaError, match="takes 1..4") as err:
        table.insert(items(3, 10))
    assert err.value.reason == "bad_item_count"
    assert table.size == 3 and table.next_id == 3


def test_non_finite_floats_and_wrong_frame_counts_are_refused():
    table = ReplayTable(TableConfig(capacity=10, min_size=0))
    bad = items(0, 2)
    bad["obs"] = bad["obs"].copy()
    bad["obs"][1, 0] = np.nan
    with pytest.raises(SchemaError) as err:
        table.insert(bad)
    assert err.value.reason == "non_finite"
    with pytest.raises(SchemaError) as err:
        table.check(items(0, 2), frames=3)
    assert err.value.reason == "bad_frames"
    assert table.size == 0


def test_sample_returns_stored_items_with_their_ids():
    table = ReplayTable(TableConfig(capacity=100, min_size=0), seed=1)
    table.insert(items(0, 50))
    batch, ids, weights = table.sample(32)
    assert weights is None  # uniform: no importance weights
    assert batch["obs"].shape == (32, 3) and batch["action"].shape == (32,)
    np.testing.assert_array_equal(batch["action"], ids)
    np.testing.assert_array_equal(batch["obs"][:, 0], ids)
    assert ids.max() < 50


def test_schema_is_locked_by_the_first_insert():
    table = ReplayTable(TableConfig(capacity=10, min_size=0))
    table.insert(items(0, 2))
    with pytest.raises(SchemaError, match="fields"):
        table.insert({"obs": np.zeros((2, 3), np.float32)})
    with pytest.raises(SchemaError, match="obs"):
        table.insert({"obs": np.zeros((2, 4), np.float32), "action": np.zeros(2, np.int64)})
    with pytest.raises(SchemaError, match="obs"):
        table.insert({"obs": np.zeros((2, 3), np.float64), "action": np.zeros(2, np.int64)})
    with pytest.raises(SchemaError, match="leading"):
        table.insert({"obs": np.zeros((3, 3), np.float32), "action": np.zeros(2, np.int64)})
    assert table.size == 2


def test_reserved_field_names_are_refused():
    with pytest.raises(SchemaError, match="reserved"):
        ReplayTable(TableConfig(capacity=10)).insert({"_id": np.zeros(2)})


def test_rate_limiter_holds_the_faster_side():
    cfg = TableConfig(capacity=1000, min_size=10, samples_per_insert=2.0, tolerance=8)
    lim = RateLimiter(cfg)
    assert lim.can_insert() and not lim.can_sample(size=0, batch_size=4)
    lim.inserted = 10
    assert not lim.can_sample(size=10, batch_size=4) or lim.can_sample(10, 4)  # at min size
    assert lim.can_sample(size=10, batch_size=8)  # error 0 - 8 >= -8
    lim.sampled = 8
    assert not lim.can_sample(size=10, batch_size=4)  # learner ahead: wait for inserts
    lim.inserted = 20  # 10 new items earn 20 samples: error 12 > tolerance
    assert not lim.can_insert()  # actors ahead: hold them
    assert lim.can_sample(size=20, batch_size=8)


def test_unlimited_ratio_only_waits_for_min_size():
    lim = RateLimiter(TableConfig(capacity=100, min_size=5))
    assert lim.can_insert() and not lim.can_sample(4, 32) and lim.can_sample(5, 32)


def test_config_rejects_unknown_keys_and_deadlocking_ratios():
    with pytest.raises(ValueError, match="unknown table option"):
        TableConfig.from_meta({"capacity": 10, "colour": "red"})
    with pytest.raises(ValueError, match="deadlock"):
        TableConfig(capacity=100, min_size=0, samples_per_insert=4, tolerance=10).validate(batch_size=32)
    with pytest.raises(ValueError, match="sampler"):
        TableConfig.from_meta({"sampler": "magic"})


# -- the on-policy FIFO queue -------------------------------------------------------------------

from qrl.brokers.tables import QueueTable, make_table  # noqa: E402


def queue(capacity=8, lag=None):
    return make_table(TableConfig(capacity=capacity, min_size=0, sampler="fifo", max_policy_lag=lag))


def unrolls(first, n=2, version=0):
    return {"obs": np.arange(first, first + n, dtype=np.float32)[:, None].repeat(3, 1)}


def test_a_queue_serves_each_item_once_oldest_first_and_holds_back_both_sides():
    q = queue(capacity=4)
    assert isinstance(q, QueueTable) and not q.limiter.can_sample(q.size, 1)
    q.insert(unrolls(0), version=0)
    q.insert(unrolls(2), version=0)
    assert not q.limiter.can_insert()  # full: actors wait
    batch, ids, weights = q.sample(3)
    assert batch["obs"][:, 0].tolist() == [0, 1, 2] and ids.tolist() == [0, 1, 2] and weights is None
    assert q.size == 1 and q.limiter.can_insert() and not q.limiter.can_sample(q.size, 2)
    q.insert(unrolls(4), version=0)  # wraps around the ring
    assert q.sample(3)[0]["obs"][:, 0].tolist() == [3, 4, 5] and q.size == 0


def test_stale_items_are_dropped_and_counted_and_never_block_the_queue():
    q = queue(capacity=6, lag=1)
    q.insert(unrolls(0), version=0)
    q.insert(unrolls(2), version=2)
    q.insert(unrolls(4), version=0)  # a slow actor's old unrolls behind fresh ones
    assert q.drop_stale(current_version=2) == 4  # versions 0 are 2 behind: more than the lag of 1
    assert q.dropped_stale == 4 and q.size == 2
    batch, _, _ = q.sample(2)
    assert batch["obs"][:, 0].tolist() == [2, 3] and q.served_lags == [0, 0]


def test_a_fifo_queue_rejects_a_replay_ratio():
    with pytest.raises(ValueError, match="samples_per_insert must be 0"):
        TableConfig(sampler="fifo", samples_per_insert=2.0).validate()


def test_a_queue_reports_which_segments_left_it_served_dropped_or_overflowing():
    q = queue(capacity=6, lag=1)
    store = lambda first, version, source: q.store(unrolls(first), q.check(unrolls(first)), version=version,
                                                   source=source)
    store(0, 0, (0, 0))  # source 0 (an actor incarnation), seq 0
    store(2, 2, (1, 5))
    store(4, 0, (0, 1))
    assert q.take_released() == {}
    q.drop_stale(current_version=2)  # source 0's segments are stale: seq 1 is the newest gone
    assert q.take_released() == {0: 1}
    q.sample(1)  # half of source 1's segment is served: that segment is consumed
    assert q.take_released() == {1: 5} and q.take_released() == {}
    for seq in range(3):  # 1 + 6 items in a queue of 6: the oldest make room, and count as consumed
        store(10 + 2 * seq, 2, (2, seq))
    assert q.dropped_overflow == 1 and q.take_released() == {1: 5}
    q.sample(6)
    assert q.take_released() == {2: 2}


def test_a_replay_table_is_done_with_a_segment_once_stored_and_keeps_its_items():
    """The broker asks every table the same things (no isinstance at its call sites); a replay
    table's answers: a segment is consumed once stored, nothing is stale, no lag to report."""
    t = ReplayTable(TableConfig(capacity=8))
    t.store(items(0, 2), t.check(items(0, 2)), source=(3, 7))
    t.store(items(2, 2), t.check(items(2, 2)), source=(3, 8))
    t.insert(items(4, 2))  # no source: a table used outside the broker
    assert t.take_released() == {3: 8} and t.take_released() == {}
    assert t.drop_stale(current_version=10**6) == 0 and t.size == 6
    t.sample(4)
    assert t.served_lags == [] and t.snapshot_keeps_items
    assert not queue(capacity=6, lag=1).snapshot_keeps_items
