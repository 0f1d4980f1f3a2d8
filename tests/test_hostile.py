"""Well-formed messages that are wrong: from a buggy, stale, foreign-written or hostile client.

Each case once stopped or poisoned a run (issue 14). Each is sent on real sockets to a broker
served by a thread; afterwards the broker must still serve, the message must be rejected with
its reason and counted, never as an internal error, and nothing the real run holds may change.
"""

import math
import time

import msgpack
import numpy as np
import pytest
import zmq

from qrl.protocol import messages, wire
from qrl.brokers import server
from qrl.protocol.transport import Client, send
from conftest import CreditedPush, wait_for
from test_broker import SPEC, TABLE, TOKEN, register_meta, segment, stats

NEST = 1000  # a list nested this deep once raised RecursionError inside the broker


def register(client, table=TABLE, **meta):
    reply = client.request("register", {**register_meta(table=table), **meta},
                           {"w": np.arange(3, dtype=np.float32)}, wait_s=10)
    return reply


def raw(msg_type="segment", meta=None, arrays=None, nested: dict | None = None):
    """Frames of a message whose header may hold what wire.encode would never write: ``nested``
    maps a meta key to a list nested NEST deep (msgpack's packer refuses that depth itself)."""
    frames = wire.encode("segment", meta or {}, arrays)
    header = msgpack.unpackb(frames[0], raw=False)
    header["t"] = msg_type
    packed = msgpack.packb(header, use_bin_type=True)
    for key in nested or {}:
        header["m"][key] = "\x00NEST"
        packed = msgpack.packb(header, use_bin_type=True).replace(msgpack.packb("\x00NEST"),
                                                                  b"\x91" * NEST + b"\xc0")
    return [packed, *frames[1:]]


def good_segment_meta(seq=0, **changes):
    return {**wire.decode(segment(seq)).meta, **changes}


def arrays_of(seq=0):
    return wire.decode(segment(seq)).arrays


def assert_still_serving(client, push, seq):
    """The broker answers, and a good segment still gets in."""
    before = stats(client)["segments"]
    push.send_multipart(segment(seq))
    wait_for(lambda: stats(client)["segments"] == before + 1, 10, "a good segment after the bad message")
    assert "internal_error" not in stats(client)["rejected"]


# -- single messages that used to kill the broker ------------------------------------------------

def _nested_header(key):
    return raw(meta=good_segment_meta(), arrays=arrays_of(), nested={key: None})


KILLERS = {
    # name: (socket, frames, reason it is counted under)
    "a list as message type on ingest": ("ingest", lambda: [msgpack.packb({"v": wire.PROTOCOL_VERSION, "t": [], "m": {},
                                                                            "a": []}, use_bin_type=True)], "bad_type"),
    "a list as an array's dtype": ("ingest", lambda: [msgpack.packb(
        {"v": wire.PROTOCOL_VERSION, "t": "segment", "m": {}, "a": [["x", ["<f4"], [1]]]}, use_bin_type=True),
        b"\0" * 4], "bad_dtype"),
    "episode_lengths [inf]": ("ingest", lambda: wire.encode("segment", good_segment_meta(
        episode_returns=[1.0], episode_lengths=[math.inf]), arrays_of()), "bad_meta"),
    "seq 2^64-1": ("ingest", lambda: wire.encode("segment", good_segment_meta(seq=2**64 - 1), arrays_of()), "bad_meta"),
    "actor_id 2^64-1": ("ingest", lambda: wire.encode("segment", good_segment_meta(actor_id=2**64 - 1), arrays_of()),
                        "bad_meta"),
    "policy_version 2^64-1": ("ingest", lambda: wire.encode("segment", good_segment_meta(policy_version=2**64 - 1),
                                                            arrays_of()), "bad_meta"),
    "incarnation nested 1000 deep": ("ingest", lambda: _nested_header("incarnation"), "bad_meta"),
}


