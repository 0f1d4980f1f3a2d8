"""Wasted collection: of the env frames actors sent, the fraction dropped unused (too stale on
arrival, or overflowing a queue), for every preset in local and central acting mode, from each
run's summary (`stale_fraction`, what the learner's live line shows as "stale").

Issue 30 asks for at most 5% for every preset in both modes once the broker grants credits; this
script is the measurement. Each run is `qrl run --config PRESET` on a frame budget, with the
preset's own number of actors, and the target return out of reach so that every run collects its
whole budget.

    python scripts/bench_waste.py --quick            # CartPole presets, 20k frames each (minutes)
    python scripts/bench_waste.py [--frames N] [--presets a,b]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import parser, print_table, save_results

ROOT = Path(__file__).resolve().parents[1]
QUICK = ("ppo-CartPole-v1", "dqn-CartPole-v1", "impala-CartPole-v1")
SLOW = ("MinAtar", "ALE", "LunarLander")


def waste(preset: str, central: bool, frames: int, run_dir: Path) -> dict:
    """The summary of one run of the preset: its frames and the fraction of them dropped unused."""
    cmd = [sys.executable, "-m", "qrl", "run", "--config", str(ROOT / "configs" / f"{preset}.yaml"),
           "--total-steps", str(frames), "--target-return", "1e9", "--run-dir", str(run_dir), "--no-progress",
           *(["--inference"] if central else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"frames": summary["frames"], "stale_fraction": summary["stale_fraction"],
            "elapsed_s": summary["elapsed_s"]}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--presets", default="", help="comma-separated preset names (default: every preset but the "
                                                  "slow image and LunarLander ones; --quick: CartPole)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    presets = [x for x in a.presets.split(",") if x] or (
        list(QUICK) if a.quick else sorted(f.stem for f in (ROOT / "configs").glob("*.yaml")
                                           if not any(s in f.stem for s in SLOW)))
    frames = 20_000 if a.quick else a.frames
    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            for mode in ("local", "central"):
                result = waste(preset, mode == "central", frames, Path(tmp) / f"{preset}-{mode}")
                runs[f"{preset} {mode}"] = result
                shown = result.get("error") or f"{100 * result['stale_fraction']:.1f}%"
                rows.append([preset, mode, f"{result.get('frames', 0):,}", shown])
                print(f"{preset} {mode}: {shown}", flush=True)
    table = print_table(["preset", "acting", "frames", "wasted (dropped unused)"], rows)
    save_results("waste", {"quick": a.quick, "frames": frames, **table, "runs": runs})


if __name__ == "__main__":
    main()
