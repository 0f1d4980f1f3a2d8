"""The broker on real ZeroMQ sockets (random loopback ports, every receive timed out)."""

import time

import numpy as np
import pytest
import zmq

from qrl.protocol import wire
from qrl.protocol.transport import send
from conftest import wait_for

TABLE = {"capacity": 100, "sampler": "uniform", "min_size": 4, "samples_per_insert": 0.0, "tolerance": 0.0}
SPEC = {"run_id": "r1", "algo": "dqn", "env": "CartPole-v1", "args": {},
        "run": {"num_envs": 1, "segment_length": 8, "seed": 0}}
SCHEMA = {"fields": {"obs": ["<f4", [4]], "action": ["<i8", []]}, "frames_per_item": 1}
TOKEN = "token-of-the-test-learner"


def register_meta(spec=SPEC, table=TABLE, version=0, schema=SCHEMA, token=TOKEN):
    return {"spec": spec, "table": table, "schema": schema, "weights_version": version, "token": token}


def segment(seq, n=8, actor_id=0, obs_dim=4, returns=()):
    arrays = {"obs": np.full((n, obs_dim), seq, np.float32), "action": np.arange(n, dtype=np.int64)}
    meta = {"run_id": "r1", "actor_id": actor_id, "incarnation": "x", "seq": seq, "policy_version": 0,
            "frames": n, "episode_returns": list(returns), "episode_lengths": [10] * len(returns)}
    return wire.encode("segment", meta, arrays)


def register(client, weights=None, version=0, table=TABLE):
    weights = weights if weights is not None else {"w": np.arange(3, dtype=np.float32)}
    return client.request("register", register_meta(table=table, version=version), weights, wait_s=10)


def stats(client, **query):
    return client.request("get_stats", query, wait_s=10).meta


def test_spec_and_weights_are_not_ready_before_a_learner_registers(client):
    assert client.request("get_spec", wait_s=10).type == "not_ready"
    assert client.request("get_weights", wait_s=10).type == "not_ready"
    reply = register(client)
    assert reply.type == "ok" and set(reply.meta["ports"]) == {"service", "ingest", "weights_in", "weights_out"}
    spec = client.request("get_spec", wait_s=10)
    assert spec.type == "spec" and spec.meta["spec"] == SPEC
    w = client.request("get_weights", wait_s=10)
    assert w.meta["version"] == 0 and w.meta["run_id"] == "r1"
    np.testing.assert_array_equal(w.arrays["w"], [0, 1, 2])


