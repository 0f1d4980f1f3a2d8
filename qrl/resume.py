"""Resuming a run: its own settings (RUN_DIR/config.json), with the few a resume may change.

A resume continues the same run: the same algorithm, environment, network and data, so every
setting stays what the run started with except those that only say how long and how it is
watched (RESUMABLE). A run directory is enough to resume (`qrl run --resume --run-dir D`);
flags, --set and --config given with it must agree with the run's own settings or change only
those, and anything else is one line naming the settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qrl.config import ConfigError, FileConfig

RESUMABLE = ("total_steps", "max_seconds", "target_return", "eval_every_frames", "eval_every_s", "eval_episodes",
             "checkpoint_every_s", "learner_threads", "samples_in_flight")
"""The run settings a resume may change (the rest of run.* and all of algo.* are the run's own)."""

CONFIG_FILE = "config.json"


def saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The settings the run in run_dir was last started with (the learner writes them at start)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no run to resume in {run_dir} (it has no {CONFIG_FILE})")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(saved, dict) or not {"algo", "env", "run", "args"} <= saved.keys():
        raise ConfigError(f"{path} is not a qrl run's config (it needs algo, env, run and args)")
    return saved


def resumed_file(run_dir: str | Path, given: FileConfig, algo: str | None, env: str | None) -> tuple[FileConfig,
                                                                                                      dict]:
    """The run's own settings as a preset, with a given preset's values layered on (checked later
    by refuse_changes); and the saved config. Another algorithm or environment is refused here."""
    saved = saved_config(run_dir)
    for what, asked, own in (("algorithm", algo or given.algorithm, saved["algo"]), ("env", env or given.env,
                                                                                     saved["env"])):
        if asked is not None and asked != own:
            raise ConfigError(f"cannot resume the {own} run in {run_dir} with {what} {asked}")
    return FileConfig(algorithm=saved["algo"], env=saved["env"], actors=given.actors,
                      run={**saved["run"], **given.run}, algo={**saved["args"], **given.algo}), saved


def _plain(value: Any) -> Any:
    """Compare as saved: tuples as lists, ints equal to floats."""
    return json.loads(json.dumps(value))


def refuse_changes(saved: dict[str, Any], run: dict[str, Any], args: dict[str, Any] | None = None) -> None:
    """One ConfigError naming every setting that differs from the saved run's, other than those in
    RESUMABLE. Keys the saved config lacks (written by an older qrl) are not compared."""
    changed = [f"run.{k}" for k, v in run.items()
               if k not in RESUMABLE and k in saved["run"] and _plain(v) != _plain(saved["run"][k])]
    changed += [f"algo.{k}" for k, v in (args or {}).items()
                if k in saved["args"] and _plain(v) != _plain(saved["args"][k])]
    if changed:
        raise ConfigError(f"a resume cannot change {', '.join(changed)} (the run's own settings, in its "
                          f"{CONFIG_FILE}); it may change run.{', run.'.join(RESUMABLE)}")


def check_budget_left(run_dir: str | Path, frames: int, elapsed_s: float, total_steps: int,
                      max_seconds: float | None) -> None:
    """A resumed run with nothing left to train is refused (it would only evaluate again)."""
    if frames >= total_steps:
        raise ConfigError(f"the run in {run_dir} has trained {frames:,} frames, its whole budget of "
                          f"run.total_steps={total_steps:,}: give a larger --total-steps to extend it")
    if max_seconds is not None and elapsed_s >= max_seconds:
        raise ConfigError(f"the run in {run_dir} has trained {elapsed_s:,.0f} s, its whole time limit of "
                          f"run.max_seconds={max_seconds:g}: give a larger --max-seconds to extend it")