@pytest.mark.parametrize("case", sorted(KILLERS))
@pytest.mark.parametrize("sampler", ["uniform", "fifo"])
def test_single_segments_that_killed_the_broker_are_rejected(client, push, case, sampler):
    table = {**TABLE, "sampler": sampler, "min_size": 0} if sampler == "fifo" else TABLE
    assert register(client, table=table).type == "ok"
    where, frames, reason = KILLERS[case]
    push.send_multipart(frames())
    wait_for(lambda: stats(client)["rejected"].get(reason) == 1, 10, f"{case} rejected as {reason}")
    assert_still_serving(client, push, seq=0)


def reg(**changes):
    return {**register_meta(**changes), "req": 7}


REQUEST_KILLERS = {
    "a list as request type": (lambda: [msgpack.packb({"v": wire.PROTOCOL_VERSION, "t": [], "m": {}, "a": []},
                                                      use_bin_type=True)], "bad_type", False),
    "flush with an incarnation nested 1000 deep": (
        lambda: raw("flush", {"req": 7, "actor_id": 0, "last_seq": 1}, nested={"incarnation": None}), "bad_meta", True),
    "sample with batch_size nested 1000 deep": (lambda: raw("sample", {"req": 7}, nested={"batch_size": None}),
                                                "bad_meta", True),
    "sample with batch_size true": (lambda: wire.encode("sample", {"req": 7, "batch_size": True}), "bad_meta", True),
    "register with capacity 10^15": (lambda: wire.encode("register", reg(
        spec={**SPEC, "run_id": "big"}, table={**TABLE, "capacity": 10**15}), {"w": np.zeros(3, np.float32)}),
        "bad_meta", True),
    "register with a table larger than the machine's memory": (lambda: wire.encode("register", reg(
        spec={**SPEC, "run_id": "big"}, table={**TABLE, "capacity": 10**11}), {"w": np.zeros(3, np.float32)}),
        "bad_register", True),
    "register with capacity true": (lambda: wire.encode("register", reg(
        spec={**SPEC, "run_id": "big"}, table={**TABLE, "capacity": True}), {"w": np.zeros(3, np.float32)}),
        "bad_meta", True),
    "update_priorities with scalar ids": (lambda: wire.encode("update_priorities", {"req": 7, "token": TOKEN}, {
        "ids": np.int64(3), "priorities": np.float64(1.0)}), "bad_priorities", True),
    "a bytes value in the spec": (lambda: wire.encode("register", reg(
        spec={**SPEC, "run_id": "bytes", "env_kwargs": {"x": b"\x00"}})), "bad_meta", True),
    "nested 1000 deep in the spec's args": (lambda: raw("register", reg(spec={**SPEC, "run_id": "deep"}),
                                                        nested={"spec": None}), "bad_meta", False),
}


@pytest.mark.parametrize("case", sorted(REQUEST_KILLERS))
def test_single_requests_that_killed_the_broker_are_refused(ctx, broker, client, push, case):
    assert register(client).type == "ok"
    frames, reason, replied = REQUEST_KILLERS[case]
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(broker.address())
    dealer.send_multipart(frames())
    if replied:  # a request the broker could read gets an error reply naming the problem
        assert dealer.poll(10_000), "no reply"
        reply = wire.decode(dealer.recv_multipart())
        assert reply.type == "error" and reply.meta["req"] == 7 and reply.meta["reason"]
    wait_for(lambda: stats(client)["rejected"].get(reason) == 1, 10, f"{case} rejected as {reason}")
    dealer.close()
    s = stats(client)
    assert s["run_id"] == SPEC["run_id"], "the run was replaced"
    assert_still_serving(client, push, seq=0)


