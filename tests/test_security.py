"""CURVE: with --keys, only clients holding an authorized key pair get anything in or out."""

import shutil

import numpy as np
import pytest
import zmq
import zmq.auth

from qrl.protocol import transport
from qrl.protocol.transport import BrokerUnavailable, Client
from conftest import CreditedPush, wait_for
from test_broker import SPEC, register_meta, segment


@pytest.fixture
def keys(tmp_path):
    key_dir = tmp_path / "keys"
    transport.keygen(key_dir)
    yield key_dir
    transport.use_keys(None, server=False)


def as_intruder(key_dir, tmp_path):
    """A client with a valid key pair of its own that the broker never authorized."""
    other = tmp_path / "intruder"
    shutil.copytree(key_dir, other)
    zmq.auth.create_certificates(other, "client")  # overwrites client.key(_secret) with a new pair
    transport.use_keys(other, server=False)


def test_only_authorized_clients_get_in_or_out(procs, keys, tmp_path):
    _, address = procs.start_broker("--keys", str(keys))
    ctx = zmq.Context()
    try:
        transport.use_keys(keys, server=False, role="learner")
        friend = Client(ctx, address, "friend")
        reply = friend.request("register", register_meta(),
                               {"w": np.zeros(3, np.float32)}, wait_s=15)
        assert reply.type == "ok"
        ingest_port = reply.meta["ports"]["ingest"]
        stats = lambda: friend.request("get_stats", wait_s=15).meta

        for stranger in ("intruder", "plain"):
            if stranger == "intruder":
                as_intruder(keys, tmp_path)
            else:
                transport.use_keys(None, server=False)
            client = Client(ctx, address, stranger, timeout_s=1.0)
            with pytest.raises(BrokerUnavailable):
                client.request("get_spec", wait_s=2)  # nothing out
            push = transport.socket(ctx, zmq.PUSH)
            push.connect(f"tcp://127.0.0.1:{ingest_port}")
            push.send_multipart(segment(0), flags=zmq.NOBLOCK) if push.poll(500, zmq.POLLOUT) else None
            push.close()
            client.close()

        transport.use_keys(keys, server=False, role="actor")  # an authorized actor's segment does get in
        friend_push = transport.socket(ctx, zmq.PUSH)
        friend_push.connect(f"tcp://127.0.0.1:{ingest_port}")
        friend_push = CreditedPush(friend_push, address)
        friend_push.send_multipart(segment(0))
        wait_for(lambda: stats()["segments"] == 1, 15, f"the authorized segment; stats {stats()}")
        s = stats()
        assert s["segments"] == 1 and s["rejected"] == {}, "a stranger's segment got in"
        friend_push.close()
        friend.close()
    finally:
        ctx.destroy(linger=0)


def test_client_needs_no_server_secret(keys, tmp_path):
    client_only = tmp_path / "client-machine"
    client_only.mkdir()
    for name in ("server.key", "actor.key", "actor.key_secret"):
        shutil.copy(keys / name, client_only / name)
    transport.use_keys(client_only, server=False, role="actor")
    with pytest.raises(FileNotFoundError, match="qrl keygen"):
        transport.use_keys(client_only, server=True)


@pytest.mark.slow
def test_a_whole_cluster_trains_with_keys(keys, tmp_path):
    import json
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "qrl", "run", "--keys", str(keys), "--actors", "2", "--total-steps",
                          "3000", "--run-dir", str(run_dir), "--no-progress"], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames"] >= 3000 and summary["updates"] > 0


