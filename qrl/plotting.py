"""`qrl plot`: learning curves from metrics.jsonl, several runs on one figure (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from qrl.config import ConfigError
from qrl.metrics import read


def plot_runs(run_dirs: Sequence[str | Path], output: str | Path) -> Path:
    """Two panels, return against env frames and against wall time: each run's deterministic
    evaluations (markers, solid) and the actors' mean return of the last 100 episodes (thin)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("qrl plot needs matplotlib: pip install 'qrl[plot]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (by_frames, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, run_dir in enumerate(run_dirs):
        path = Path(run_dir)
        if not (path / "metrics.jsonl").exists():
            raise ConfigError(f"{path} has no metrics.jsonl (not a run directory?)")
        records = read(path)
        label, colour = path.name, f"C{i % 10}"
        evals = [m for m in records if m["kind"] == "eval"]
        train = [m for m in records if m["kind"] == "train" and m.get("mean_return_100") is not None]
        for ax, x in ((by_frames, "frames"), (by_time, "elapsed_s")):
            if train:
                ax.plot([m[x] for m in train], [m["mean_return_100"] for m in train], color=colour, alpha=0.35,
                        linewidth=1, label=f"{label} return(100)")
            if evals:
                ax.plot([m[x] for m in evals], [m["mean_return"] for m in evals], "o-", color=colour,
                        markersize=3, label=f"{label} evaluation")
    by_frames.set_xlabel("environment frames")
    by_time.set_xlabel("wall time (s)")
    for ax in (by_frames, by_time):
        ax.set_ylabel("return")
        ax.grid(alpha=0.3)
    by_frames.legend(fontsize="small")
    fig.tight_layout()
    output = Path(output)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