def test_a_snapshot_never_meets_a_value_json_cannot_hold(tmp_path, ctx):
    b = server.Broker(server.BrokerConfig(port=0, snapshot_dir=str(tmp_path)), ctx=ctx)
    try:
        reply_to = b"someone"
        body = wire.encode("register", register_meta(spec={**SPEC, "env_kwargs": {"x": b"\x00"}}))
        b._on_request([zmq.Frame(reply_to), *[zmq.Frame(bytes(f)) for f in body]])
        assert b.spec is None and b.stats.rejected["bad_meta"] == 1
        frames = wire.encode("register", register_meta(), {"w": np.zeros(3, np.float32)})
        b._on_request([zmq.Frame(reply_to), *[zmq.Frame(bytes(f)) for f in frames]])
        b.snapshot()  # used to fail: bytes are not JSON serializable
        assert b.stats.snapshots == 1
    finally:
        b.close()


# -- single messages that stopped or poisoned training -------------------------------------------

def test_segments_of_another_run_or_of_no_run_are_not_stored(client, push):
    register(client)  # (sent without asking for credit: the run is checked first)
    push.sock.send_multipart(wire.encode("segment", good_segment_meta(run_id="old-run"), arrays_of()))
    meta = good_segment_meta()
    del meta["run_id"]
    push.sock.send_multipart(wire.encode("segment", meta, arrays_of()))
    wait_for(lambda: sum(stats(client)["rejected"].values()) == 2, 10, "both rejected")
    s = stats(client)
    assert s["rejected"] == {"wrong_run": 1, "bad_meta": 1} and s["replay_size"] == 0 and s["segments"] == 0


def test_counters_are_per_run_so_a_second_learner_gets_its_own_budget(client, push):
    register(client)
    for seq in range(3):
        push.send_multipart(segment(seq))
    wait_for(lambda: stats(client)["frames"] == 24, 10, "24 frames of the first run")
    refused = register(client, spec={**SPEC, "run_id": "r2"}, token="another-learner's-token")
    assert refused.type == "error" and refused.meta["reason"] == "run_held"  # r1's learner is alive
    assert client.request("release", {"token": TOKEN}, wait_s=10).type == "ok"  # ... and done with it
    register(client, spec={**SPEC, "run_id": "r2"}, token="another-learner's-token")
    s = stats(client)
    assert (s["run_id"], s["frames"], s["segments"], s["replay_size"]) == ("r2", 0, 0, 0)
    assert s["lifetime"]["frames"] == 24
    push.send_multipart(wire.encode("segment", good_segment_meta(run_id="r2", incarnation="y"), arrays_of()))
    wait_for(lambda: stats(client)["frames"] == 8, 10, "the second run's own count")
    assert stats(client)["lifetime"]["frames"] == 32


def test_frames_must_match_the_items(client, push):
    register(client)
    push.send_multipart(wire.encode("segment", good_segment_meta(frames=2**62), arrays_of()))  # past MAX_INT
    push.send_multipart(wire.encode("segment", good_segment_meta(frames=2**50), arrays_of()))  # not 8 items x 1
    wait_for(lambda: sum(stats(client)["rejected"].values()) == 2, 10, "both rejected")
    s = stats(client)
    assert s["rejected"] == {"bad_meta": 1, "bad_frames": 1} and s["frames"] == 0


def test_non_finite_items_are_rejected(client, push):
    register(client)
    bad = dict(arrays_of())
    bad["obs"] = np.array(bad["obs"])
    bad["obs"][3, 1] = np.nan
    for seq in range(20):
        push.send_multipart(wire.encode("segment", good_segment_meta(seq=seq), bad))
    wait_for(lambda: stats(client)["rejected"].get("non_finite") == 20, 10, "20 NaN segments rejected")
    s = stats(client)
    assert s["replay_size"] == 0 and s["gaps"] == 0
    assert_still_serving(client, push, seq=0)  # rejected segments moved no sequence number: seq 0 is still next


def test_the_learner_declares_the_schema_so_a_first_odd_segment_locks_nobody_out(client, push):
    register(client)
    push.send_multipart(segment(0, obs_dim=7, actor_id=9))  # a differently shaped segment arrives first
    wait_for(lambda: stats(client)["rejected"].get("schema_mismatch") == 1, 10, "the odd segment rejected")
    for seq in range(5):
        push.send_multipart(segment(seq))
    wait_for(lambda: stats(client)["segments"] == 5, 10, "every real segment accepted")


