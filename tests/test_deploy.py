"""The deployment files as an operator uses them: the Kubernetes manifests against the API schema
(offline), every container's command line parsed by the real `qrl` command, the container image
built and a compose cluster trained in it (where Docker runs), a Slurm job (where slurmctld runs)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from qrl.cli import main as qrl_main

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "k8s" / "qrl.yaml"
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes release the manifests promise to work on (docs/deploy.md)."""


def manifests() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFESTS.read_text()) if doc]


def test_every_manifest_is_valid_against_the_kubernetes_api_schema():
    import kubernetes_validate

    docs = manifests()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "Job", "PersistentVolumeClaim"}
    for doc in docs:
        # strict: a misspelled or misplaced field is an error, not silently ignored by the API server
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # The validator is not vacuous: the same manifest with one misspelled field fails.
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def container_commands() -> list[tuple[str, list[str]]]:
    """Every qrl command line in docker-compose.yml, the Kubernetes manifests and the Slurm script."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    lines = [(f"compose {name}", [str(a) for a in svc["command"]]) for name, svc in compose["services"].items()]
    for doc in manifests():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        lines += [(f"k8s {doc['metadata']['name']}", c["args"]) for c in spec.get("containers", [])]
    return lines


@pytest.mark.parametrize("where, args", container_commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_each_container_runs_a_real_qrl_invocation(where, args, monkeypatch):
    """The command line parses with `qrl`'s own parser: the subcommand exists, every flag exists and
    takes the value given (click raises on anything else); a --config names a preset in the image."""
    monkeypatch.chdir(ROOT)
    args = [a.split(":-", 1)[1].rstrip("}") if a.startswith("${") else a for a in args]  # compose defaults
    command = qrl_main.get_command(None, args[0])
    assert command is not None, f"{where}: no qrl subcommand {args[0]!r}"
    with command.make_context(args[0], list(args[1:])) as ctx:
        assert ctx.params, where
    if "--config" in args:
        assert (ROOT / args[args.index("--config") + 1]).exists(), where


def _docker_missing() -> str | None:
    """Why the image cannot be built and run here, or None."""
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        return "no docker command (apt-get install docker.io)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "no Docker daemon answers (start dockerd; docs/deploy.md)"
    if shutil.which("docker-compose") is None:
        return "no docker-compose (apt-get install docker-compose)"
    base = subprocess.run(["docker", "image", "inspect", "qrl-base:bookworm"], capture_output=True, timeout=60)
    if base.returncode != 0 and shutil.which("debootstrap") is None:
        return "no debootstrap to make the Debian base image (apt-get install debootstrap)"
    return None


@pytest.mark.slow
def test_the_image_builds_and_a_compose_cluster_trains_in_it(tmp_path):
    """`make image`, then the compose file as an operator runs it: broker, two actor containers
    (8 workers each, id blocks claimed from the broker) and the learner on the project's network,
    CURVE keys mounted read-only; the learner reaches the grid preset's target and exits 0."""
    import json
    import os
    import subprocess
    import sys

    from qrl.protocol.transport import free_port_block

    reason = _docker_missing()
    if reason:
        pytest.skip(reason)
    image = "qrl:test"
    build = subprocess.run(["make", "image", f"IMAGE={image}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=1800)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    print(build.stdout.strip().splitlines()[-1])  # build time and size, for the record (pytest -s)
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "qrl", "keygen", str(keys)], check=True, timeout=60)
    port = free_port_block(4)
    env = {**os.environ, "QRL_IMAGE": image, "QRL_KEYS": str(keys), "QRL_CONFIG": "configs/ql-Grid-v0.yaml",
           "QRL_PUBLISH": f"{port}-{port + 3}"}
    compose = ["docker-compose", "-p", f"qrltest{os.getpid()}", "-f", str(ROOT / "docker-compose.yml")]
    run = lambda *args, **kw: subprocess.run([*compose, *args], env=env, capture_output=True, text=True, **kw)
    try:
        up = run("up", "-d", "--scale", "actors=2", timeout=300)
        assert up.returncode == 0, up.stderr[-3000:]
        learner = run("ps", "-q", "learner", timeout=60).stdout.strip()
        code = subprocess.run(["docker", "wait", learner], capture_output=True, text=True, timeout=600).stdout.strip()
        logs = run("logs", "--no-color", "learner", timeout=60).stdout
        assert code == "0", logs[-3000:]
        assert "evaluation reached" in logs, logs[-3000:]
        actors = run("ps", "-q", "actors", timeout=60).stdout.split()
        assert len(actors) == 2
        inspect = json.loads(subprocess.run(["docker", "inspect", *actors], capture_output=True, text=True,
                                            timeout=60).stdout)
        assert all(c["State"]["Running"] for c in inspect), "actor containers keep running"
        actor_logs = run("logs", "--no-color", "actors", timeout=60).stdout
        assert actor_logs.count("started 8 workers") == 2, actor_logs[-2000:]
    finally:
        run("down", "-v", "--remove-orphans", timeout=180)


