"""`qrl status`: the broker's view of the cluster, as a table (rich) or JSON."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def render(stats: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    s = stats
    console.print(f"[bold]broker[/bold] {s.get('broker_id')}  run {s.get('run_id') or '-'}  "
                  f"up {s['uptime_s']:,.0f} s  weights v{s['weights_version']}  snapshots {s.get('snapshots', 0)}")
    console.print(f"segments {s['segments']:,}  frames {s['frames']:,} (trained on {s.get('frames_consumed', 0):,}, "
                  f"dropped {s.get('frames_dropped', 0):,})  episodes {s['episodes']:,}  "
                  f"return(100) {_fmt(s['mean_return_100'], '.2f')}  policy lag {_fmt(s['policy_lag_100'], '.1f')}")
    console.print(f"replay {s['replay_size']:,}/{s['replay_capacity']:,}  inserts {s['insert_rate']:,.0f}/s  "
                  f"samples {s['sample_rate']:,.0f}/s  batches {s['batches']:,}  pending {s['pending_samples']}")
    console.print(f"gaps {s['gaps']}  duplicates {s['duplicates']}  rejected "
                  + (", ".join(f"{k} {v}" for k, v in sorted(s['rejected'].items())) or "none"))
    if s.get("dropped_stale") or s.get("max_policy_lag") is not None:
        console.print(f"max policy lag {s.get('max_policy_lag')}  "
                      f"dropped as stale: {s.get('dropped_stale', 0):,} items "
                      f"({s.get('dropped_stale_segments', 0):,} segments at ingest)")
    if s.get("actor_errors"):
        console.print("actor errors: " + "; ".join(f"{k} {v} (last: {s['actor_error_last'].get(k, '')})"
                                                   for k, v in sorted(s["actor_errors"].items())))
    if s.get("refused_connections"):
        refused = sorted(s["refused_connections"].items())
        console.print("refused connections: " + ", ".join(f"{k} {v}" for k, v in refused))
    table = Table("actor", "incarnations", "segments", "frames", "frames/s", "policy v", "gaps", "last seen")
    now = time.time()
    for actor_id, a in sorted(s.get("per_actor", {}).items(), key=lambda kv: int(kv[0])):
        seen = a.get("last_seen")
        table.add_row(actor_id, str(a.get("incarnations")), f"{a['segments']:,}", f"{a['frames']:,}",
                      _fmt(a.get("frames_per_s")), str(a.get("policy_version")), str(a.get("gaps", 0)),
                      "-" if seen is None else f"{now - seen:.1f} s ago")
    console.print(table)
    rest = s.get("per_actor_rest") or {}
    if rest.get("actors"):
        console.print(f"... and {rest['actors']:,} actors seen less recently: {rest['segments']:,} segments, "
                      f"{rest['frames']:,} frames, {rest['gaps']:,} gaps")


# -- which broker: a run directory, an address, or the live runs under runs/ ----------------------

DEFAULT_BROKER = "tcp://127.0.0.1:5555"


class StatusError(ValueError):
    """No broker to ask; the message is one line for the user."""


@dataclass(frozen=True)
class Target:
    address: str
    keys: str | None  # a CURVE key directory
    run_dir: Path | None = None


def find_target(target: str | None, broker: str | None, keys: str | None, runs: Path = Path("runs")) -> Target:
    """The broker `qrl status [TARGET] [--broker ADDRESS]` asks. TARGET: a run directory (its
    broker.json names the address and the keys) or an address. Neither: the one live run under
    runs/ (its broker process is alive), else DEFAULT_BROKER (`make cluster`'s port)."""
    if target and broker:
        raise StatusError("give a run directory or address, or --broker, not both")
    if target is None and broker is None:
        live = live_runs(runs)
        if len(live) > 1:
            raise StatusError(f"{len(live)} live runs under {runs}/ ({', '.join(map(str, live))}): "
                              f"give one, as in: qrl status {live[0]}")
        return from_run_dir(live[0], keys) if live else Target(DEFAULT_BROKER, keys)
    text = target or broker
    if Path(text).is_dir():
        return from_run_dir(Path(text), keys)
    if "://" not in text:
        raise StatusError(f"{text} is neither a run directory nor a broker address (tcp://HOST:PORT)")
    return Target(text, keys)


def from_run_dir(run_dir: Path, keys: str | None) -> Target:
    path = run_dir / "broker.json"
    if not path.exists():
        raise StatusError(f"{run_dir} has no broker.json: no broker was started for it (or it is a learner's "
                          f"run directory on another machine than its broker)")
    try:
        doc = json.loads(path.read_text())
        return Target(str(doc["address"]), keys or doc.get("keys"), run_dir)
    except (ValueError, KeyError, TypeError) as exc:
        raise StatusError(f"{path} holds no broker address ({type(exc).__name__})") from None


def live_runs(runs: Path) -> list[Path]:
    """Run directories under runs/ whose broker process (the pid in broker.json) is alive."""
    alive = []
    for path in sorted(runs.glob("*/broker.json")):
        try:
            os.kill(int(json.loads(path.read_text())["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # gone, or not a broker's address file
        alive.append(path.parent)
    return alive
