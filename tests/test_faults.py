"""Faults a user's cluster meets: workers that die again and again, actors that cannot run the
environment, and a launcher that is SIGKILLed. Real processes, real sockets."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_for
from test_e2e import children

pytestmark = pytest.mark.slow


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_worker_killed_three_times_quickly_is_back_on_its_backoff_each_time(procs):
    _, address = procs.start_broker()
    actors = procs.start("actors", "actor", "--n", "2", "--broker", address)
    workers = wait_for(lambda: children(actors.pid) if len(children(actors.pid)) == 2 else None, 30, "two workers")
    other, victim = workers[1], workers[0]
    restart_s = []
    for _ in range(3):
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        new = wait_for(lambda: [p for p in children(actors.pid) if p not in (victim, other)], 15,
                       "the killed worker's replacement", interval_s=0.005)
        restart_s.append(time.monotonic() - t0)
        victim = new[0]
    print(f"\nrestart after each SIGKILL (s): {[round(s, 3) for s in restart_s]}")
    # Backoff 0.1, 0.2, 0.4 s while it keeps dying young; the fork itself is quick.
    for i, took in enumerate(restart_s):
        assert 0.1 * 2**i - 0.02 <= took < 0.1 * 2**i + 1.0, restart_s
    assert other in children(actors.pid)  # the healthy worker was left alone
    log = actors.log_path.read_text()
    deaths = re.findall(r"worker (\d+) was killed by SIGKILL after [\d.]+ s; restarting in ([\d.]+) s", log)
    assert [d for d, _ in deaths] == ["0", "0", "0"], log  # one line per death, no repeats
    assert [float(s) for _, s in deaths] == [0.1, 0.2, 0.4]


CRASHING_ENV = '''
import gymnasium as gym
import numpy as np


class CrashingEnv(gym.Env):
    """Builds fine (the learner can read its spaces), fails on the first step (only actors step)."""
    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        raise RuntimeError("the simulator crashed")
'''


def test_actors_that_keep_failing_stop_qrl_run_with_their_last_error(tmp_path):
    (tmp_path / "crashing_env.py").write_text(CRASHING_ENV)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "qrl", "run", "--algo", "dqn", "--env", "crashing_env:CrashingEnv",
                           "--actors", "2", "--run-dir", str(tmp_path / "run"), "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    print(f"\nqrl run gave up after {took:.1f} s: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: run: actors exited with code 1") and "keeps dying young" in last, proc.stderr
    assert "RuntimeError: the simulator crashed" in last
    assert took < 60


@pytest.mark.parametrize("how", ["qrl run", "make cluster"])
def test_a_sigkilled_launcher_leaves_no_process_behind(tmp_path, how):
    repo = Path(__file__).resolve().parents[1]
    if how == "qrl run":
        cmd = [sys.executable, "-m", "qrl", "run", "--config", str(repo / "configs" / "ql-Grid-v0.yaml"),
               "--total-steps", "100000000", "--target-return", "1000", "--run-dir", str(tmp_path / "run"),
               "--no-progress"]
        expected = 4  # broker, actor supervisor + 2 workers, learner
    else:
        # The recipe's shell is what stays in the foreground; `make` runs it as its child.
        cmd = ["make", "-s", "--no-print-directory", "-C", str(repo), "cluster", "ALGO=ql", "ENV=qrl/Grid-v0",
               "ACTORS=2", f"RUN_DIR={tmp_path / 'run'}", "PORT=0", "SET=--total-steps 100000000"]
        expected = 5
    launcher = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        family = wait_for(lambda: d if len(d := descendants(launcher.pid)) >= expected + 1 else None, 60,
                          "the cluster's processes")
        time.sleep(2)  # every process past its start-up
        family = descendants(launcher.pid)
        target = launcher.pid if how == "qrl run" else children(launcher.pid)[0]  # make's recipe shell
        os.kill(target, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: not any(alive(p) for p in family), 30, "every process of the cluster to exit",
                 interval_s=0.05)
        print(f"\n{how}: {len(family)} processes gone {time.monotonic() - t0:.2f} s after the SIGKILL")
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        launcher.wait(10)