SLURM_CONF = """ClusterName=qrltest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=qrl Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.mark.slow
def test_the_slurm_job_trains_on_a_real_controller(tmp_path):
    """Debian's slurm-wlm: a single-node controller and node daemon (with their own munge socket)
    started for the test, deploy/slurm/qrl.sbatch submitted with sbatch; the job's learner reaches
    the grid preset's target, with the actors started by srun and every role on the job's keys."""
    import json
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import time

    from qrl.protocol.transport import free_port_block

    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"no {', '.join(missing)} (apt-get install slurm-wlm munge)")
    d = tmp_path / "slurm"
    for sub in ("state", "spool"):
        (d / sub).mkdir(parents=True)
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    ctld_port = free_port_block(2)
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname().split(".")[0], dir=d, ctld_port=ctld_port,
                                      d_port=ctld_port + 1, cpus=os.cpu_count()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []
    try:
        munge = subprocess.run(["munged", "--force", f"--socket={d}/munge.sock", f"--key-file={key}",
                                f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log",
                                f"--seed-file={d}/munged.seed"], capture_output=True, text=True, timeout=30)
        if munge.returncode != 0:
            pytest.skip(f"munged cannot start here: {munge.stderr.strip()[:200]}")
        for daemon in ("slurmctld", "slurmd"):
            daemons.append(subprocess.Popen([daemon, "-D"], env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 30
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                           text=True).stdout:
            if time.monotonic() > deadline or any(p.poll() is not None for p in daemons):
                pytest.skip("slurmctld/slurmd did not bring the node up: "
                            + (d / "slurmctld.log").read_text()[-300:] if (d / "slurmctld.log").exists() else "")
            time.sleep(0.5)

        run_dir = tmp_path / "run"
        job_env = {**env, "QRL": f"{sys.executable} -m qrl", "QRL_CONFIG": "configs/ql-Grid-v0.yaml",
                   "QRL_RUN_DIR": str(run_dir), "QRL_PORT": str(free_port_block(4))}
        submitted = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/job-%j.out", "--cpus-per-task=2",
                                    str(ROOT / "deploy" / "slurm" / "qrl.sbatch")], env=job_env, cwd=ROOT,
                                   capture_output=True, text=True, timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip().split(";")[0]
        deadline = time.monotonic() + 300
        while subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip():
            assert time.monotonic() < deadline, "the job did not finish within 300 s"
            time.sleep(1)
        output = (tmp_path / f"job-{job}.out").read_text()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["stop_reason"].startswith("evaluation reached"), output[-2000:]
        assert "started 2 workers" in (run_dir / "actors.log").read_text()  # srun's task: the node's 2 CPUs
        # the job's own keys: the broker bound 0.0.0.0 and did not warn about running without them
        assert (run_dir / "keys" / "server.key").exists()
        assert "without encryption" not in (run_dir / "broker.log").read_text()
    finally:
        for p in daemons:
            p.terminate()
        for p in daemons:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["munged", f"--socket={d}/munge.sock", "--stop"], capture_output=True, timeout=30)
