"""Helpers shared by the benchmark scripts: result files and plain-text tables."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def machine() -> dict:
    import numpy
    import torch
    import zmq

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {"cores": len(os.sched_getaffinity(0)), "cpu": cpu,
            "python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "date": time.strftime("%Y-%m-%d")}


def save_results(name: str, data: dict) -> Path:
    """bench/results/NAME.json (NAME-quick.json for --quick runs, which are not results)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'-quick' if data.get('quick') else ''}.json"
    path.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine(), **data}, indent=2,
                               default=str))
    print(f"\nresults: {path}")
    return path


def calls_per_s(fn, seconds: float) -> float:
    """Calls per second of fn over about `seconds`."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def rate(x: float) -> str:
    """A rate for a table: whole numbers from 10 up, else two decimals (PPO LunarLander's learner
    makes about one update a second)."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.2f}"


def print_table(header: list[str], rows: list[list]) -> dict:
    """Print the table; return it as {"header", "table"} for the results file (BENCHMARKS.md shows it)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    return {"header": header, "table": rows}


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's argument parser, with its docstring as the help text."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def actor_sweep_parser(doc: str | None, n: str, seconds: float, num_envs_help: str) -> argparse.ArgumentParser:
    """The options of a benchmark that runs N actor processes on some environments, in rounds."""
    p = parser(doc)
    p.add_argument("--envs", default="CartPole-v1,LunarLander-v3")
    p.add_argument("--n", default=n, help="actor process counts")
    p.add_argument("--num-envs", type=int, default=8, help=num_envs_help)
    p.add_argument("--seconds", type=float, default=seconds)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    return p
