"""A pytest stopped by SIGTERM (a timeout, a kill, a cancelled CI job) still reaps the qrl processes
its fixtures started: they run in sessions of their own, so nothing else would stop them."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from conftest import wait_for

HOLDING_TEST = '''
import time

def test_hold(procs):
    broker, _ = procs.start_broker()
    (procs.tmp.parent / "broker.pid").write_text(str(broker.pid))
    time.sleep(120)
'''


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # (a zombie is dead: its parent, the test, is gone)
        return stat.read().split()[2] != "Z"


def test_a_terminated_pytest_reaps_the_processes_its_fixtures_started(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_hold.py").write_text(HOLDING_TEST)
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                            str(tmp_path / "bt"), "test_hold.py"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT)
    pid_file, broker = tmp_path / "bt" / "broker.pid", None
    try:
        wait_for(pid_file.exists, 60, "the held test's broker")
        broker = int(pid_file.read_text())
        assert alive(broker)
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) != 0
        wait_for(lambda: not alive(broker), 15, "the broker to be reaped")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        if broker is not None and alive(broker):  # (what this test exists to catch: reap it here)
            os.killpg(broker, signal.SIGKILL)
