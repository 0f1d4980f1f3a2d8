"""Pong with learning on, side by side in one sitting (issue 28 part 5): qrl's PPO preset
(configs/ppo-ALE-Pong-v5.yaml) and Ape-X, each with 2 actor processes, against Sample Factory
2.1.1's APPO with 2 workers x 4 envs, all on the CPU.

For each, one after the other for --seconds: trained samples/s (agent steps the learner trained
on: qrl's frames_consumed rate, Sample Factory's "Throughput"), env steps/s collected, and the
peak PSS of the whole cluster (every process of the run, sampled every second). Rates are the
median of the second half of the run (after warm-up and the replay's learning_starts).

Sample Factory runs from a venv of its own (--sf-python; it pins gymnasium 0.29), whose
sitecustomize must register ale-py's v4 ids in every process it spawns; without it, the
Sample Factory row is skipped and says why.

    python scripts/bench_pong.py [--seconds 180] [--sf-python /tmp/sfvenv/bin/python] [--quick]
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parser, print_table, save_results

ROOT = Path(__file__).resolve().parents[1]
QRL = [sys.executable, "-m", "qrl", "run", "--actors", "2", "--no-progress", "--total-steps", "100000000",
       "--set", "run.target_return=1e9", "--set", "run.eval_every_frames=0"]
CASES = {
    "qrl ppo (configs/ppo-ALE-Pong-v5.yaml)": QRL + ["--config", "configs/ppo-ALE-Pong-v5.yaml"],
    # Ape-X's replay ratio is about one sample per inserted transition (Horgan et al. 2018: ~19 updates/s of
    # 512 against ~12k transitions/s); apex's default (24, tuned on CartPole) would hold the actors to the learner.
    "qrl apex (ale vector env, frames once)": QRL + ["--algo", "apex", "--env", "ALE/Pong-v5", "--set",
                                                     "actor.vector_env=ale", "--set", "run.segment_length=128",
                                                     "--set", "algo.samples_per_insert=1"],
}


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            kids = task / "children"
            if kids.exists():
                todo += [int(k) for k in kids.read_text().split()]
    return out


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += sum(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                         if line.startswith("Pss:"))
        except OSError:
            pass
    return total / 1024


def run(cmd: list[str], seconds: float, log: Path) -> float:
    """Run cmd for `seconds`, then stop it; the peak PSS of its process tree in MB."""
    peak = 0.0
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end and proc.poll() is None:
            peak = max(peak, pss_mb(tree(proc.pid)))
            time.sleep(1.0)
        subprocess.run(["pkill", "-INT", "-s", str(proc.pid)], check=False)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
            proc.wait(10)
    return peak


def second_half(values: list[float]) -> float | None:
    values = values[len(values) // 2:]
    return statistics.median(values) if values else None


def qrl_rates(run_dir: Path) -> tuple[float | None, float | None]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    return (second_half([r["consumed_per_s"] for r in train if r.get("consumed_per_s") is not None]),
            second_half([r["frames_per_s"] for r in train if r.get("frames_per_s") is not None]))


def sf_rates(log: Path) -> tuple[float | None, float | None]:
    text = log.read_text(errors="replace")
    throughput = [float(x) for x in re.findall(r"Throughput: 0: ([0-9]+(?:\.[0-9]+)?)", text)]
    fps = [float(x) for x in re.findall(r"Fps is \(10 sec: ([0-9]+(?:\.[0-9]+)?)", text)]
    return second_half(throughput), (second_half(fps) or 0) / 4 or None  # Atari env frames: 4 per agent step


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--sf-python", default="/tmp/sfvenv/bin/python")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.seconds = 45.0
    rows, results = [], {}
    work = Path(tempfile.mkdtemp(prefix="bench-pong-"))
    for name, cmd in CASES.items():
        run_dir = work / re.sub(r"\W+", "-", name)
        peak = run(cmd + ["--run-dir", str(run_dir)], a.seconds, work / f"{run_dir.name}.log")
        trained, collected = qrl_rates(run_dir)
        results[name] = {"trained_per_s": trained, "collected_per_s": collected, "peak_pss_mb": peak}
    if Path(a.sf_python).exists():
        name = "Sample Factory 2.1.1 APPO (2 workers x 4 envs)"
        log = work / "sf.log"
        peak = run([a.sf_python, "-m", "sf_examples.atari.train_atari", "--env=atari_pong", "--experiment=bench",
                    f"--train_dir={work / 'sf'}", "--num_workers=2", "--num_envs_per_worker=4", "--device=cpu"],
                   a.seconds, log)
        trained, collected = sf_rates(log)
        results[name] = {"trained_per_s": trained, "collected_per_s": collected, "peak_pss_mb": peak}
    else:
        print(f"Sample Factory skipped: no {a.sf_python} (pip install sample-factory==2.1.1 into a venv of its own)")
    ref = next((v["trained_per_s"] for k, v in results.items() if k.startswith("Sample")), None)
    fmt = lambda x: "-" if x is None else f"{x:,.0f}"
    for name, r in results.items():
        ratio = "-" if not ref or r["trained_per_s"] is None else f"{r['trained_per_s'] / ref:.2f}"
        rows.append([name, fmt(r["trained_per_s"]), fmt(r["collected_per_s"]), fmt(r["peak_pss_mb"]), ratio])
    table = print_table(["system", "trained samples/s", "env steps/s", "peak PSS MB", "trained vs SF"], rows)
    save_results("pong", {"quick": a.quick, "seconds": a.seconds, **table, "results": results, "logs": str(work)})


if __name__ == "__main__":
    main()
