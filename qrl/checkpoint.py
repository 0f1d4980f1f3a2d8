"""Checkpoints: torch.save to a temporary file, then an atomic rename, so a
crash mid-write never leaves a torn checkpoint where the last good one was.
Loading uses weights_only=True: a checkpoint holds tensors and plain data only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FILENAME = "checkpoint.pt"


def save(run_dir: str | Path, state: dict[str, Any]) -> Path:
    path = Path(run_dir) / FILENAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
