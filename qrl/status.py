"""`qrl status`: the broker's view of the cluster, as a table (rich) or JSON."""

from __future__ import annotations

import time
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
