"""Callbacks for the Python API, with the events stable-baselines3 users know:

    class StopAt200(qrl.Callback):
        every_s = 5.0                                # how often on_metrics is called
        def on_eval(self, record):                   # each deterministic evaluation
            return record["mean_return"] < 200       # False stops the run (as in SB3)

    qrl.train("ppo", "CartPole-v1", callbacks=[StopAt200()])
    for record in qrl.training("ppo", "CartPole-v1"):  # or: the run's metrics as they come
        ...

Callbacks run in the calling process. They read what the learner writes to RUN_DIR/metrics.jsonl
(line by line, as it is written), so a run of separate processes and a run in one process
(local=True) call them the same way; a callback that asks to stop writes RUN_DIR/stop, which the
learner reads twice a second (`echo why > RUN_DIR/stop` stops a run from a shell too).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

STOP_FILE = "stop"


class Callback:
    """Override the events you need. An on_* method that returns False stops the run: the learner
    ends it as at its budget (final evaluation, checkpoint, summary with the reason)."""

    every_s: float = 10.0
    """Seconds between on_metrics calls."""

    def on_start(self, run_dir: Path) -> None:
        """Before any process starts."""

    def on_eval(self, record: dict[str, Any]) -> bool | None:
        """An evaluation: frames, updates, elapsed_s, mean_return, std_return, episodes (final: the last)."""

    def on_checkpoint(self, record: dict[str, Any]) -> bool | None:
        """A checkpoint was written: frames, updates, elapsed_s, path."""

    def on_metrics(self, record: dict[str, Any]) -> bool | None:
        """Every every_s seconds: the latest train record (frames, frames_per_s, updates_per_s,
        mean_return_100, replay_size, policy_lag, the algorithm's losses ...)."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """After the run: its summary (summary.json)."""


def request_stop(run_dir: str | Path, reason: str) -> None:
    path = Path(run_dir) / STOP_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(reason)
    os.replace(tmp, path)


def take_stop_request(run_dir: str | Path) -> str | None:
    """The reason a stop was asked for (and the request removed), or None."""
    path = Path(run_dir) / STOP_FILE
    try:
        reason = path.read_text().strip()[:200]
        path.unlink()
    except OSError:
        return None
    return reason or "asked to stop"


class MetricsTail:
    """The records appended to RUN_DIR/metrics.jsonl since this was made, whole lines only."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.partial = b""

    def new(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a killed learner
        return records


class Dispatcher:
    """Calls the callbacks with the run's new records; tick() is called a few times a second."""

    def __init__(self, run_dir: str | Path, callbacks: Iterable[Callback]):
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks)
        self.tail = MetricsTail(run_dir)
        self.latest: dict[str, Any] | None = None
        self.last_metrics = {id(cb): time.monotonic() for cb in self.callbacks}
        self.stop_asked = False
        for cb in self.callbacks:
            cb.on_start(self.run_dir)

    def tick(self) -> None:
        for record in self.tail.new():
            kind = record.get("kind")
            if kind == "train":
                self.latest = record
            elif kind in ("eval", "checkpoint"):
                for cb in self.callbacks:
                    self._answer(cb, getattr(cb, f"on_{kind}")(record))
        now = time.monotonic()
        for cb in self.callbacks:
            if self.latest is not None and now - self.last_metrics[id(cb)] >= cb.every_s:
                self.last_metrics[id(cb)] = now
                self._answer(cb, cb.on_metrics(self.latest))

    def _answer(self, cb: Callback, answer: bool | None) -> None:
        if answer is False and not self.stop_asked:
            self.stop_asked = True
            request_stop(self.run_dir, f"{type(cb).__name__} asked to stop")

    def finish(self, summary: dict[str, Any] | None) -> None:
        self.tick()  # the records written at the end (final evaluation, checkpoint)
        take_stop_request(self.run_dir)  # asked too late to matter: not left for a resume
        if summary is not None:
            for cb in self.callbacks:
                cb.on_end(summary)