def test_each_key_may_do_only_what_its_role_allows(procs, keys):
    """learner: register, publish, sample; actor: push, spec, weights; observer: stats only."""
    _, address = procs.start_broker("--keys", str(keys))
    ctx = zmq.Context()
    try:
        transport.use_keys(keys, server=False, role="learner")
        learner = Client(ctx, address, "learner")
        reply = learner.request("register", register_meta(), {"w": np.zeros(3, np.float32)}, wait_s=15)
        assert reply.type == "ok"
        ports = reply.meta["ports"]

        transport.use_keys(keys, server=False, role="actor")
        actor = Client(ctx, address, "actor")
        assert actor.request("get_spec", wait_s=15).type == "spec"
        refused = actor.request("register", register_meta(spec={**SPEC, "run_id": "stolen"}, token="x" * 16),
                                {"w": np.zeros(3, np.float32)}, wait_s=15)
        assert refused.type == "error" and "may not register" in refused.meta["detail"]
        assert actor.request("sample", {"batch_size": 1}, wait_s=15).type == "error"
        actor_pub = transport.socket(ctx, zmq.PUB)  # an actor key cannot even connect to weights_in
        actor_pub.connect(f"tcp://127.0.0.1:{ports['weights_in']}")

        transport.use_keys(keys, server=False, role="observer")
        observer = Client(ctx, address, "observer")
        s = observer.request("get_stats", wait_s=15).meta
        assert s["run_id"] == SPEC["run_id"]
        assert observer.request("get_weights", wait_s=15).type == "error"
        observer_sub = transport.socket(ctx, zmq.SUB)  # nor may an observer read the weights
        observer_sub.setsockopt(zmq.SUBSCRIBE, b"")
        observer_sub.connect(f"tcp://127.0.0.1:{ports['weights_out']}")
        assert not observer_sub.poll(1500), "an observer key got the weights"

        s = wait_for(lambda: (lambda s: s if s["refused_connections"].get("actor@weights_in")
                              and s["refused_connections"].get("observer@weights_out") else None)(
            observer.request("get_stats", wait_s=15).meta), 15, "the refused connections counted")
        assert s["rejected"] == {"role_refused": 3} and s["run_id"] == SPEC["run_id"]
        for sock in (actor_pub, observer_sub):
            sock.close(linger=0)
        for c in (learner, actor, observer):
            c.close()
    finally:
        ctx.destroy(linger=0)


def test_central_inference_with_keys_serves_actor_keys_only(keys, tmp_path):
    """`qrl run --inference --keys`: the env actors' socket is CURVE too (the actor role's key pair); a
    client without keys is turned away, one with the actor key is served."""
    import signal
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "qrl", "run", "--inference", "--keys", str(keys), "--actors", "2",
                            "--total-steps", "10000000", "--max-seconds", "90", "--target-return", "1e9",
                            "--run-dir", str(run_dir), "--no-progress"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    ctx = zmq.Context()
    try:
        address = wait_for(lambda: (run_dir / "inference.json").exists() and transport.read_address_file(
            run_dir / "inference.json"), 60, "the inference server's address")
        assert transport.refuses_plain_clients(ctx, address)
        transport.use_inference_keys(keys)
        probe = Client(ctx, address, "probe", timeout_s=5.0)
        wait_for(lambda: probe.request("get_stats", wait_s=30).meta.get("steps", 0) > 0, 60,
                 "env actors stepping through the encrypted socket")
        probe.close()
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
        ctx.destroy(linger=0)


def test_every_wait_says_what_it_waits_for(procs, keys, tmp_path):
    """An actor waiting for an address file that is not there, and an inference server pointed at a
    broker that wants keys it does not have, both say so within seconds (they used to wait in silence)."""
    actor = procs.start("actor", "actor", "--inference-file", str(tmp_path / "missing.json"))
    procs.start("broker", "broker", "--keys", str(keys), "--port", "0", "--address-file", str(tmp_path / "b.json"))
    address = transport.read_address_file(tmp_path / "b.json")
    inference = procs.start("inference", "inference", "--broker", address, "--bind", "tcp://127.0.0.1:0")
    # (each says so 4 s into its wait; the margin is for starting the processes on a loaded machine)
    wait_for(lambda: "waiting for a server to write its address to" in actor.log_path.read_text(), 30,
             "the actor saying which file it waits for")
    wait_for(lambda: "turns away clients without keys" in inference.log_path.read_text(), 30,
             "the inference server saying the broker wants keys")
