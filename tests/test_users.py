"""Day-one user workflows end to end: a preset trains the grid world in seconds, then
evaluate (terminal rendering, GIF), plot, TensorBoard files, status, and the Python API."""

import json
import re
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import zmq

import qrl
from qrl.metrics import read
from qrl.protocol.transport import Client
from conftest import wait_for

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).parent.parent / "configs"


def qrl_cmd(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "qrl", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("grid") / "run"
    out = qrl_cmd("run", "--config", str(CONFIGS / "ql-Grid-v0.yaml"), "--run-dir", str(run_dir), "--no-progress",
                  "--tensorboard")
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def test_the_grid_preset_learns_the_best_path(grid_run):
    summary = json.loads((grid_run / "summary.json").read_text())
    assert summary["stop_reason"].startswith("evaluation reached")
    assert summary["final_eval_mean"] == pytest.approx(0.93)  # 8 moves: the shortest path
    assert summary["algo"] == "ql" and summary["frames"] <= 100_000
    saved = (grid_run / "config.yaml").read_text()
    assert "algorithm: ql" in saved and "env: qrl/Grid-v0" in saved


def test_a_finished_run_stops_its_roles_in_the_right_order(grid_run):
    """When the learner is done, `qrl run` stops the actors while the broker still confirms their
    last segments, then the broker, while the learner checkpoints (and exits without teardown)."""
    actors_log = (grid_run / "actors.log").read_text()
    assert "stopped" in actors_log and "no broker to confirm" not in actors_log
    assert (grid_run / "broker.log").read_text().rstrip().endswith("broker: stopped")
    phases = [m["name"] for m in read(grid_run) if m["kind"] == "phase"]
    assert phases == ["registered", "first_update", "first_segment"] or phases == [
        "registered", "first_segment", "first_update"]
    evals = [m for m in read(grid_run) if m["kind"] == "eval"]
    assert evals[-1]["final"] and evals[-1]["mean_return"] == evals[-2]["mean_return"]  # the reaching one, reused
    from qrl import checkpoint

    assert checkpoint.load(grid_run, require=("learner", "counters"))["counters"]["token"]


def test_evaluate_renders_the_grid_and_each_actions_value(grid_run):
    out = qrl_cmd("evaluate", str(grid_run), "--episodes", "1", "--render", "terminal")
    assert out.returncode == 0, out.stderr
    steps = [block for block in out.stdout.split("\n\n") if block.startswith("episode 1 step")]
    assert len(steps) == 8
    first = steps[0].splitlines()
    assert first[1] == "A . . . ." and first[5] == ". . # . G"
    values = first[6].split()
    assert values[0::2] == ["up", "right", "down", "left"] and sum(v.endswith("*") for v in values) == 1
    assert "mean return 0.930 +/- 0.000 over 1 episodes" in out.stdout


def test_evaluate_saves_a_gif_of_an_episode(grid_run, tmp_path):
    gif = tmp_path / "grid.gif"
    out = qrl_cmd("evaluate", str(grid_run / "checkpoint.pt"), "--episodes", "2", "--gif", str(gif), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["mean"] == pytest.approx(0.93) and result["gif"] == str(gif)
    frames = imageio.mimread(gif)
    assert len(frames) == 9 and frames[0].shape[:2] == (160, 160)  # start + 8 moves
    assert not np.array_equal(frames[0], frames[-1])


def untrained_cartpole_checkpoint(run_dir):
    """A checkpoint as the learner writes it, of an untrained DQN on CartPole."""
    import dataclasses

    import torch

    from qrl import checkpoint, envs
    from qrl.algorithms import dqn
    from qrl.config import RunConfig, to_dict

    obs_space, action_space = envs.spaces("CartPole-v1")
    learner = dqn.Learner(obs_space, action_space, dqn.Args(), torch.device("cpu"))
    config = {"algo": "dqn", "env": "CartPole-v1", "run": to_dict(RunConfig()), "args": dataclasses.asdict(dqn.Args())}
    run_dir.mkdir()
    return checkpoint.save(run_dir, {"learner": learner.state_dict(), "config": json.dumps(config)})


def test_evaluate_errors_are_one_line_and_gifs_work_for_gymnasium_envs(tmp_path):
    out = qrl_cmd("evaluate", str(tmp_path), "--episodes", "1")
    assert out.returncode == 2 and "no checkpoint" in out.stderr
    ckpt = untrained_cartpole_checkpoint(tmp_path / "cartpole")
    out = qrl_cmd("evaluate", str(ckpt), "--episodes", "1", "--render", "terminal")
    assert out.returncode == 2 and "CartPole-v1 has no text rendering" in out.stderr, out.stderr
    gif = tmp_path / "cartpole.gif"
    out = qrl_cmd("evaluate", str(ckpt), "--episodes", "1", "--gif", str(gif), "--json")
    assert out.returncode == 0, out.stderr
    steps = json.loads(out.stdout.splitlines()[-1])["returns"][0]  # CartPole pays 1 per step
    frames = imageio.mimread(gif)
    # One frame per step plus the first; the GIF writer merges frames that render identically.
    assert 2 <= len(frames) <= steps + 1 and frames[0].shape[:2] == (400, 600)
    assert not np.array_equal(frames[0], frames[-1])


def test_plot_and_tensorboard_files(grid_run, tmp_path):
    png = tmp_path / "curves.png"
    out = qrl_cmd("plot", str(grid_run), str(grid_run), "-o", str(png))
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    events = list((grid_run / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(grid_run / "tb"))
    acc.Reload()
    evals = acc.Scalars("eval/mean_return")
    assert evals and evals[-1].value == pytest.approx(0.93, abs=1e-4)


def test_the_python_api_trains_and_evaluates(tmp_path):
    result = qrl.train("ql", "qrl/Grid-v0", actors=2, steps=100_000, run_dir=tmp_path / "api",
                       config={"run": {"eval_episodes": 3}, "algo.lr": 0.5})
    assert result.summary["final_eval_mean"] == pytest.approx(0.93)
    assert result.checkpoint.exists() and any(m["kind"] == "eval" for m in result.metrics)
    assert result.metrics == read(result.run_dir)
    ev = qrl.evaluate(result.run_dir, episodes=4)
    assert ev["mean"] == pytest.approx(0.93) and len(ev["returns"]) == 4
    with pytest.raises(qrl.config.ConfigError, match="unknown config key 'algo.learning_rate'"):
        qrl.train("ql", "qrl/Grid-v0", config={"algo.learning_rate": 1})


def start_endless_grid_learner(procs, address, run_dir):
    """A learner on the grid preset that never reaches its target (so it keeps serving)."""
    procs.start("learner", "learner", "--config", str(CONFIGS / "ql-Grid-v0.yaml"), "--broker", address,
                "--run-dir", str(run_dir), "--no-progress", "--target-return", "2")


def wait_for_actors(address, n):
    """The broker's per-actor stats once n actors have pushed."""
    ctx = zmq.Context()
    try:
        client = Client(ctx, address, "test")
        per_actor = lambda: client.request("get_stats", wait_s=15).meta["per_actor"]
        wait_for(lambda: len(per_actor()) == n, 60, f"{n} actors")
        stats = per_actor()
        client.close()
        return stats
    finally:
        ctx.destroy(linger=0)


def test_status_shows_the_brokers_view(procs, tmp_path):
    _, address = procs.start_broker()
    procs.start("actors", "actor", "--n", "2", "--broker", address)
    start_endless_grid_learner(procs, address, tmp_path / "run")
    wait_for_actors(address, 2)
    out = qrl_cmd("status", "--broker", address, "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert set(stats["per_actor"]) == {"0", "1"} and stats["segments"] > 0 and "frames_per_s" in stats["per_actor"]["0"]
    table = qrl_cmd("status", "--broker", address)
    assert table.returncode == 0 and "policy lag" in table.stdout and "frames/s" in table.stdout


def test_replicas_of_one_actor_command_get_distinct_ids_from_the_broker(procs, tmp_path):
    """What a Kubernetes Deployment does: the same `qrl actor --first-id auto` started twice."""
    _, address = procs.start_broker()
    for replica in range(2):
        procs.start(f"actors-{replica}", "actor", "--n", "2", "--first-id", "auto", "--total", "4",
                    "--broker", address)
    start_endless_grid_learner(procs, address, tmp_path / "run")
    per_actor = wait_for_actors(address, 4)
    assert set(per_actor) == {"0", "1", "2", "3"} and all(a["incarnations"] == 1 for a in per_actor.values())


def test_benchmarks_md_is_what_the_results_files_say():
    """BENCHMARKS.md is generated (scripts/benchmarks_md.py) from bench/results/*.json: no figure is
    copied by hand, and the committed file is the generator's output for the committed results."""
    import importlib.util

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        spec = importlib.util.spec_from_file_location("benchmarks_md", scripts / "benchmarks_md.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.OUT.read_text() == module.render(), "BENCHMARKS.md differs: run python scripts/benchmarks_md.py"
    finally:
        sys.path.remove(str(scripts))


def test_the_readme_preset_table_lists_every_preset():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    table = readme[readme.index("| preset |"):]
    table = table[:table.index("\n\n")]
    listed = set(re.findall(r"`configs/([^`]+\.yaml)`", table))
    presets = {p.name for p in (root / "configs").glob("*.yaml")}
    assert presets - listed == set(), f"presets missing from the README's preset table: {presets - listed}"
    assert listed - presets == set(), f"the README lists presets that do not exist: {listed - presets}"
