"""Checkpoints: torch.save to a temporary file, then an atomic rename, so a
crash mid-write never leaves a torn checkpoint where the last good one was.
Loading uses weights_only=True: a checkpoint holds tensors and plain data only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FILENAME = "checkpoint.pt"


def save(run_dir: str | Path, state: dict[str, Any]) -> Path:
    import torch  # here, not at the top: the CLI imports CheckpointError in processes without torch (the broker)

    path = Path(run_dir) / FILENAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


KEYS = ("learner", "counters", "config")
"""What every qrl checkpoint holds (see qrl.learner.LearnerRun.save)."""


class CheckpointError(ValueError):
    """A file that is not a readable qrl checkpoint; the message is one line for the user."""


def load(path: str | Path) -> dict[str, Any]:
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (pickle, zip, unsupported global) with long texts
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path} is not a readable checkpoint ({first_line})") from None
    if not isinstance(state, dict) or not all(k in state for k in KEYS):
        raise CheckpointError(f"{path} is not a qrl checkpoint (it lacks {', '.join(k for k in KEYS if not isinstance(state, dict) or k not in state)})")
    return state
