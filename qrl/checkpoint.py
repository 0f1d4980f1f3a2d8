"""Checkpoints: torch.save to a temporary file, then an atomic rename, so a
crash mid-write never leaves a torn checkpoint where the last good one was.
Loading uses weights_only=True: a checkpoint holds tensors and plain data only."""

from __future__ import annotations

import os
import textwrap
import warnings
import zipfile
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


class CheckpointError(ValueError):
    """A file that is not a readable qrl checkpoint; the message is one line for the user."""


def load(path: str | Path, require: tuple[str, ...] = ("learner", "config")) -> dict[str, Any]:
    """The saved state; ``require``: the entries the caller needs (a resume also needs "counters")."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_file() and not zipfile.is_zipfile(path):  # torch.save writes zip archives
        raise CheckpointError(f"{path} is not a readable checkpoint (not a file torch.save writes)")
    try:
        with warnings.catch_warnings():  # a junk file can make torch warn before it fails: one line only
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (pickle, zip, unsupported global) with long texts
        first_sentence = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{path} is not a readable checkpoint ({textwrap.shorten(first_sentence, 120)})") \
            from None
    missing = [k for k in require if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a qrl checkpoint (it lacks {', '.join(missing)})")
    return state
