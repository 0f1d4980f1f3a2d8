"""Everyday use from the command line, as a user of stable-baselines3 or CleanRL meets it:
resuming and extending a run from its directory alone, budgets that hold, and a user's own
environment module in the working directory, the same in every command."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import wait_for
from qrl import Callback
from qrl.api import train, training
from qrl.metrics import read
from tests.test_cli import one_line_error

QRL = str(Path(sys.executable).with_name("qrl"))  # the console script, as a user runs it


def qrl(*args, cwd=None, timeout=180):
    return subprocess.run([QRL, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def evaluations(run_dir: Path) -> int:
    return sum(1 for m in read(run_dir) if m["kind"] == "eval")


def test_a_run_directory_is_enough_to_resume_and_a_larger_budget_extends_the_run(tmp_path):
    run_dir = tmp_path / "run"
    first = qrl("run", "--algo", "ppo", "--env", "CartPole-v1", "--total-steps", "4096", "--target-return", "1000",
                "--actors", "2", "--run-dir", str(run_dir), "--no-progress")
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.loads((run_dir / "summary.json").read_text())
    evals = evaluations(run_dir)

    # Nothing left to train: refused in one line, before any process starts; nothing written.
    spent = qrl("run", "--resume", "--run-dir", str(run_dir), "--no-progress")
    one_line_error(spent, "has trained", "run.total_steps=4,096", "--total-steps")
    assert "broker at" not in spent.stdout and evaluations(run_dir) == evals
    # What the run is cannot change on resume; each refusal names the settings.
    one_line_error(qrl("run", "--resume", "--run-dir", str(run_dir), "--total-steps", "8192", "--set",
                       "run.num_envs=2", "--set", "run.segment_length=8"),
                   "cannot change run.num_envs, run.segment_length")
    one_line_error(qrl("run", "--resume", "--run-dir", str(run_dir), "--total-steps", "8192", "--set", "algo.lr=0.5"),
                   "cannot change algo.lr", "it may change run.total_steps, run.max_seconds")
    one_line_error(qrl("run", "--resume", "--run-dir", str(run_dir), "--algo", "dqn"),
                   "cannot resume the ppo run", "with algorithm dqn")

    extended = qrl("run", "--resume", "--run-dir", str(run_dir), "--total-steps", "8192", "--no-progress")
    assert extended.returncode == 0, extended.stderr[-2000:]
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["run_id"] == before["run_id"] and after["updates"] > before["updates"]
    segment = 8 * 128  # one segment of the preset-free ppo run: num_envs x segment_length
    assert 8192 <= after["frames"] <= 8192 + segment, after
    assert json.loads((run_dir / "config.json").read_text())["run"]["total_steps"] == 8192
    assert evaluations(run_dir) > evals


@pytest.mark.parametrize("algo", ["dqn", "impala", "ppo"])
def test_a_run_stops_within_one_segment_of_its_frame_budget(tmp_path, algo):
    run_dir = tmp_path / algo
    out = qrl("run", "--algo", algo, "--env", "CartPole-v1", "--total-steps", "3000", "--target-return", "1000",
              "--actors", "3", "--run-dir", str(run_dir), "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads((run_dir / "config.json").read_text())["run"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 3000 <= summary["frames"] <= 3000 + config["num_envs"] * config["segment_length"], summary
    assert summary["updates"] > 0


def test_an_off_policy_budget_that_ends_before_learning_starts_is_refused_before_start(tmp_path):
    out = qrl("run", "--algo", "td3", "--env", "Pendulum-v1", "--total-steps", "900", "--run-dir", str(tmp_path / "r"))
    one_line_error(out, "before its first update", "algo.learning_starts", "run.total_steps=900")
    assert "broker at" not in out.stdout and not (tmp_path / "r").exists()


CORRIDOR = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np


    class Corridor(gym.Env):
        """Walk right to the end of a short corridor."""

        observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def __init__(self, length=4):
            self.length = length

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.pos = 0
            return self._obs(), {}

        def step(self, action):
            self.pos = max(0, self.pos + (1 if action == 1 else -1))
            done = self.pos == self.length
            return self._obs(), float(done), done, False, {}

        def _obs(self):
            return np.array([self.pos / self.length], np.float32)
''')


def test_an_environment_module_in_the_working_directory_works_in_every_command(tmp_path):
    (tmp_path / "myenv.py").write_text(CORRIDOR)
    common = ("--env", "myenv:Corridor", "--total-steps", "2048", "--target-return", "1000", "--no-progress")
    for mode, run_dir in ((("--local",), "local"), ((), "cluster"), (("--inference",), "inference")):
        out = qrl("run", "--algo", "ppo", *common, *mode, "--actors", "2", "--run-dir", run_dir, cwd=tmp_path)
        assert out.returncode == 0, (mode, out.stderr[-2000:])
        evaluated = qrl("evaluate", run_dir, "--episodes", "2", "--json", cwd=tmp_path)
        assert evaluated.returncode == 0, evaluated.stderr
        assert json.loads(evaluated.stdout.splitlines()[-1])["env"] == "myenv:Corridor"
    # The learner imports it too: its error is about the settings, not a missing module.
    one_line_error(qrl("learner", "--env", "myenv:Corridor", "--set", "run.env_kwargs={width: 3}", cwd=tmp_path),
                   "cannot make environment 'myenv:Corridor'", "width")


def _start_broker(procs, run_dir: Path, *extra: str) -> str:
    run_dir.mkdir(parents=True)
    procs.start(run_dir.name, "broker", "--port", "0", "--address-file", str(run_dir / "broker.json"), *extra)
    wait_for(lambda: (run_dir / "broker.json").exists(), 30, "the broker's address file")
    return json.loads((run_dir / "broker.json").read_text())["address"]


def test_status_finds_a_run_by_its_directory_or_alone_under_runs_and_says_when_keys_are_needed(procs, tmp_path):
    from qrl.protocol.transport import keygen

    keygen(tmp_path / "keys")
    runs = tmp_path / "runs"
    address = _start_broker(procs, runs / "keyed", "--keys", str(tmp_path / "keys"))
    (runs / "ended").mkdir()  # a run whose broker is gone
    (runs / "ended" / "broker.json").write_text(json.dumps({"address": "tcp://127.0.0.1:9", "pid": 2**22 + 7}))

    one_line_error(qrl("status", "--broker", address, "--timeout", "2"), "without keys: it uses keys (CURVE)", "--keys")
    for target in (("keyed",), ()):  # the run directory (address and keys from it), or the one live run
        out = qrl("status", *target, "--json", cwd=runs.parent if not target else runs)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["broker_id"]
    _start_broker(procs, runs / "plain")
    one_line_error(qrl("status", cwd=tmp_path), "2 live runs under runs/", "qrl status runs/keyed")
    one_line_error(qrl("status", "nowhere", cwd=tmp_path), "neither a run directory nor a broker address")
    one_line_error(qrl("status", "runs/ended", "--timeout", "1", cwd=tmp_path), "no broker answered")


class StopAtSecondEval(Callback):
    """A callback that notes every event and stops the run at its second evaluation."""

    every_s = 0.3

    def __init__(self):
        self.events = []

    def on_start(self, run_dir):
        self.events.append(("start", str(run_dir)))

    def on_eval(self, record):
        self.events.append(("eval", record["frames"]))
        return sum(1 for e in self.events if e[0] == "eval") < 2

    def on_checkpoint(self, record):
        self.events.append(("checkpoint", record["path"]))

    def on_metrics(self, record):
        self.events.append(("metrics", record["frames"]))

    def on_end(self, summary):
        self.events.append(("end", summary["stop_reason"]))


@pytest.mark.parametrize("local", [False, True], ids=["cluster", "local"])
def test_callbacks_see_evaluations_checkpoints_and_metrics_and_one_can_stop_the_run(tmp_path, local):
    recorder = StopAtSecondEval()
    result = train("ppo", "CartPole-v1", actors=2, steps=500_000, target_return=1e9, local=local,
                   run_dir=tmp_path / "run", callbacks=[recorder],
                   config={"run.eval_every_frames": 4096, "run.eval_episodes": 2, "run.checkpoint_every_s": 0.5})
    kinds = [kind for kind, _ in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert result.summary["stop_reason"] == "stopped: StopAtSecondEval asked to stop"
    assert result.summary["frames"] < 100_000  # stopped long before its budget
    evals = [frames for kind, frames in recorder.events if kind == "eval"]
    # Two, maybe one more while the request travels (a tick, then the learner's check), then the final one.
    assert 3 <= len(evals) <= 4 and evals == sorted(evals)
    assert "checkpoint" in kinds and "metrics" in kinds
    assert recorder.events[-1] == ("end", result.summary["stop_reason"])
    assert not (tmp_path / "run" / "stop").exists()


def test_the_training_iterator_yields_metrics_as_the_run_goes_and_leaving_it_stops_the_run(tmp_path):
    seen = []
    for record in training("ppo", "CartPole-v1", actors=2, steps=500_000, target_return=1e9,
                           run_dir=tmp_path / "run", config={"run.eval_every_frames": 4096}):
        seen.append(record["kind"])
        if {"train", "eval"} <= set(seen):
            break
    assert seen[-1] in ("train", "eval")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop_reason"] == "stopped: the training iterator was closed" and summary["frames"] < 100_000
