"""Multi-host for real: broker, learner and actors each in their own Linux network namespace
(their own interfaces and loopback), joined by a bridge, talking TCP over it with CURVE keys,
exactly as docs/deploy.md runs them on separate machines."""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SUBNET = "10.213.77"
CONFIGS = Path(__file__).parent.parent / "configs"
ROLES = {"broker": 1, "learner": 2, "actors": 3}


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def hosts():
    """Three namespaces on one bridge: {role: (namespace, ip)}; torn down afterwards."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need Linux, root and iproute2 (`ip`)")
    tag = uuid.uuid4().hex[:6]
    bridge = f"qbr{tag}"
    made: list[str] = []
    allowed = False
    try:
        try:
            sh("ip", "link", "add", bridge, "type", "bridge")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create a bridge here: {exc.stderr.strip()}")
        sh("ip", "link", "set", bridge, "up")
        # Where bridged frames pass through iptables (br_netfilter, loaded by Docker, which also sets
        # the FORWARD policy to DROP), let this bridge's own traffic through, and only that.
        forward = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
        if _bridge_netfilter() and shutil.which("iptables"):
            sh("iptables", "-I", *forward)
            allowed = True
        out = {}
        for role, host in ROLES.items():
            ns, veth = f"qrl-{role}-{tag}", f"qv{host}{tag}"
            try:
                sh("ip", "netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"cannot create network namespaces here: {exc.stderr.strip()}")
            made.append(ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{host}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            out[role] = (ns, f"{SUBNET}.{host}")
        yield out
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)
        if allowed:
            subprocess.run(["iptables", "-D", *forward], capture_output=True, timeout=30)


def _bridge_netfilter() -> bool:
    try:
        return open("/proc/sys/net/bridge/bridge-nf-call-iptables").read().strip() == "1"
    except OSError:
        return False


def test_broker_learner_and_actors_in_separate_network_namespaces(hosts, procs, tmp_path):
    keys = tmp_path / "keys"
    assert subprocess.run([sys.executable, "-m", "qrl", "keygen", str(keys)], capture_output=True).returncode == 0
    in_ns = {role: ("ip", "netns", "exec", ns) for role, (ns, _) in hosts.items()}
    broker_ip = hosts["broker"][1]
    address = f"tcp://{broker_ip}:5555"

    procs.start("broker", "broker", "--host", broker_ip, "--port", "5555", "--keys", str(keys), prefix=in_ns["broker"])
    actors = procs.start("actors", "actor", "--n", "2", "--broker", address, "--keys", str(keys),
                         prefix=in_ns["actors"])
    learner = procs.start("learner", "learner", "--config", str(CONFIGS / "ql-Grid-v0.yaml"), "--broker", address,
                          "--keys", str(keys), "--run-dir", str(tmp_path / "run"), "--no-progress",
                          prefix=in_ns["learner"])
    # Each role has only its own loopback and eth0: the bridge is the only way between them.
    code = learner.wait(180)
    assert code == 0, learner.log_path.read_text()[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop_reason"].startswith("evaluation reached") and summary["final_eval_mean"] > 0.9

    status = subprocess.run([*in_ns["learner"], sys.executable, "-m", "qrl", "status", "--broker", address,
                             "--keys", str(keys), "--json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    stats = json.loads(status.stdout)
    assert set(stats["per_actor"]) == {"0", "1"} and stats["batches"] > 0 and stats["gaps"] == 0
    assert actors.poll() is None
    assert "WARNING" not in (tmp_path / "broker.log").read_text()  # keys on: no plaintext warning