def test_insert_then_sample(client, push):
    register(client)
    for seq in range(3):
        push.send_multipart(segment(seq, returns=[5.0 + seq]))
    wait_for(lambda: stats(client)["items"] == 24, 10, "24 items at the broker")
    batch = client.request("sample", {"token": TOKEN, "batch_size": 16}, wait_s=10)
    assert batch.type == "batch"
    assert batch.arrays["obs"].shape == (16, 4) and batch.arrays["_id"].shape == (16,)
    # every sampled row is one that was inserted: obs rows hold their segment's seq
    np.testing.assert_array_equal(batch.arrays["obs"][:, 0], batch.arrays["_id"] // 8)
    s = stats(client)
    assert s["segments"] == 3 and s["frames"] == 24 and s["episodes"] == 3
    assert s["mean_return_100"] == pytest.approx(6.0) and s["batches"] == 1
    assert s["per_actor"]["0"]["seq"] == 2
    # rates are items per second over the last second: 24 items arrived in this test's first seconds
    wait_for(lambda: stats(client)["insert_rate"] == 0.0, 5, "the insert rate to fall back to 0 when idle")


def test_insert_and_sample_rates(client, push):
    register(client)
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < 1.5:
        push.send_multipart(segment(sent))
        sent += 1
        client.request("sample", {"token": TOKEN, "batch_size": 4}, wait_s=10)
        time.sleep(0.01)
    s = stats(client)
    assert 0 < s["insert_rate"] <= 8 * sent / 1.0 and 0 < s["sample_rate"] <= 4 * sent / 1.0


def test_sample_waits_for_min_size(client, push):
    register(client)
    send(client.sock, "sample", {"token": TOKEN, "batch_size": 2, "req": 99})
    assert client.sock.poll(300) == 0, "a batch was served below min_size"
    push.send_multipart(segment(0, n=4))
    assert client.sock.poll(5000), "no batch after min_size was reached"
    reply = wire.decode(client.sock.recv_multipart())
    assert reply.type == "batch" and reply.meta["req"] == 99


def test_schema_mismatch_and_garbage_are_rejected_and_counted(client, push):
    register(client)
    push.send_multipart(segment(0))
    push.send_multipart(segment(1, obs_dim=5))  # schema mismatch
    push.send_multipart([b"garbage"])
    push.send_multipart(wire.encode("stats", {}))  # valid message, wrong socket
    push.send_multipart(segment(2))
    wait_for(lambda: stats(client)["items"] == 16, 10, "the two good segments")
    rejected = stats(client)["rejected"]
    assert rejected == {"schema_mismatch": 1, "bad_header": 1, "unexpected_type": 1}


def test_sequence_gaps_duplicates_and_restarts_are_counted(client, push):
    register(client)

    def send(seq, incarnation):
        frames = segment(seq)
        header = wire.decode(frames).meta
        push.send_multipart(wire.encode("segment", {**header, "incarnation": incarnation},
                                        wire.decode(frames).arrays))

    for seq in (0, 1, 3, 3, 2, 4):  # 2 skipped (a gap), then 3 again and 2 late (duplicates)
        send(seq, "first")
    for seq in (0, 1):  # the worker restarted: a new incarnation starts again at 0
        send(seq, "second")
    send(5, "first")  # the killed worker's last segment, arriving after its successor's first
    send(2, "second")
    wait_for(lambda: stats(client)["segments"] == 8, 10, "eight accepted segments")
    s = stats(client)
    assert (s["gaps"], s["duplicates"], s["rejected"]) == (1, 2, {"duplicate": 2})
    a = s["per_actor"]["0"]
    assert (a["incarnations"], a["seq"], a["gaps"], a["duplicates"]) == (2, 2, 1, 2)
    assert "'second'" not in repr(s) and "'first'" not in repr(s), "stats must not hand out incarnations"
    flushed = {inc: client.request("get_stats", {"actor": 0, "incarnation": inc}, wait_s=10).meta["flushed_seq"]
               for inc in ("first", "second", "third")}
    assert flushed == {"first": 5, "second": 2, "third": -1}  # asked by whoever knows the incarnation


def test_bad_requests_get_an_error_reply(client):
    assert client.request("sample", {"token": TOKEN, "batch_size": 4}, wait_s=10).type == "error"  # no table yet
    register(client)
    assert client.request("sample", {"token": TOKEN, "batch_size": "lots"}, wait_s=10).type == "error"
    reply = client.request("register", register_meta(table={"colour": 1}), wait_s=10)
    assert reply.type == "error" and "colour" in reply.meta["detail"]


def test_published_weights_reach_a_late_subscriber(ctx, client, broker):
    register(client)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(f"tcp://127.0.0.1:{broker.ports['weights_in']}")
    # PUB drops messages until the broker's subscription has arrived: publish until it shows
    deadline = time.monotonic() + 10
    while client.request("get_weights", wait_s=10).meta["version"] != 5:
        assert time.monotonic() < deadline, "published weights never reached the broker"
        send(pub, "weights", {"version": 5, "run_id": "r1", "token": TOKEN}, {"w": np.full(3, 5, np.float32)})
        time.sleep(0.05)
    # stale: ignored
    send(pub, "weights", {"version": 4, "run_id": "r1", "token": TOKEN}, {"w": np.full(3, 4, np.float32)})

    sub = ctx.socket(zmq.SUB)  # joins after the publish: gets the cached weights at once
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{broker.ports['weights_out']}")
    assert sub.poll(5000), "late subscriber got no weights"
    msg = wire.decode(sub.recv_multipart())
    assert msg.type == "weights" and msg.meta["version"] == 5
    np.testing.assert_array_equal(msg.arrays["w"], [5, 5, 5])
    pub.close()
    sub.close()


def test_rate_limiter_holds_samples_until_enough_inserts(client, push):
    table = {**TABLE, "min_size": 8, "samples_per_insert": 1.0, "tolerance": 8.0}
    register(client, table=table)
    push.send_multipart(segment(0, n=16))  # 8 items past min_size: 8 samples of credit
    wait_for(lambda: stats(client)["items"] == 16, 10, "first segment")
    served = 0
    for _ in range(4):
        send(client.sock, "sample", {"token": TOKEN, "batch_size": 8, "req": 1000 + _})
    while client.sock.poll(500):
        client.sock.recv_multipart()
        served += 1
    assert served == 2  # credit 8 + tolerance 8 = 16 items = 2 batches; the rest wait
    push.send_multipart(segment(1, n=16))
    while client.sock.poll(2000):
        client.sock.recv_multipart()
        served += 1
        if served == 4:
            break
    assert served == 4


def test_claimed_actor_id_blocks_never_overlap_known_or_earlier_ones(client, push):
    register(client)
    push.send_multipart(segment(0, actor_id=5))
    wait_for(lambda: stats(client)["segments"] == 1, 10, "a segment from actor 5")
    first = client.request("claim_ids", {"n": 4}, wait_s=10)
    second = client.request("claim_ids", {"n": 2}, wait_s=10)
    assert (first.type, first.meta["first_id"], second.meta["first_id"]) == ("ok", 6, 10)
    bad = client.request("claim_ids", {"n": 0}, wait_s=10)
    assert bad.type == "error" and "claim_ids.n: must be an integer in [1, 4096]" in bad.meta["detail"]


def test_prioritized_tables_return_weights_take_priorities_and_initial_priorities(client, push):
    table = {**TABLE, "sampler": "prioritized", "priority_exponent": 1.0}
    register(client, table=table)
    frames = segment(0)
    msg = wire.decode(frames)
    priorities = np.arange(1, 9, dtype=np.float64)
    push.send_multipart(wire.encode("segment", msg.meta, {**msg.arrays, "_priority": priorities}))
    wait_for(lambda: stats(client)["items"] == 8, 10, "8 items")
    batch = client.request("sample", {"token": TOKEN, "batch_size": 256, "beta": 1.0}, wait_s=10)
    ids, w = batch.arrays["_id"], batch.arrays["_weight"]
    assert "_priority" not in batch.arrays and set(ids) <= set(range(8))
    np.testing.assert_allclose(w, 1.0 / (ids + 1), rtol=1e-6)  # P ~ id + 1; w = (P / P_min)^-1
    reply = client.request("update_priorities", {"token": TOKEN},
                           {"ids": np.array([0, 1, 50]), "priorities": np.array([100.0, 1, 1])}, wait_s=10)
    assert reply.type == "ok" and reply.meta["updated"] == 2  # id 50 does not exist
    s = stats(client)
    assert (s["priority_updates"], s["priority_updates_skipped"]) == (2, 1)
    ids = client.request("sample", {"token": TOKEN, "batch_size": 1000}, wait_s=10).arrays["_id"]
    assert np.mean(ids == 0) > 0.6  # 100 / (100 + 1 + 3 + ... + 8) = 0.72
    bad = client.request("sample", {"token": TOKEN, "batch_size": 8, "beta": 2}, wait_s=10)
    assert bad.type == "error" and "beta" in bad.meta["detail"]
    bad = client.request("update_priorities", {"token": TOKEN}, {"ids": np.array([0, 1])}, wait_s=10)
    assert bad.type == "error"


def test_batches_name_the_segments_the_broker_is_done_with(ctx, client, push, broker):
    """`consumed` in each batch: per incarnation, the newest seq that left a queue (served, or
    dropped as stale), so synchronous actors know when the learner is done with their segments;
    the learner's weights carry it to the actors, and the broker forwards it (not the token)."""
    fifo = {"capacity": 32, "sampler": "fifo", "min_size": 0, "samples_per_insert": 0.0, "max_policy_lag": 1}
    register(client, table=fifo)
    for seq in range(3):
        push.send_multipart(segment(seq, n=8))
    wait_for(lambda: stats(client)["items"] == 24, 10, "three segments queued")
    reply = client.request("sample", {"token": TOKEN, "batch_size": 8}, wait_s=5)
    assert reply.type == "batch" and reply.meta["consumed"] == {"x": 0}
    reply = client.request("sample", {"token": TOKEN, "batch_size": 16}, wait_s=5)
    assert reply.meta["consumed"] == {"x": 2}

    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(f"tcp://127.0.0.1:{broker.ports['weights_in']}")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{broker.ports['weights_out']}")
    deadline = time.monotonic() + 10
    while client.request("get_weights", wait_s=10).meta["version"] != 3:  # PUB drops until subscribed
        assert time.monotonic() < deadline, "published weights never reached the broker"
        send(pub, "weights", {"version": 3, "run_id": "r1", "token": TOKEN, "consumed": {"x": 2}},
             {"w": np.full(3, 3, np.float32)})
        time.sleep(0.05)
    forwarded = None
    while sub.poll(2000):
        msg = wire.decode(sub.recv_multipart())
        if msg.meta["version"] == 3:
            forwarded = msg.meta
            break
    assert forwarded == {"version": 3, "run_id": "r1", "consumed": {"x": 2}}

    # Stale segments (made 3 versions ago, the bound is 1) are dropped on arrival: consumed too.
    push.send_multipart(segment(3, n=8))
    push.send_multipart(wire.encode("segment", {
        "run_id": "r1", "actor_id": 0, "incarnation": "x", "seq": 4, "policy_version": 3, "frames": 8,
        "episode_returns": [], "episode_lengths": []}, {"obs": np.zeros((8, 4), np.float32),
                                                         "action": np.zeros(8, np.int64)}))
    wait_for(lambda: stats(client)["items"] == 32, 10, "the fresh segment queued")
    s = stats(client)
    assert s["dropped_stale_frames"] == 8 and s["frames_dropped"] == 8 and s["frames_consumed"] == 24
    reply = client.request("sample", {"token": TOKEN, "batch_size": 8}, wait_s=5)
    assert reply.meta["consumed"] == {"x": 4} and reply.arrays["obs"].max() == 0
    pub.close()
    sub.close()


# -- the demonstration table (run.demos) -------------------------------------------------------------

DEMO_SCHEMA = {"fields": {"obs": ["<f4", [4]], "action": ["<i8", []]}, "frames_per_item": 1}


def demo_part(client, offset, n, total, schema=DEMO_SCHEMA, obs_dim=4, token=TOKEN):
    arrays = {"obs": (np.full((n, obs_dim), -1.0) - np.arange(offset, offset + n)[:, None]).astype(np.float32),
              "action": np.arange(offset, offset + n, dtype=np.int64)}
    meta = {"token": token, "offset": offset, "total": total, **({"schema": schema} if offset == 0 else {})}
    return client.request("demos", meta, arrays, wait_s=10)


def test_demonstrations_arrive_in_parts_and_come_beside_the_agents_items_in_one_batch(client, push):
    register(client)
    early = client.request("sample", {"token": TOKEN, "batch_size": 4, "demo_batch": 2}, wait_s=10)
    assert early.type == "error" and early.meta["reason"] == "no_demos"
    assert demo_part(client, 0, 6, 10).meta["size"] == 6
    assert demo_part(client, 6, 4, 10).meta["size"] == 10
    assert demo_part(client, 6, 4, 10).meta["size"] == 10  # a part sent again is not stored twice
    for seq in range(2):
        push.send_multipart(segment(seq))
    wait_for(lambda: stats(client)["items"] == 16, 10, "16 items at the broker")
    batch = client.request("sample", {"token": TOKEN, "batch_size": 8, "demo_batch": 5}, wait_s=10)
    assert batch.type == "batch"
    assert set(batch.arrays) == {"obs", "action", "_id", "demo.obs", "demo.action"}
    assert batch.arrays["obs"].shape == (8, 4) and batch.arrays["demo.obs"].shape == (5, 4)
    # demonstration rows are demonstration items: obs -1 - i for item i, action i
    np.testing.assert_array_equal(batch.arrays["demo.obs"][:, 0], -1.0 - batch.arrays["demo.action"])
    assert (batch.arrays["obs"] >= 0).all()  # and agent rows agent items
    alone = client.request("sample", {"token": TOKEN, "batch_size": 0, "demo_batch": 3}, wait_s=10)
    assert alone.type == "batch" and set(alone.arrays) == {"demo.obs", "demo.action"}
    assert stats(client)["items"] == 16  # demonstrations are not the agent's items


def test_bad_demonstrations_are_refused_in_one_line_and_change_nothing(client):
    register(client)
    assert demo_part(client, 0, 4, 10).type == "ok"
    gap = demo_part(client, 6, 2, 10)
    assert gap.type == "error" and gap.meta["reason"] == "bad_demos"
    assert demo_part(client, 4, 6, 10).meta["size"] == 10  # the gap changed nothing: the next part still fits
    no_schema = client.request("demos", {"token": TOKEN, "offset": 0, "total": 3},
                               {"obs": np.zeros((3, 4), np.float32), "action": np.zeros(3, np.int64)}, wait_s=10)
    assert no_schema.type == "error" and no_schema.meta["reason"] == "bad_demos"
    wrong = demo_part(client, 0, 3, 3, obs_dim=5)
    assert wrong.type == "error" and wrong.meta["reason"] == "schema_mismatch" and "\n" not in wrong.meta["detail"]
    too_many = demo_part(client, 0, 4, 3)
    assert too_many.type == "error"
    nan = client.request("demos", {"token": TOKEN, "offset": 0, "total": 2, "schema": DEMO_SCHEMA},
                         {"obs": np.full((2, 4), np.nan, np.float32), "action": np.zeros(2, np.int64)}, wait_s=10)
    assert nan.type == "error" and nan.meta["reason"] == "non_finite"
    stranger = demo_part(client, 0, 2, 2, token="not-the-run-token")
    assert stranger.type == "error" and stranger.meta["reason"] == "not_holder"
    empty = client.request("sample", {"token": TOKEN, "batch_size": 0}, wait_s=10)
    assert empty.type == "error" and empty.meta["reason"] == "bad_sample"
    whole = client.request("sample", {"token": TOKEN, "batch_size": 0, "demo_batch": 10}, wait_s=10)
    assert whole.type == "batch" and (whole.arrays["demo.obs"][:, 0] == -1.0 - whole.arrays["demo.action"]).all()
    huge = {**DEMO_SCHEMA, "fields": {"obs": ["<f4", [1 << 20]], "action": ["<i8", []]}}
    over = client.request("demos", {"token": TOKEN, "offset": 0, "total": 1 << 30, "schema": huge},
                          {"obs": np.zeros((1, 1 << 20), np.float32), "action": np.zeros(1, np.int64)}, wait_s=10)
    assert over.type == "error" and "max_table_bytes" in over.meta["detail"]