def test_a_far_ahead_sequence_number_is_refused_and_moves_nothing(client, push):
    register(client)
    push.send_multipart(segment(0))
    wait_for(lambda: stats(client)["segments"] == 1, 10, "the actor's first segment")
    # An impostor who knew the incarnation (stats no longer show it) jumps far ahead.
    push.send_multipart(wire.encode("segment", good_segment_meta(seq=2**52), arrays_of()))
    wait_for(lambda: stats(client)["rejected"].get("seq_out_of_window") == 1, 10, "the jump refused")
    for seq in range(1, 20):
        push.send_multipart(segment(seq))
    wait_for(lambda: stats(client)["segments"] == 20, 10, "the real actor's next segments accepted")
    s = stats(client)
    assert (s["gaps"], s["duplicates"]) == (0, 0)
    assert "x" not in s["per_actor"]["0"].values()


def test_weights_come_only_from_the_run_s_learner(ctx, broker, client):
    register(client)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(f"tcp://127.0.0.1:{broker.ports['weights_in']}")
    good = {"w": np.full(3, 1, np.float32)}
    cases = [  # (meta, arrays, reason)
        ({"version": 2**52, "run_id": "r1"}, good, "bad_token"),  # anyone without the token
        ({"version": 2**52, "run_id": "r1", "token": TOKEN}, good, "bad_version"),  # a jump past MAX_VERSION_STEP
        ({"version": 1, "run_id": "r1", "token": TOKEN}, {"w": np.zeros(5, np.float32)}, "bad_weights"),
        ({"version": 1, "run_id": "r1", "token": TOKEN}, {"w": np.full(3, np.nan, np.float32)}, "non_finite"),
        ({"version": 1, "run_id": "other", "token": TOKEN}, good, "wrong_run"),
    ]
    deadline = time.monotonic() + 10  # a PUB drops what it sends before the broker's subscription arrived
    while not stats(client)["rejected"] and time.monotonic() < deadline:
        send(pub, "weights", *cases[0][:2])
        time.sleep(0.05)
    for meta, arrays, _ in cases[1:]:
        send(pub, "weights", meta, arrays)
    wait_for(lambda: all(stats(client)["rejected"].get(r) for *_, r in cases), 10, "every bad publish rejected")
    assert client.request("get_weights", wait_s=10).meta["version"] == 0
    send(pub, "weights", {"version": 1, "run_id": "r1", "token": TOKEN}, good)  # the learner's next version
    wait_for(lambda: client.request("get_weights", wait_s=10).meta["version"] == 1, 10, "the learner's weights")
    reply = client.request("get_weights", wait_s=10)
    assert "token" not in reply.meta and reply.arrays["w"].tolist() == [1, 1, 1]
    pub.close()


def test_only_the_learner_holding_a_run_may_register_it_again(client, push):
    register(client)
    push.send_multipart(segment(0))
    wait_for(lambda: stats(client)["replay_size"] == 8, 10, "8 items")
    stolen = register(client, token="not-the-learner's-token", table={**TABLE, "samples_per_insert": 2.0})
    assert stolen.type == "error" and "held by another learner" in stolen.meta["detail"]
    nan = register(client, table={**TABLE, "samples_per_insert": math.nan})
    assert nan.type == "error" and "samples_per_insert" in nan.meta["detail"]
    assert register(client).type == "ok"  # the learner itself, restarting: keeps its table
    s = stats(client)
    assert s["replay_size"] == 8 and s["rejected"] == {"run_held": 1, "bad_meta": 1}


