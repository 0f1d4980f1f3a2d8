"""Metrics: one JSON object per line in RUN_DIR/metrics.jsonl, always, and a
live progress line on the console (rich) while a terminal is attached."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from qrl.config import ConfigError

log = logging.getLogger("qrl.learner")


class MetricsWriter:
    """JSONL always; with tensorboard=True also TensorBoard event files in RUN_DIR/tb
    (every numeric value, as KIND/NAME against env frames)."""

    def __init__(self, run_dir: Path, tensorboard: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("--tensorboard needs the tensorboard package: "
                                  "pip install 'qrl[tensorboard]'") from None
            self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
        # A process killed mid-write leaves a torn last line; start ours on a fresh one.
        torn = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        self.file = self.path.open("a", buffering=1)  # line-buffered: a crash loses at most one line
        if torn:
            self.file.write("\n")

    def write(self, kind: str, **values: Any) -> None:
        self.file.write(json.dumps({"kind": kind, "time": time.time(), **values}) + "\n")
        if self.tb is not None and "frames" in values:
            for name, value in values.items():
                if name != "frames" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{kind}/{name}", value, values["frames"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run, skipping a line torn by a killed learner."""
    records = []
    with open(Path(run_dir) / "metrics.jsonl") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class ProgressView:
    """Env frames against the budget, with the run's vital signs beside the bar.
    Without a terminal (logs, CI) it logs the same line every ``log_every_s``."""

    def __init__(self, total_frames: int, enabled: bool, log_every_s: float = 10.0):
        console = Console(stderr=True)
        self.live = enabled and console.is_terminal
        self.log_every_s, self.last_log = log_every_s, 0.0
        self.progress = Progress(
            TextColumn("[bold]frames"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"), console=console, disable=not self.live,
        )
        self.task = self.progress.add_task("train", total=total_frames, status="starting")

    def __enter__(self) -> "ProgressView":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, frames: int, status: str) -> None:
        self.progress.update(self.task, completed=frames, status=status)
        now = time.monotonic()
        if not self.live and now - self.last_log >= self.log_every_s:
            self.last_log = now
            log.info("learner: frames %d | %s", frames, status)
