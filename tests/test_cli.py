"""The qrl command as a user runs it: help texts and one-line errors."""

import socket
import subprocess
import sys

import pytest

COMMANDS = ["broker", "actor", "learner", "run", "evaluate", "status", "plot", "keygen"]


def qrl(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "qrl", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    out = qrl(*([command] if command else []), "--help")
    assert out.returncode == 0 and "Usage:" in out.stdout
    if command is None:
        assert all(c in out.stdout for c in COMMANDS)


def one_line_error(out, *fragments):
    assert out.returncode == 2, out
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.parametrize("command", ["learner", "run"])
def test_unknown_environment_suggests_close_matches(command):
    one_line_error(qrl(command, "--env", "CartPole-v9"), "unknown environment 'CartPole-v9'", "CartPole-v1")


@pytest.mark.parametrize("command", ["learner", "run"])
def test_unknown_algorithm(command):
    one_line_error(qrl(command, "--algo", "dqm"), "unknown algorithm 'dqm'", "available:", "dqn")


def test_bad_config_key_and_value():
    one_line_error(qrl("run", "--set", "algo.lrate=1"), "unknown config key 'algo.lrate'", "algo.lr")
    one_line_error(qrl("learner", "--set", "run.seed=abc"), "run.seed: cannot read 'abc' as int")


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(qrl("broker", "--port", str(port)), f"port {port} on 127.0.0.1 is already in use")


def test_bad_broker_address():
    one_line_error(qrl("actor", "--broker", "localhost:5555"), "tcp://HOST:PORT")


def test_binding_beyond_loopback_warns(procs):
    broker, _ = procs.start_broker("--host", "0.0.0.0")
    assert "without encryption or authentication" in broker.log_path.read_text()
    loopback, _ = procs.start_broker()
    assert "without encryption" not in loopback.log_path.read_text()


@pytest.mark.slow
def test_sigterm_to_qrl_run_stops_and_reaps_the_whole_cluster(tmp_path):
    import json
    import os
    import signal
    import time

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "qrl", "run", "--algo", "ql", "--env", "qrl/Grid-v0",
                             "--actors", "1",
                             "--target-return", "2", "--total-steps", "100000000", "--run-dir", str(run_dir),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "metrics.jsonl").exists() or "train" not in (run_dir / "metrics.jsonl").read_text():
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not start training"
            time.sleep(0.2)
        broker_pid = json.loads((run_dir / "broker.json").read_text())["pid"]
        proc.send_signal(signal.SIGTERM)  # only `qrl run` itself, as a scheduler or `kill` would
        assert proc.wait(60) == 130, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    with pytest.raises(ProcessLookupError):
        os.kill(broker_pid, 0)  # the broker was stopped, not orphaned
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "stopped by signal"  # the learner checkpointed on its way out


@pytest.mark.parametrize("command, args, message", [
    ("learner", ("--broker", "tcp://127.0.0.1:notaport"), "the port must be a number from 1 to 65535, not 'notaport'"),
    ("learner", ("--broker", "garbage"), "broker address must look like tcp://HOST:PORT, got 'garbage'"),
    ("actor", ("--broker", "tcp://127.0.0.1:70000"), "not '70000'"),
    ("status", ("--broker", "tcp://no-such-host.invalid:5555"), "cannot resolve host 'no-such-host.invalid'"),
    ("learner", ("--broker", "tcp://no-such-host.invalid:5555"), "cannot resolve host"),
    ("broker", ("--host", "999.1.1.1"), "cannot listen on '999.1.1.1'"),
    # A documentation-only address (RFC 5737): no interface here has it; nothing is sent.
    ("broker", ("--host", "192.0.2.1"), "not an address of this machine's interfaces"),
])
def test_malformed_addresses_and_hosts_are_one_line_at_once(command, args, message):
    import time

    t0 = time.monotonic()
    one_line_error(qrl(command, *args), message)
    assert time.monotonic() - t0 < 20  # refused at once, not after the broker wait


def test_files_that_are_not_checkpoints_are_one_line(tmp_path):
    import os

    import torch

    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    one_line_error(qrl("evaluate", str(junk)), f"{junk} is not a readable checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    one_line_error(qrl("evaluate", str(other)), "is not a qrl checkpoint (it lacks learner, config)")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(os.urandom(100))
    one_line_error(qrl("learner", "--resume", "--run-dir", str(run_dir)), "no run to resume", "no config.json")
    (run_dir / "config.json").write_text('{"algo": "dqn", "env": "CartPole-v1", "run": {}, "args": {}}')
    one_line_error(qrl("learner", "--resume", "--run-dir", str(run_dir)), "is not a readable checkpoint")


def test_the_broker_process_does_not_load_torch(procs):
    """The broker is algorithm-agnostic and small: nothing on its path may import torch."""
    import json

    broker, _ = procs.start_broker()
    pid = json.loads(next(procs.tmp.glob("broker-*.json")).read_text())["pid"]
    assert pid == broker.pid
    maps = open(f"/proc/{pid}/maps").read()
    assert "libtorch" not in maps and "torch/_C" not in maps


def test_addresses_keep_their_host_as_written_so_other_ports_can_be_joined_to_it():
    from qrl.protocol.transport import check_address, split_address

    assert split_address("tcp://127.0.0.1:5555") == ("127.0.0.1", 5555)
    assert check_address("tcp://[::1]:5555") == ("[::1]", 5555)  # resolved without, kept with brackets


def test_qrl_run_starts_the_roles_at_once_and_a_refused_setting_removes_only_what_it_created(tmp_path):
    # The learner checks algorithm settings and the environment while the broker and the actors
    # start; its one line ends the run, and a run directory that existed before is left as it was.
    new, old = tmp_path / "new", tmp_path / "old"
    one_line_error(qrl("run", "--set", "algo.batch_size=0", "--run-dir", str(new)), "algo.batch_size must be >= 1")
    assert not new.exists()
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    one_line_error(qrl("run", "--env", "CartPole-v9", "--run-dir", str(old)), "unknown environment 'CartPole-v9'")
    assert (old / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["learner", "actor"])
def test_an_address_file_without_an_address_is_one_line(tmp_path, command):
    bad = tmp_path / "broker.json"
    bad.write_text("[1, 2]")
    one_line_error(qrl(command, "--address-file", str(bad)), "holds no address")