def test_requests_that_cannot_be_served_are_refused_not_queued(client, push):
    register(client)
    too_big = client.request("sample", {"token": TOKEN, "batch_size": 2**24}, wait_s=10)
    assert too_big.type == "error" and "more than a message may carry" in too_big.meta["detail"]
    limited = {**TABLE, "samples_per_insert": 1.0, "tolerance": 64.0}
    register(client, spec={**SPEC, "run_id": "limited"}, table=limited)
    held_forever = client.request("sample", {"token": TOKEN, "batch_size": 2**20}, wait_s=10)
    assert held_forever.type == "error" and "tolerance" in held_forever.meta["detail"]
    fifo = {**TABLE, "sampler": "fifo", "min_size": 0}
    register(client, spec={**SPEC, "run_id": "q"}, table=fifo)
    assert client.request("sample", {"token": TOKEN, "batch_size": 101}, wait_s=10).type == "error"
    assert stats(client)["pending_samples"] == 0
    for key in range(50):  # flush requests with made-up keys used to switch the rate limiter off
        reply = client.request("flush", {"actor_id": key, "incarnation": f"made-up-{key}", "last_seq": 10**6},
                               wait_s=10)
        assert reply.type == "error" and "unknown actor incarnation" in reply.meta["detail"]
    assert stats(client)["rejected"]["bad_flush"] == 50


def test_resends_of_cached_weights_are_rate_limited(ctx, broker, client):
    register(client)
    sub = ctx.socket(zmq.XSUB)  # a client that subscribes again and again
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.setsockopt(zmq.SNDHWM, 100_000)
    sub.connect(f"tcp://127.0.0.1:{broker.ports['weights_out']}")
    wait_for(lambda: sub.send(b"\x01") or sub.poll(100), 10, "connected: the cached weights arrive")
    t0 = time.monotonic()
    for _ in range(2000):
        sub.send(b"\x01")
    wait_for(lambda: stats(client)["subscriptions"] >= 1000, 20, "the subscriptions read")
    elapsed = time.monotonic() - t0
    s = stats(client)
    assert 1 <= s["weights_resends"] <= elapsed / server.RESEND_INTERVAL_S + 2, (s["weights_resends"], elapsed)
    sub.close()


