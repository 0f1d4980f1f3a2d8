"""Credit-based flow control (issue 30, part 6; docs/protocol.md, "Flow control: what a client must
do"): a credit is held while the table has no room and granted once the learner has sampled,
unanswered requests keep their place, a restarted actor's grants stop counting, and whole runs
waste at most 5% of what their actors collect, with actors running their policy and with central
inference (before credits: 34% and 90% for the DQN CartPole preset)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qrl.brokers import credits
from qrl.brokers.credits import Credits
from conftest import wait_for
from test_broker import TOKEN, register, segment, stats

ROOT = Path(__file__).resolve().parents[1]
CREDIT = {"run_id": "r1", "actor_id": 0, "incarnation": "x"}


def ask(client, seq: int, **changes):
    """A credit request and how long its answer took."""
    start = time.monotonic()
    reply = client.request("credit", {**CREDIT, "seq": seq, **changes}, wait_s=10)
    return reply, time.monotonic() - start


def test_a_credit_is_held_while_the_table_has_no_room_and_granted_once_the_learner_samples(client, push):
    """8-item segments, one sample per insert, a tolerance of 8: the broker grants until the
    items on their way would exceed what the learner has sampled (plus one segment's lead), then
    holds the request 1 s and answers `until < seq`; after the learner samples, it grants."""
    register(client, table={"capacity": 1000, "sampler": "uniform", "min_size": 0, "samples_per_insert": 1.0,
                            "tolerance": 8.0})
    seq = 0
    while True:
        reply, took = ask(client, seq)
        assert reply.type == "credit"
        if reply.meta["until"] < seq:
            break
        assert took < 0.5, "a grant the table had room for came late"
        push.sock.send_multipart(segment(seq))  # (the credit is there: no need for the fixture's asking)
        seq += 1
        assert seq < 10, "the broker kept granting credits the table had no room for"
    assert 0.9 <= took < 2.0 and reply.meta["until"] == seq - 1  # held for the hold time, then answered
    assert stats(client)["credits"]["waiting"] == 1
    for _ in range(seq):  # the learner samples what came: room again
        assert client.request("sample", {"token": TOKEN, "batch_size": 8}, wait_s=10).type == "batch"
    reply, took = ask(client, seq)
    assert reply.meta["until"] == seq and took < 0.5
    assert stats(client)["rejected"] == {}


def test_a_credit_asked_again_is_answered_at_once_and_covers_the_seqs_before_it(client):
    register(client)
    assert ask(client, 3)[0].meta["until"] == 3
    reply, took = ask(client, 3)  # the reply was lost: asking again costs nothing
    assert reply.meta["until"] == 3 and took < 0.5
    assert ask(client, 1)[0].meta["until"] == 3


def test_credit_requests_of_another_run_or_before_any_run_are_refused(client):
    reply, _ = ask(client, 0)
    assert reply.type == "error" and reply.meta["reason"] == "no_table"
    register(client)
    reply, _ = ask(client, 0, run_id="another")
    assert reply.type == "error" and reply.meta["reason"] == "wrong_run"


def test_a_restored_broker_takes_the_segments_its_predecessor_granted(tmp_path, ctx):
    """Segments collected on a grant of the broker before a restart still count: a restored broker
    takes segments of streams it has granted nothing for RESTORE_GRACE_S (then credits again)."""
    import threading

    import zmq

    from qrl.brokers.server import Broker, BrokerConfig
    from qrl.protocol.transport import Client

    def start():
        b = Broker(BrokerConfig(port=0, snapshot_dir=str(tmp_path)), ctx=zmq.Context())
        thread = threading.Thread(target=b.serve, daemon=True)
        thread.start()
        return b, thread

    first, thread = start()
    client = Client(ctx, first.address(), "test")
    register(client)
    client.close()
    first.stop()
    thread.join(10)
    first.snapshot()
    first.close()
    second, thread = start()
    try:
        client = Client(ctx, second.address(), "test")
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(f"tcp://127.0.0.1:{second.ports['ingest']}")
        push.send_multipart(segment(5))  # granted by the first broker: no credit asked here
        wait_for(lambda: stats(client)["segments"] == 1, 10, f"the segment stored: {stats(client)['rejected']}")
        second.credits.grace_until = 0.0  # the grace is over: credits again
        push.send_multipart(segment(6))
        wait_for(lambda: stats(client)["rejected"].get("no_credit") == 1, 10, "seq 6 refused")
        push.close()
        client.close()
    finally:
        second.stop()
        thread.join(10)
        second.close()


def test_a_waiting_request_keeps_its_place_and_a_dead_one_is_forgotten():
    c, room = Credits(), {"open": False}
    grant = lambda on_the_way, lead: room["open"]  # noqa: E731
    a, b = (0, "a"), (1, "b")
    assert c.ask(a, 0, "peer-a", 1, now=0.0) is None and c.ask(b, 0, "peer-b", 1, now=0.5) is None
    answers = c.answers(grant, 8, now=1.2)  # a's hold ran out: answered, not granted
    assert answers == [("peer-a", 1, -1)]
    c.ask(a, 0, "peer-a2", 2, now=1.3)  # a asks again: still first in line
    room["open"] = True
    c.next_sweep = 0.0
    granted = c.answers(lambda on_the_way, lead: on_the_way < 8, 8, now=1.4)  # room for one segment
    assert granted == [("peer-a2", 2, 0)]
    assert c.waiting[b].identity == "peer-b"
    c.next_sweep = 0.0
    assert c.answers(lambda *_: False, 8, now=1.6) == [("peer-b", 1, -1)]  # b held too long: answered
    c.next_sweep = 0.0
    c.answers(lambda *_: False, 8, now=1.6 + credits.FORGET_S + 0.1)  # b never asked again: forgotten
    assert b not in c.waiting


def test_a_grant_counts_until_its_segment_comes_or_its_actor_restarts():
    c = Credits()
    always = lambda *_: True  # noqa: E731
    c.ask((0, "old"), 0, "p", 1, now=0.0)
    c.ask((1, "x"), 0, "q", 1, now=0.0)
    c.answers(always, 8, now=0.0)
    assert c.items_on_the_way == 16
    c.ask((0, "old"), 1, "p", 2, now=0.1)  # the request for seq 1 overtook segment 0: both on their way
    c.answers(always, 8, now=0.1)
    assert c.items_on_the_way == 24
    c.arrived((0, "old"), 0, now=0.2)
    assert c.items_on_the_way == 16
    c.ask((0, "new"), 0, "p2", 3, now=0.3)  # actor 0 restarted: the old incarnation's grant is gone
    assert c.items_on_the_way == 8
    c.next_sweep = 0.0
    c.answers(lambda *_: False, 8, now=0.3 + credits.MIN_EXPIRE_S + 1)  # actor 1 died: its grant expires
    assert c.items_on_the_way == 0


@pytest.mark.parametrize("central", [False, True], ids=["local", "central"])
def test_a_learner_bound_run_wastes_at_most_5_percent_of_its_frames(tmp_path, central):
    """DQN CartPole with 32 samples per insert is learner-bound on 2 cores: actors used to run
    ahead and a third (local) to nine tenths (central inference) of their frames aged past
    max_policy_lag and were dropped."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "qrl", "run", "--config", str(ROOT / "configs" / "dqn-CartPole-v1.yaml"),
           "--total-steps", "12000", "--target-return", "1e9", "--run-dir", str(run_dir), "--no-progress",
           *(["--inference"] if central else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames"] >= 12000 and summary["stale_fraction"] <= 0.05, summary
