"""Soak: a DQN and a PPO cluster (CartPole presets) run side by side for an hour by default,
with an actor worker SIGKILLed every few minutes and each broker SIGKILLed once (restarted from
its snapshot on the same port). Every process's RSS and open file descriptors are sampled
throughout; the target is no growth beyond a few percent after warm-up and no descriptor leak.

    python scripts/soak.py                  # 60 minutes; bench/results/soak.json and soak.png
    python scripts/soak.py --minutes 10
    python scripts/soak.py --quick          # about a minute: the machinery, not a result

Growth is judged per role (broker, learner, actor supervisor, each worker slot; a restarted
process keeps its role) as the median of the last tenth of the run against the median of the
tenth right after warm-up (the first quarter of the run, at least 2 and at most 10 minutes: the
replay table fills, torch and the allocators reach their working sets). Descriptors may not end
more than FD_SLACK above where they were after warm-up (a reconnecting socket holds one briefly).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, parser, print_table, save_results  # noqa: E402

from qrl.protocol.transport import Client, free_port_block  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"dqn": REPO / "configs" / "dqn-CartPole-v1.yaml", "ppo": REPO / "configs" / "ppo-CartPole-v1.yaml"}
ACTORS = 2
RSS_TARGET_PCT = 5.0
FD_SLACK = 2


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return sorted(int(x) for x in path.read_text().split())
    except OSError:
        return []


class Cluster:
    """One preset's broker, actor supervisor and learner as separate `qrl` processes."""

    def __init__(self, name: str, run_dir: Path):
        self.name, self.run_dir = name, run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port_block()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.logs = []
        self.broker = self._start("broker", "broker", "--port", str(self.port), "--snapshot-dir",
                                  str(run_dir / "snapshot"), "--snapshot-every", "30")
        self.actors = self._start("actors", "actor", "--n", str(ACTORS), "--broker", self.address)
        self.learner = self._start("learner", "learner", "--config", str(PRESETS[name]), "--broker", self.address,
                                   "--run-dir", str(run_dir / "run"), "--no-progress", "--total-steps", str(10**12),
                                   "--target-return", "1e9", "--set", "run.eval_every_frames=50000")
        self.broker_kills = self.worker_kills = 0

    def _start(self, role: str, *args: str) -> subprocess.Popen:
        log = (self.run_dir / f"{role}.log").open("a")
        self.logs.append(log)
        return subprocess.Popen([sys.executable, "-m", "qrl", *args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def processes(self) -> dict[str, int]:
        """Role -> pid; worker slots by their order under the supervisor."""
        roles = {"broker": self.broker.pid, "learner": self.learner.pid, "supervisor": self.actors.pid}
        for i, pid in enumerate(children(self.actors.pid)[:ACTORS]):
            roles[f"worker{i}"] = pid
        return roles

    def kill_worker(self, slot: int) -> None:
        workers = children(self.actors.pid)
        if workers:
            os.kill(workers[slot % len(workers)], signal.SIGKILL)
            self.worker_kills += 1

    def kill_broker(self) -> None:
        os.killpg(self.broker.pid, signal.SIGKILL)
        self.broker.wait(10)
        self.broker = self._start("broker", "broker", "--port", str(self.port), "--snapshot-dir",
                                  str(self.run_dir / "snapshot"), "--snapshot-every", "30")
        self.broker_kills += 1

    def alive(self) -> list[str]:
        return [r for r, p in (("broker", self.broker), ("actors", self.actors), ("learner", self.learner))
                if p.poll() is None]

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for role, p in (("learner", self.learner), ("actors", self.actors), ("broker", self.broker)):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                codes[role] = p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                codes[role] = p.wait(10)
        for log in self.logs:
            log.close()
        return codes


def broker_stats(address: str, ctx: zmq.Context) -> dict:
    client = Client(ctx, address, "soak", timeout_s=2.0)
    try:
        return client.request("get_stats", wait_s=10).meta
    finally:
        client.close()


def growth(samples: list[dict], role: str, key: str, warmup_s: float, total_s: float) -> dict | None:
    """Median over the tenth of the run right after warm-up against the median over the last tenth."""
    window = max(total_s / 10, 1.0)
    values = [(s["t"], s[role][key]) for s in samples if role in s and s[role][key] is not None]
    early = sorted(v for t, v in values if warmup_s <= t < warmup_s + window)
    late = sorted(v for t, v in values if t >= total_s - window)
    if not early or not late:
        return None
    early_m, late_m = early[len(early) // 2], late[len(late) // 2]
    return {"after_warmup": round(early_m, 1), "end": round(late_m, 1),
            "growth_pct": round(100 * (late_m - early_m) / max(early_m, 1e-9), 2),
            "max": round(max(v for t, v in values if t >= warmup_s), 1)}


def plot(samples: list[dict], names: list[str], warmup_s: float, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (make install-bench): no PNG")
        return None
    fig, axes = plt.subplots(2, len(names), figsize=(7 * len(names), 8), squeeze=False)
    for col, name in enumerate(names):
        roles = sorted({k for s in samples for k in s.get(name, {})})
        for row, key, label in ((0, "rss_mb", "RSS (MB)"), (1, "fds", "open file descriptors")):
            ax = axes[row][col]
            for role in roles:
                pts = [(s["t"] / 60, s[name][role][key]) for s in samples
                       if role in s.get(name, {}) and s[name][role][key] is not None]
                if pts:
                    ax.plot(*zip(*pts), label=role, linewidth=1)
            ax.axvline(warmup_s / 60, color="grey", linestyle=":", linewidth=1)
            ax.set_title(f"{name}: {label}")
            ax.set_xlabel("minutes")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"curves: {path}")
    return path


def growth_report(names: list[str], samples: list[dict], warmup_s: float, total_s: float
                  ) -> tuple[list[list], dict[str, dict]]:
    """Per cluster and process: RSS and descriptor growth after the warm-up (table rows, report)."""
    rows, report = [], {}
    for name in names:
        roles = sorted({k for s in samples for k in s.get(name, {})})
        series = [{"t": s["t"], **s[name]} for s in samples if name in s]
        for role in roles:
            rss = growth(series, role, "rss_mb", warmup_s, total_s)
            fds = growth(series, role, "fds", warmup_s, total_s)
            report[f"{name}/{role}"] = {"rss_mb": rss, "fds": fds}
            if rss and fds:
                rows.append([f"{name}/{role}", rss["after_warmup"], rss["end"], f"{rss['growth_pct']:+.1f}%",
                             fds["after_warmup"], fds["end"], fds["max"]])
    return rows, report


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--quick", action="store_true", help="about a minute, to prove the script runs (CI)")
    p.add_argument("--kill-worker-every", type=float, default=300.0, help="seconds between worker kills")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS/descriptor samples")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "soak")
    args = p.parse_args()
    if args.quick:
        args.minutes, args.kill_worker_every, args.sample_every = 1.0, 15.0, 1.0
    total_s = args.minutes * 60
    warmup_s = total_s / 4 if args.quick else min(max(total_s / 4, 120.0), 600.0)
    clusters = {name: Cluster(name, args.work_dir / name) for name in PRESETS}
    ctx = zmq.Context()
    samples: list[dict] = []
    events: list[dict] = []
    start = time.monotonic()
    next_kill, next_sample, slot = start + args.kill_worker_every, start, 0
    broker_kill_at = {name: start + total_s * (0.4 + 0.1 * i) for i, name in enumerate(clusters)}
    died: list[str] = []
    print(f"soak: {args.minutes:g} min, DQN and PPO CartPole clusters ({ACTORS} actors each), worker kill every "
          f"{args.kill_worker_every:g} s, one broker kill each; warm-up {warmup_s / 60:.1f} min", flush=True)
    try:
        while (now := time.monotonic()) - start < total_s:
            for name, c in clusters.items():
                missing = {"broker", "actors", "learner"} - set(c.alive())
                if missing:
                    died.append(f"{name}: {sorted(missing)} exited at {now - start:.0f} s")
                    raise RuntimeError(died[-1])
            if now >= next_sample:
                sample = {"t": round(now - start, 2)}
                for name, c in clusters.items():
                    sample[name] = {role: {"rss_mb": rss_mb(pid), "fds": open_fds(pid)}
                                    for role, pid in c.processes().items()}
                samples.append(sample)
                next_sample += args.sample_every
            if now >= next_kill:
                for c in clusters.values():
                    c.kill_worker(slot)
                events.append({"t": round(now - start, 1), "event": f"worker slot {slot % ACTORS} SIGKILLed"})
                slot += 1
                next_kill += args.kill_worker_every
            for name, at in list(broker_kill_at.items()):
                if now >= at:
                    clusters[name].kill_broker()
                    events.append({"t": round(now - start, 1), "event": f"{name} broker SIGKILLed and restarted"})
                    del broker_kill_at[name]
            time.sleep(0.2)
        final = {name: broker_stats(c.address, ctx) for name, c in clusters.items()}
    finally:
        codes = {name: c.stop() for name, c in clusters.items()}
        ctx.destroy(linger=0)

    rows, report = growth_report(list(clusters), samples, warmup_s, total_s)
    table = print_table(["process", "RSS MB after warm-up", "RSS MB at end", "growth", "fds after warm-up",
                         "fds at end", "fds max"], rows)
    rss_ok = all(r["rss_mb"]["growth_pct"] <= RSS_TARGET_PCT for r in report.values() if r["rss_mb"])
    fds_ok = all(r["fds"]["end"] <= r["fds"]["after_warmup"] + FD_SLACK for r in report.values() if r["fds"])
    for name, s in final.items():
        print(f"{name}: {s['frames']:,} frames, {s['batches']:,} batches, gaps {s['gaps']}, duplicates "
              f"{s['duplicates']}, rejected {s['rejected']}, weights version {s['weights_version']}")
    print(f"exit codes after SIGTERM: {codes}")
    print(f"target (growth <= {RSS_TARGET_PCT:g}% after warm-up, no descriptor growth): "
          f"RSS {'met' if rss_ok else 'MISSED'}, descriptors {'met' if fds_ok else 'MISSED'}"
          + (" (quick mode: too short to judge)" if args.quick else ""))
    png = plot(samples, list(clusters), warmup_s, RESULTS / f"soak{'-quick' if args.quick else ''}.png")
    save_results("soak", {"quick": args.quick, "minutes": args.minutes, "warmup_s": warmup_s,
                          "kill_worker_every_s": args.kill_worker_every, "events": events, "report": report, **table,
                          "rss_target_pct": RSS_TARGET_PCT, "rss_ok": rss_ok, "fds_ok": fds_ok,
                          "final_stats": {n: {k: s[k] for k in ("frames", "batches", "gaps", "duplicates", "rejected",
                                                                "weights_version", "restored")}
                                          for n, s in final.items()},
                          "exit_codes": codes, "png": str(png) if png else None, "samples": samples})
    clean_exit = all(code == 0 for cs in codes.values() for code in cs.values())
    if died or not clean_exit:
        print(f"FAILED: {died or codes}")
        return 1
    return 0 if args.quick or (rss_ok and fds_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