def test_stats_stay_bounded_with_ten_thousand_actor_ids(client, push, broker):
    import subprocess
    import sys

    register(client)
    for actor_id in range(10_000):
        push.send_multipart(segment(0, n=1, actor_id=actor_id))
    wait_for(lambda: stats(client)["segments"] == 10_000, 60, "10,000 actors' segments")
    s = stats(client)  # used to fail to decode: more than 4,096 map entries
    assert s["actors"] == 10_000 and len(s["per_actor"]) == server.PER_ACTOR_SHOWN
    assert s["per_actor_rest"]["actors"] == 10_000 - server.PER_ACTOR_SHOWN
    assert s["per_actor_rest"]["frames"] + sum(a["frames"] for a in s["per_actor"].values()) == 10_000
    page = stats(client, actors_from=5000, actors_limit=10)
    assert sorted(map(int, page["per_actor"])) == list(range(5000, 5010))
    out = subprocess.run([sys.executable, "-m", "qrl", "status", "--broker", broker.address(), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and '"per_actor_rest"' in out.stdout, out.stderr


def test_every_message_field_is_documented_and_every_documented_field_exists():
    """docs/protocol.md's metadata tables are messages.markdown() exactly: a field added to one
    and not the other fails here."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    begin, end = "<!-- messages:begin -->", "<!-- messages:end -->"
    assert begin in doc and end in doc
    documented = doc[doc.index(begin) + len(begin):doc.index(end)].strip()
    assert documented == messages.markdown().strip(), (
        "run: python -m qrl.protocol.messages > the block in docs/protocol.md")
    begin, end = "<!-- inference:begin -->", "<!-- inference:end -->"
    inference = doc[doc.index(begin) + len(begin):doc.index(end)].strip()
    assert inference == messages.markdown(messages.INFERENCE_SCHEMAS).strip(), "the central inference block"
    for msg_type, schema in messages.SCHEMAS.items():
        for name in schema.fields:
            assert f"| `{msg_type}` | `{name}` |" in documented


@pytest.mark.timeout(120)
def test_an_inference_server_refuses_a_spec_s_code_before_importing_anything_and_reports_it(client, procs, broker,
                                                                                           tmp_path):
    """The same check as an actor's, in the same place (qrl.acting.actor.join_run): before the agent is
    loaded, reported to the broker as refused_spec (actor id -1: the server)."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_env.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Env: pass\n")
    register(client, spec={**SPEC, "env": "evil_env:Env"})
    server = procs.start("inference-refusing", "inference", "--broker", broker.address(), "--bind",
                         "tcp://127.0.0.1:0")
    assert server.wait(60) != 0
    s = stats(client)
    assert s["actor_errors"]["refused_spec"] >= 1
    assert s["actor_error_last"]["refused_spec"].startswith("actor -1: ") and "evil_env:Env" in s["actor_error_last"][
        "refused_spec"]
    assert "does not allow" in server.log_path.read_text()
    assert not marker.exists(), "the spec's module was imported"


@pytest.mark.timeout(120)
def test_actors_import_no_code_a_spec_names_unless_their_own_config_allows_it(client, procs, broker, tmp_path):
    """A module in the actors' working directory (first on their sys.path) that a hostile register
    names as the environment entry point: refused, reported to the broker, never imported."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_env.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Env: pass\n")
    register(client, spec={**SPEC, "env": "evil_env:Env"})
    refused = procs.start("actor-refusing", "actor", "--broker", broker.address(), "--set", "actor.give_up_after=1")
    assert refused.wait(60) == 1
    s = stats(client)
    assert s["actor_errors"]["refused_spec"] >= 1 and "evil_env:Env" in s["actor_error_last"]["refused_spec"]
    assert "does not allow" in refused.log_path.read_text()
    assert not marker.exists(), "the spec's module was imported"
    # The same actor with the entry point allowed on its own command line does load it.
    allowed = procs.start("actor-allowing", "actor", "--broker", broker.address(), "--set", "actor.give_up_after=1",
                          "--set", "actor.allow_envs=[evil_env]")
    allowed.wait(60)
    assert marker.exists()


@pytest.mark.timeout(120)
def test_a_client_with_zeromq_default_options_that_asks_for_credit_wastes_nothing(ctx, broker, client):
    """A client written from the protocol doc with ZeroMQ's defaults (send HWM 1,000, auto-tuned
    kernel buffers) could run hundreds of segments ahead of a rate-limited broker. Asking for a
    credit before each segment (docs/protocol.md, "Flow control") keeps it within a segment or
    two of what is trained on: what it sends is stored, not dropped as stale."""
    import threading

    bound = 4
    register(client, table={**TABLE, "capacity": 10_000, "min_size": 0, "samples_per_insert": 1.0,
                            "tolerance": 64.0, "max_policy_lag": bound})
    stop = threading.Event()

    def actor():
        push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)  # default options, as a foreign client's
        asker = Client(ctx, broker.address(), "actor")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        push.connect(f"tcp://127.0.0.1:{broker.ports['ingest']}")
        sub.connect(f"tcp://127.0.0.1:{broker.ports['weights_out']}")
        version, seq = 0, 0
        while not stop.is_set():
            meta = good_segment_meta(seq=seq)
            ask = {k: meta[k] for k in ("run_id", "actor_id", "incarnation", "seq")}
            if asker.request("credit", ask, wait_s=10).meta.get("until", -1) < seq:
                continue  # held past the broker's hold time: ask again
            while sub.poll(0):  # collect with the newest weights
                version = wire.decode(sub.recv_multipart()).meta["version"]
            push.send_multipart(wire.encode("segment", {**meta, "policy_version": version}, arrays_of(seq)))
            seq += 1
        asker.close()
        push.close(linger=0)
        sub.close(linger=0)

    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(f"tcp://127.0.0.1:{broker.ports['weights_in']}")
    thread = threading.Thread(target=actor, daemon=True)
    thread.start()
    try:
        version, deadline = 0, time.monotonic() + 6
        while time.monotonic() < deadline:  # the learner: a batch, then new weights
            if client.request("sample", {"token": TOKEN, "batch_size": 8}, wait_s=10).type == "batch":
                version += 1
                send(pub, "weights", {"version": version, "run_id": SPEC["run_id"], "token": TOKEN},
                     {"w": np.full(3, version, np.float32)})
    finally:
        stop.set()
        thread.join(15)
        pub.close()
    s = stats(client)
    wasted = s["frames_dropped"] / max(1, s["frames"] + s["dropped_stale_frames"])
    print(f"\nflow control: {version} versions, {s['segments']} segments accepted, policy lag "
          f"{s['policy_lag_100']:.1f} (bound {bound}), {100 * wasted:.1f}% of the frames dropped")
    assert version > 50 and s["segments"] > 50
    assert s["policy_lag_100"] <= 2 and wasted <= 0.05 and s["rejected"] == {}


def test_a_segment_sent_without_credit_is_refused_and_stores_nothing(client, push):
    register(client)
    push.sock.send_multipart(wire.encode("segment", good_segment_meta(seq=0), arrays_of(0)))  # no credit asked
    wait_for(lambda: stats(client)["rejected"].get("no_credit") == 1, 10, "the segment refused (no_credit)")
    assert stats(client)["segments"] == 0
    push.send_multipart(wire.encode("segment", good_segment_meta(seq=1), arrays_of(1)))  # asked: stored
    wait_for(lambda: stats(client)["segments"] == 1, 10, "the credited segment stored")
    # A credit covers the seq it was asked for and those before it, never a later one.
    push.sock.send_multipart(wire.encode("segment", good_segment_meta(seq=2), arrays_of(2)))
    wait_for(lambda: stats(client)["rejected"].get("no_credit") == 2, 10, "seq 2 refused: its credit was never asked")


def test_validation_raises_only_message_errors_whatever_the_metadata():
    """Any msgpack-decodable metadata, for every message type: a clean map or MessageError, never
    another exception (that would have reached a handler)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8)
        | st.binary(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
        max_leaves=30)
    field_names = st.sampled_from(sorted({n for s in messages.SCHEMAS.values() for n in s.fields} | {"x"}))

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(sorted(messages.SCHEMAS)), st.dictionaries(field_names, values, max_size=8) | values)
    def check(msg_type, meta):
        try:
            out = messages.validate(msg_type, meta)
        except messages.MessageError as exc:
            assert exc.reason == "bad_meta" and exc.detail
        else:
            assert isinstance(out, dict) and set(out) <= set(messages.SCHEMAS[msg_type].fields)

    check()


