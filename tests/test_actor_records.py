"""The broker's per-actor record (brokers/actors.py): sequence accounting by incarnation, by hand."""

import pytest

from qrl.brokers.actors import MAX_INCARNATIONS_TRACKED, SEQ_WINDOW, ActorRecord, Duplicate, OutOfWindow


def accept(record: ActorRecord, incarnation: str, seq: int) -> int:
    record.check_seq(incarnation, seq)
    return record.record_seq(incarnation, seq)


def test_gaps_are_jumps_forward_and_a_restart_starts_a_new_sequence():
    a = ActorRecord()
    assert [accept(a, "w1", s) for s in (0, 1, 4)] == [0, 0, 2]  # 2 and 3 were lost on the way
    assert accept(a, "w2", 0) == 0  # a restarted worker: its own sequence from 0
    assert (a.incarnations, a.gaps, a.seq, a.newest) == (2, 2, 0, "w2")
    assert accept(a, "w1", 5) == 0  # the killed worker's last segment, late: placed, but not the shown seq
    assert a.seq == 0 and a.last_seq("w1") == 5


def test_duplicates_and_jumps_past_the_window_are_refused_and_change_nothing():
    a = ActorRecord()
    accept(a, "w", 3)
    with pytest.raises(Duplicate):
        accept(a, "w", 3)
    with pytest.raises(Duplicate):
        accept(a, "w", 1)
    with pytest.raises(OutOfWindow):
        accept(a, "w", 3 + SEQ_WINDOW + 1)
    assert (a.duplicates, a.gaps, a.seq, a.last_seq("w")) == (2, 3, 3, 3)  # a first seq of 3: 0..2 missed
    assert accept(a, "w", 3 + SEQ_WINDOW) == SEQ_WINDOW - 1  # the window's edge is still accepted


def test_a_first_sequence_number_beyond_the_window_counts_no_gap():
    a = ActorRecord()
    assert accept(a, "w", SEQ_WINDOW + 5) == 0


def test_only_the_most_recent_incarnations_are_remembered():
    a = ActorRecord()
    for i in range(MAX_INCARNATIONS_TRACKED + 3):
        accept(a, f"w{i}", 0)
    assert len(a.seqs) == MAX_INCARNATIONS_TRACKED and a.last_seq("w0") is None
    assert a.incarnations == MAX_INCARNATIONS_TRACKED + 3


def test_a_snapshot_round_trip_keeps_counters_and_the_sequence_book():
    a = ActorRecord()
    accept(a, "w1", 0)
    accept(a, "w2", 2)
    a.count(frames=64, policy_version=7)
    b = ActorRecord.from_saved(a.saved())
    assert b.public() == a.public() and b.seqs == a.seqs and b.newest == "w2"
    assert list(b.seqs) == ["w1", "w2"]  # least recently used first, as before
    assert "seqs" not in a.public() and "newest" not in a.public()  # stats never show incarnations
    old = {k: v for k, v in a.saved().items() if k != "incarnations"}  # a snapshot from before the counter
    assert ActorRecord.from_saved(old).incarnations == 2
