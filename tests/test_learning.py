"""Learning regression: the same `qrl run` a user types, judged by deterministic evaluation."""

import json
import subprocess
import sys

import pytest

from qrl.metrics import read

pytestmark = pytest.mark.slow


def test_dqn_solves_cartpole_within_100k_frames(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "qrl", "run", "--algo", "dqn", "--env", "CartPole-v1", "--actors", "4",
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
