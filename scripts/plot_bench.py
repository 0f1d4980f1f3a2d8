"""Learning curves of the time-to-solve runs (bench/results/solve-TASK.json) as PNGs
(bench/results/learning_curves-TASK.png): evaluation return against wall time (start-up
included) and against env steps.

    python scripts/plot_bench.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from _common import RESULTS  # noqa: E402

COLORS = {"qrl": "tab:blue", "sb3": "tab:orange"}


def plot(data: dict, out: Path) -> None:
    fig, (by_time, by_steps) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for system, runs in data["runs"].items():
        for seed, run in enumerate(runs):
            curve = run["curve"]
            label = f"{system}" if seed == 0 else None
            kw = dict(color=COLORS.get(system), alpha=0.8, lw=1.3, label=label)
            by_time.plot([c["time"] for c in curve], [c["mean_return"] for c in curve], **kw)
            by_steps.plot([c["frames"] for c in curve], [c["mean_return"] for c in curve], **kw)
    for ax, xlabel in ((by_time, "wall-clock seconds from launch"), (by_steps, "environment steps")):
        ax.axhline(data["threshold"], color="grey", ls="--", lw=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    by_time.set_ylabel(f"deterministic evaluation return ({data['env']}, 20 episodes)")
    by_time.legend()
    seeds = len(data["runs"]["qrl"])
    fig.suptitle(f"{data['task']}: qrl vs stable-baselines3 (zoo hyperparameters), {seeds} seeds each")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    for path in sorted(RESULTS.glob("solve-*.json")):
        if not path.stem.endswith("-quick"):
            plot(json.loads(path.read_text()), RESULTS / f"learning_curves-{path.stem[len('solve-'):]}.png")


if __name__ == "__main__":
    main()
