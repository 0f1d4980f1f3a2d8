"""An algorithm from a package of its own: docs/example_algorithm is built and installed with pip
into a directory of its own (the test environment stays as it was) and `qrl run --algo reinforce`
trains with it, found through the `qrl.algorithms` entry point group."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plugin")
    source = tmp / "src"
    shutil.copytree(ROOT / "docs" / "example_algorithm", source)
    target = tmp / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(source)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert any(p.name.startswith("qrl_example_algorithm") and p.suffix == ".dist-info" for p in target.iterdir())
    return target


def qrl(site: Path, *args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "qrl", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def test_an_installed_package_adds_an_algorithm_that_qrl_run_trains(site, tmp_path):
    run_dir = tmp_path / "run"
    out = qrl(site, "run", "--algo", "reinforce", "--env", "CartPole-v1", "--actors", "1", "--total-steps", "4000",
              "--target-return", "1e9", "--run-dir", str(run_dir), "--no-progress", "--set", "run.num_envs=4",
              "--set", "run.eval_episodes=2", "--set", "algo.lr=0.02", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "frame budget of 4000 reached" and summary["updates"] > 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == "reinforce" and config["args"]["lr"] == 0.02
    evaluated = qrl(site, "evaluate", str(run_dir), "--episodes", "2", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0 and json.loads(evaluated.stdout)["algo"] == "reinforce", evaluated.stderr


def test_without_the_package_the_algorithm_is_unknown(tmp_path):
    out = subprocess.run([sys.executable, "-m", "qrl", "run", "--algo", "reinforce", "--run-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    line = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and "run: unknown algorithm 'reinforce'; available: " in line, out.stderr
    assert {"dqn", "ppo", "r2d2"} <= set(line.partition("available: ")[2].split(", "))