def test_a_broker_restored_with_thousands_of_actors_still_answers_stats(tmp_path):
    """4,200 actor ids once made every stats reply undecodable, and the snapshot carried that
    across a restart."""
    import threading

    def start():
        b = server.Broker(server.BrokerConfig(port=0, snapshot_dir=str(tmp_path)), ctx=zmq.Context())
        thread = threading.Thread(target=b.serve, daemon=True)
        thread.start()
        return b, thread

    b, thread = start()
    ctx = zmq.Context()
    try:
        client = Client(ctx, b.address(), "test", timeout_s=2.0)
        register(client)
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{b.ports['ingest']}")
        push = CreditedPush(push, b.address())
        for actor_id in range(4200):
            push.send_multipart(segment(0, n=1, actor_id=actor_id))
        wait_for(lambda: stats(client)["segments"] == 4200, 60, "4,200 actors' segments")
        b.stop()
        thread.join(10)  # stopping writes a snapshot
        b.snapshot()
        b.close()
        client.close()
        push.close(linger=0)

        b, thread = start()
        client = Client(ctx, b.address(), "test", timeout_s=2.0)
        s = stats(client)
        assert s["restored"]["segments"] == 4200 and s["actors"] == 4200
        assert len(s["restored"]["seq"]) == len(s["per_actor"]) == server.PER_ACTOR_SHOWN
        client.close()
    finally:
        b.stop()
        thread.join(10)
        b.close()
        ctx.destroy(linger=0)
