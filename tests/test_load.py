"""The short version of scripts/load_test.py: 32 real actor processes, nothing lost."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_32_actors_lose_nothing():
    out = subprocess.run([sys.executable, "load_test.py", "--actors", "32", "--seconds", "3"], cwd=SCRIPTS,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "ok   sent == received" in out.stdout and "FAIL" not in out.stdout
