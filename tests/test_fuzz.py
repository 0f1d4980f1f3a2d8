"""Hostile input: thousands of malformed messages at every broker socket while real actor
processes push real segments. The broker stays up, every bad message that reaches it is
rejected and counted, and every valid segment still arrives (no gaps)."""

import dataclasses
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qrl import algorithm, envs
from qrl.protocol import wire
from qrl.algorithms import dqn
from qrl.brokers.server import Broker, BrokerConfig
from qrl.protocol.transport import Client
from conftest import wait_for

pytestmark = pytest.mark.slow

GOOD = {"x": np.zeros((2, 3), np.float32)}
BAD_DTYPES = ["|O", "<U4", ">f4", "|V8", "<M8", "float32", "", "<f16", 7, None]
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what msgpack can carry
msgpack_values = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def header(**fields):
    h = {"v": wire.PROTOCOL_VERSION, "t": "segment", "m": {}, "a": [["x", "<f4", [2, 3]]]}
    h.update(fields)
    return msgpack.packb(h, use_bin_type=True)


BODY = GOOD["x"].tobytes()


@st.composite
def malformed(draw):
    """A multipart message that no decoder may accept."""
    kind = draw(st.sampled_from(["random", "msgpack", "version", "dtype", "shape", "size", "count", "truncated"]))
    if kind == "random":  # random bytes, at least the header frame not a valid msgpack map
        first = draw(st.binary(min_size=0, max_size=64).filter(lambda b: not _is_map(b)))
        return [first, *draw(st.lists(st.binary(max_size=64), max_size=3))]
    if kind == "msgpack":  # well-formed msgpack that is not a qrl header
        value = draw(msgpack_values.filter(lambda v: not isinstance(v, dict) or v.get("v") != wire.PROTOCOL_VERSION))
        return [msgpack.packb(value, use_bin_type=True)]
    if kind == "version":
        return [header(v=draw(INT64.filter(lambda v: v != wire.PROTOCOL_VERSION))), BODY]
    if kind == "dtype":
        return [header(a=[["x", draw(st.sampled_from(BAD_DTYPES)), [2, 3]]]), BODY]
    if kind == "shape":
        bad = draw(st.lists(st.integers(min_value=-(2**40), max_value=-1), min_size=1, max_size=3)
                   | st.lists(st.integers(0, 4), min_size=9, max_size=12) | st.just([1.5]) | st.just("2x3"))
        return [header(a=[["x", "<f4", bad]]), BODY]
    if kind == "size":  # the frame is not as long as declared
        return [header(), BODY[: draw(st.integers(0, len(BODY) - 1))] + draw(st.binary(max_size=3))]
    if kind == "count":
        return [header(), *([BODY] * draw(st.sampled_from([0, 2, 3])))]
    frames = wire.encode("segment", {"seq": 1}, GOOD)  # a valid message cut short
    return [bytes(frames[0])[: draw(st.integers(1, len(bytes(frames[0])) - 1))], BODY]


def _is_map(data: bytes) -> bool:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return False
    return isinstance(value, dict) and value.get("v") == wire.PROTOCOL_VERSION


def register_run(client):
    args = dataclasses.replace(dqn.Args(), samples_per_insert=0.0, buffer_size=20_000, learning_starts=0)
    obs_space, act_space = envs.spaces("CartPole-v1")
    net = dqn.make_policy(obs_space, act_space, args)
    spec = {"run_id": "fuzz", "algo": "dqn", "env": "CartPole-v1", "env_kwargs": {},
            "args": dataclasses.asdict(args), "run": {"num_envs": 4, "segment_length": 16, "seed": 0}}
    schema = algorithm.item_schema(dqn.AGENT, net, obs_space, act_space, args, 4, 16)
    reply = client.request("register", {"spec": spec, "table": dqn.table_config(args).as_meta(), "weights_version": 0,
                                        "schema": schema.as_meta(), "token": "fuzz-token"},
                           {k: v.numpy() for k, v in net.state_dict().items()}, wait_s=10)
    assert reply.type == "ok"


def test_fuzz_every_socket_while_actors_run(procs):
    broker = Broker(BrokerConfig(port=0), ctx=zmq.Context())
    thread = threading.Thread(target=broker.serve, daemon=True)
    thread.start()
    ctx = zmq.Context()
    sockets = []

    def connect(kind, port_name):
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{broker.ports[port_name]}")
        sockets.append(s)
        return s

    try:
        client = Client(ctx, broker.address(), "fuzz-test")
        register_run(client)
        actors = procs.start("actors", "actor", "--n", "2", "--broker", broker.address())
        stats = lambda: client.request("get_stats", wait_s=10).meta
        wait_for(lambda: stats()["actors"] == 2, 60, "two real actors pushing")

        ingest, service = connect(zmq.PUSH, "ingest"), connect(zmq.DEALER, "service")
        publisher, subscriber_side = connect(zmq.PUB, "weights_in"), connect(zmq.XSUB, "weights_out")
        sent = {"ingest": 0, "service": 0, "weights_in": 0, "weights_out": 0}

        @settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
        @given(frames=malformed(), target=st.sampled_from(sorted(sent)))
        def attack(frames, target):
            sock = {"ingest": ingest, "service": service, "weights_in": publisher, "weights_out": subscriber_side}
            sock[target].send_multipart(frames)
            sent[target] += 1

        attack()
        # PUSH and DEALER deliver every message: each must be rejected exactly once. PUB may drop
        # messages before its subscription arrives, and XPUB only reads subscriptions.
        reliable = lambda: {k: stats()["rejected_on"].get(k, 0) for k in ("ingest", "service")}
        wait_for(lambda: reliable() == {"ingest": sent["ingest"], "service": sent["service"]}, 60,
                 f"exactly one rejection per malformed message ({sent})")
        s = stats()
        assert thread.is_alive(), "the broker thread died"
        assert 0 < s["rejected_on"].get("weights_in", 0) <= sent["weights_in"]
        before = s["per_actor"]
        time.sleep(1.0)
        after = stats()
        assert after["gaps"] == 0 and after["duplicates"] == 0, "valid segments were lost"
        assert all(after["per_actor"][k]["segments"] > before[k]["segments"] for k in before), "actors stalled"
        weights = client.request("get_weights", wait_s=10)
        assert weights.type == "weights" and weights.meta["version"] == 0 and weights.meta["run_id"] == "fuzz"
        assert actors.poll() is None
        print(f"fuzz: sent {sent}, rejected by reason {s['rejected']}")
        client.close()
    finally:
        for s in sockets:
            s.close()
        broker.stop()
        thread.join(5)
        broker.close()
        ctx.destroy(linger=0)
