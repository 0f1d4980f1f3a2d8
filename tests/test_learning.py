"""Learning regression: the same `qrl run` a user types, judged by deterministic evaluation."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qrl.metrics import read

pytestmark = pytest.mark.slow
PRESET = Path(__file__).resolve().parent.parent / "configs" / "dqn-CartPole-v1.yaml"


def test_dqn_solves_cartpole_within_100k_frames(tmp_path):
    """With the preset a user is pointed to (configs/dqn-CartPole-v1.yaml). dqn's bare defaults (Huber
    threshold 1, constant lr) first reach 475 anywhere from 41k to past 100k frames (measured before
    and after issue 27: 82k, 67k, 41k, 46k, 100.1k), so a test of them fails by chance."""
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "qrl", "run", "--config", str(PRESET), "--actors", "4",
         "--total-steps", "100000", "--run-dir", str(run_dir), "--no-progress"],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    evals = [m for m in read(run_dir) if m["kind"] == "eval"]
    solved = [m for m in evals if m["mean_return"] >= 475]
    assert solved, f"no evaluation reached 475: {[(m['frames'], m['mean_return']) for m in evals]}"
    assert solved[0]["frames"] <= 100_000
    assert summary["stop_reason"].startswith("evaluation reached")
    assert summary["final_eval_mean"] >= 475 and (run_dir / "checkpoint.pt").exists()
