"""Write BENCHMARKS.md from bench/results/*.json: every figure comes from a results file that a
benchmark script wrote (none is copied by hand), with each target and whether it is met.

    python scripts/benchmarks_md.py            # after make bench / make learn; also run by make bench
"""

from __future__ import annotations

import json
import statistics
from typing import Any, Callable

from _common import RESULTS, rate

ROOT = RESULTS.parents[1]
OUT = ROOT / "BENCHMARKS.md"


def med(values) -> float:
    return statistics.median(list(values))


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def kfps(x: float) -> str:
    return f"{x / 1000:.1f}k"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def measured_on(data: dict) -> str:
    m = data.get("machine", {})
    return (f"Measured {m.get('date', '?')} on {m.get('cores', '?')} cores ({m.get('cpu', '?')}), Python "
            f"{m.get('python', '?')}, torch {m.get('torch', '?')}, pyzmq {m.get('pyzmq', '?')}: "
            f"`{data.get('command', '?')}`.")


# -- the targets: each function of the results gives (qrl, reference, ratio, met: None without a target), or None

def _transport(size: str):
    def row(r):
        d = r["transport"]
        runs = d and d["runs"].get(f"tcp/{size}")
        if not runs:
            return None
        ratio = med(runs["seconds"]["raw"]) / med(runs["seconds"]["qrl"])
        gbs = lambda mode: runs["count"] * {"64KB": 65536, "1MB": 1 << 20, "8MB": 8 << 20}[size] / med(
            runs["seconds"][mode]) / 1e9
        return f"{gbs('qrl'):.2f} GB/s", f"raw pyzmq {gbs('raw'):.2f} GB/s", fmt(ratio), ratio >= 0.9
    return row


def _collection(r, env: str, n: int, key: str) -> float | None:
    """The median of one collection figure (frames/s, start-up, PSS) for env with n actors."""
    d = r["collection"]
    runs = d and d["runs"].get(f"{env}/{n}")
    return None if not runs else med(x[key] for x in runs)


def _collection_ratio(env: str):
    def row(r):
        q, raw = _collection(r, env, 2, "qrl"), _collection(r, env, 2, "raw")
        if q is None:
            return None
        return f"{kfps(q)} frames/s", f"2 raw loops {kfps(raw)}", fmt(q / raw), q / raw >= 0.9
    return row


def _scaling(r):
    q2, q32 = _collection(r, "CartPole-v1", 2, "qrl"), _collection(r, "CartPole-v1", 32, "qrl")
    if q2 is None or q32 is None:
        return None
    return f"{kfps(q32)} frames/s", f"`--n 2` {kfps(q2)}", fmt(q32 / q2), q32 / q2 >= 0.8


def _actors_32(key: str, limit: float, unit: str):
    def row(r):
        v = _collection(r, "CartPole-v1", 32, key)
        return None if v is None else (f"{v:,.{1 if unit == 'MB' else 2}f} {unit}", "", "", v <= limit)
    return row


def _inference(env: str, n: int, key: str):
    """Central inference at n actors: (central, local) medians of one figure."""
    def get(r):
        d = r["inference"]
        runs = d and d["runs"].get(f"{env}/{n}")
        return None if not runs else (med(x[key] for x in runs["central"]), med(x[key] for x in runs["local"]))
    return get


def _inference_pss(r):
    v = _inference("CartPole-v1", 32, "actors_pss_mb")(r)
    if v is None:
        return None
    return f"{v[0]:,.0f} MB", f"32 policy-running actors {v[1]:,.0f} MB", fmt(v[0] / v[1]), v[0] <= 290


def _inference_rate(env: str, n: int):
    def row(r):
        v = _inference(env, n, "frames_s")(r)
        if v is None:
            return None
        return f"{kfps(v[0])} frames/s", f"local inference {kfps(v[1])}", fmt(v[0] / v[1]), None
    return row


def _replay(cap: str, what: str, impl: str, target: Callable[[float, float], bool]):
    def row(r):
        d = r["replay"]
        runs = d and d["runs"].get(f"{cap}/{what}")
        if not runs:
            return None
        q, ref = med(runs[impl]), med(runs["sb3 ReplayBuffer (8 envs/add)" if "insert" in what else "sb3 ReplayBuffer"])
        return f"{q:,.0f}/s", f"SB3 {ref:,.0f}/s", fmt(q / ref, 1), target(q, ref)
    return row


def _learner(case: str):
    def row(r):
        runs = r["learner"] and r["learner"]["runs"].get(case)
        if not runs:
            return None
        q, ref = med(runs["qrl"]), med(runs["torch defaults"])
        return f"{rate(q)} upd/s", f"torch defaults {rate(ref)}", fmt(q / ref), None
    return row


def _solve(task: str):
    def row(r):
        d = r.get(f"solve-{task}")
        if not d or d.get("ratio") is None:
            return None
        s = d["median_solve_s"]
        return (f"{s['qrl']:.1f} s (median of {d['seeds']})", f"SB3 {s['sb3']:.1f} s", fmt(d["ratio"]),
                d["ratio"] <= d["target_ratio"])
    return row


def _holds(task: str):
    def row(r):
        d = r.get(f"solve-{task}")
        if not d or d.get("stop_at_solve"):
            return None
        return (f"{d['holds']['qrl']} of {d['seeds']} seeds", f"SB3 {d['holds']['sb3']} of {d['seeds']}", "",
                d["holds"]["qrl"] == d["seeds"])
    return row


def _imitation(task: str):
    def row(r):
        d = r.get(f"imitation-{task}")
        if not d:
            return None
        seeds = len(d["results"]) // 2
        reached = lambda side: sum(x.get("reached", False) for x in d["results"] if x["side"] == side)
        m = d["medians"]
        qrl_s, their_s = m["qrl"]["seconds"], m["imitation"]["seconds"]
        if qrl_s is None:
            return (f"qrl reached it in {reached('qrl')} of {seeds}", "", "", False)
        if their_s is None:  # the peer did not reach it in every seed within the budget
            return (f"{qrl_s:.1f} s (median of {seeds})", f"imitation: {reached('imitation')} of {seeds} within "
                    f"{d['budget']:,} steps", "", True)
        return (f"{qrl_s:.1f} s (median of {seeds})", f"imitation {their_s:.1f} s", fmt(d["seconds_ratio"]),
                d["seconds_ratio"] <= 1.0)
    return row


def _waiting(r):
    d = r.get("solve-dqn-CartPole-v1")
    if not d:
        return None
    w = [x["wait_fraction"] for x in d["runs"]["qrl"]]
    return f"{100 * min(w):.1f}-{100 * max(w):.1f}%", "", "", max(w) < 0.05


def _overhead(actors: str, phase: str, limit: float):
    def row(r):
        d = r["overhead"]
        m = d and d["actors"].get(actors)
        return None if not m else (f"{m['median_s'][phase]:.2f} s (median of {d['rounds']})", "", "",
                                   m["median_s"][phase] <= limit)
    return row


def _rllib(index: int, better: Callable[[float], bool], label: str):
    def row(r):
        d = r["rllib"]
        if not d:
            return None
        q, ref = d["medians"]["qrl"][index], d["medians"]["rllib"][index]
        unit = " s" if index == 0 else ""
        return f"{q:,.1f}{unit}", f"RLlib PPO {ref:,.1f}{unit}", f"{q / ref:.2f}{label}", better(q / ref)
    return row


def _mcts(game: str):
    def row(r):
        d = r["mcts"]["search"][f"{game}/network"]
        return rate(med(d["batched"])), rate(med(d["reference"])), f"{d['ratio']:.1f}x", None
    return row


def _soak(r):
    d = r["soak"]
    if not d:
        return None
    growth = max(v["rss_mb"]["growth_pct"] for v in d["report"].values() if v["rss_mb"])
    return f"at most {growth:+.1f}% over {d['minutes']:g} min", "", "", d["rss_ok"] and d["fds_ok"]


# (figure, target, the results file it comes from, how)
TARGETS: list[tuple[str, str, str, Callable]] = [
    ("transport, tcp 64 KB messages", ">= 0.9", "transport", _transport("64KB")),
    ("transport, tcp 1 MB messages", ">= 0.9", "transport", _transport("1MB")),
    ("transport, tcp 8 MB messages", ">= 0.9", "transport", _transport("8MB")),
    ("collection CartPole, `qrl actor --n 2` vs 2 raw loops at once", ">= 0.9", "collection",
     _collection_ratio("CartPole-v1")),
    ("collection LunarLander, `--n 2` vs 2 raw loops", ">= 0.9", "collection", _collection_ratio("LunarLander-v3")),
    ("collection CartPole, `--n 32` vs `--n 2`", ">= 0.8", "collection", _scaling),
    ("32 actor processes started and pushing (CartPole)", "<= 3 s", "collection", _actors_32("startup_s", 3.0, "s")),
    ("PSS of 32 actor processes (CartPole)", "<= 1 GB", "collection", _actors_32("pss_mb", 1024, "MB")),
    ("replay insert, 1M capacity", ">= 1M/s", "replay", _replay("1000000", "insert transitions/s",
                                                      "qrl uniform (256/segment)", lambda q, ref: q >= 1e6)),
    ("uniform sampling, batches of 256, 1M capacity", ">= SB3", "replay", _replay("1000000", "sample batches of 256/s",
                                                                        "qrl uniform", lambda q, ref: q >= ref)),
    ("learner updates/s, DQN CartPole preset (one thread)", "(no target)", "learner", _learner("dqn-mlp")),
    ("learner updates/s, PPO CartPole preset (one thread)", "(no target)", "learner", _learner("ppo-mlp")),
    ("learner updates/s, PPO LunarLander preset (one thread)", "(no target)", "learner", _learner("ppo-lunarlander")),
    ("time to 475, DQN CartPole-v1, launch included", "<= 0.5x SB3", "solve-dqn-CartPole-v1",
     _solve("dqn-CartPole-v1")),
    ("... DQN's solve holds at the 100k budget", "3 of 3", "solve-dqn-CartPole-v1", _holds("dqn-CartPole-v1")),
    ("learner time waiting for data (DQN CartPole)", "< 5%", "solve-dqn-CartPole-v1", _waiting),
    ("time to 475, c51 preset (DQN + categorical return head) vs SB3 DQN, CartPole-v1", "<= 0.5x SB3",
     "solve-c51-CartPole-v1", _solve("c51-CartPole-v1")),
    ("... c51's solve holds at the 100k budget", "3 of 3", "solve-c51-CartPole-v1", _holds("c51-CartPole-v1")),
    ("time to 475, PPO CartPole-v1, launch included", "<= 1.0x SB3", "solve-ppo-CartPole-v1",
     _solve("ppo-CartPole-v1")),
    ("time to 200, PPO LunarLander-v3, launch included", "<= 0.5x SB3", "solve-ppo-LunarLander-v3",
     _solve("ppo-LunarLander-v3")),
    ("time to 90% of the expert, GAIL CartPole-v1, launch included", "<= 1.0x imitation",
     "imitation-gail-CartPole-v1", _imitation("gail-CartPole-v1")),
    ("time to 90% of the expert, AIRL CartPole-v1, launch included", "<= 1.0x imitation",
     "imitation-airl-CartPole-v1", _imitation("airl-CartPole-v1")),
    ("time to 90% of the expert, GAIL Pendulum-v1, launch included", "<= 1.0x imitation",
     "imitation-gail-Pendulum-v1", _imitation("gail-Pendulum-v1")),
    ("`qrl run` launch to first update, PPO CartPole, 2 actors", "<= 1.5 s", "overhead",
     _overhead("2", "first update", 1.5)),
    ("`qrl run` target reached to every process exited, 2 actors", "<= 1.0 s", "overhead",
     _overhead("2", "target to exit", 1.0)),
    ("`qrl run` target reached to every process exited, 32 actors", "<= 1.0 s", "overhead",
     _overhead("32", "target to exit", 1.0)),
    ("env frames consumed/s with learning on, PPO CartPole (2 actors / 2 env runners)", ">= 10x RLlib", "rllib",
     _rllib(1, lambda x: x >= 10, "x")),
    ("time to 475 from launch, PPO CartPole", "<= 0.1x RLlib", "rllib", _rllib(0, lambda x: x <= 0.1, "")),
    ("MCTS simulations/s, one process, tic-tac-toe with AlphaZero's network: batched vs plain Python",
     "(no target)", "mcts", _mcts("tictactoe")),
    ("MCTS simulations/s, one process, Connect Four with AlphaZero's network: batched vs plain Python",
     "(no target)", "mcts", _mcts("connect4")),
    ("RSS growth after warm-up, every process (soak)", "a few %", "soak", _soak),
    ("PSS of 32 env-only actors (central inference, CartPole)", "well under 580 MB (<= 290)", "inference",
     _inference_pss),
    ("central inference CartPole, 8 actors: frames/s vs local inference", "(no target)", "inference",
     _inference_rate("CartPole-v1", 8)),
    ("central inference LunarLander, 8 actors: frames/s vs local inference", "(no target)", "inference",
     _inference_rate("LunarLander-v3", 8)),
]


# -- sections ---------------------------------------------------------------------------------

SECTIONS = [
    ("transport", "Transport (`scripts/bench_transport.py`)",
     "Messages/s through a PUSH/PULL pair: raw pyzmq frames, qrl's wire format (msgpack header + "
     "zero-copy numpy frames), msgpack of the arrays as bytes, and pickle, in one process pair per mode."),
    ("collection", "Collection (`scripts/bench_collection.py`)",
     "Env frames/s arriving at the broker from `qrl actor --n N` against min(N, cores) raw "
     "SyncVectorEnv loops with the same inference stepping at the same time; CPU and PSS of the actor "
     "processes; seconds from launching `qrl actor --n N` until all N push."),
    ("replay", "Replay (`scripts/bench_replay.py`)",
     "qrl's replay table (insert, uniform sampling, sampling plus wire encoding) against "
     "stable-baselines3's ReplayBuffer."),
    ("learner", "Learner updates/s (`scripts/bench_learner.py`)",
     "One learner's updates/s on batches of its preset's shapes, one thread, as qrl runs it (torch's fused "
     "Adam kernel, parameter lists kept between updates, one multi-tensor Polyak lerp) against the same "
     "learner with torch's defaults (Adam's loop over tensors, parameters walked every update), alternated "
     "in each round. In a `qrl run` the learner shares the 2 cores with broker and actors and runs slower."),
    ("overhead", "Fixed overhead of `qrl run` (`scripts/bench_overhead.py`)",
     "Seconds from launch to each phase of a PPO CartPole run (broker bound, run registered, first "
     "segment at the broker, first update, target reached, every process exited), and from the "
     "target to exit. Medians."),
    ("inference", "Central inference (`scripts/bench_inference.py`)",
     "Env frames/s at the broker from `qrl actor --n N --inference ADDR` (env-only actors, one "
     "`qrl inference` server on the CPU) against `qrl actor --n N` (each actor runs the policy), alternated "
     "in each round; the step round trip of one more env-only actor while the N run; PSS of the env-only "
     "actors, of the server and of the policy-running actors; seconds until N env-only actors push."),
    ("mcts", "Tree search (`scripts/bench_mcts.py`)",
     "Simulations/s of one process (torch on one thread): qrl's PUCT search vectorised over a batch of games "
     "(numpy, one network call per simulation for the batch) against the same search written the plain way "
     "(a Python object per node, one network call per leaf; qrl/search/reference.py), with AlphaZero's "
     "network (32 channels, 2 residual blocks) and without one (uniform priors: the tree's own cost); then a "
     "local cluster's games/s on the tic-tac-toe preset (one actor process and the learner)."),
    ("rllib", "RLlib (`scripts/bench_rllib.py`, `make bench PEERS=rllib`)",
     "PPO CartPole-v1: qrl's preset with 2 actors against RLlib's PPO with 2 env runners on the same cores."),
    ("soak", "Soak (`scripts/soak.py`, `make soak MINUTES=60`)",
     "DQN and PPO clusters side by side, an actor worker SIGKILLed every 5 minutes and each broker "
     "once; RSS and descriptors of every process."),
]


def solve_sections(results: dict) -> list[str]:
    out = []
    for name in sorted(k for k in results if k.startswith("solve-")):
        d = results[name]
        task = d["task"]
        png = RESULTS / f"learning_curves-{task}.png"
        out += [f"### Time to solve: {task} (`scripts/bench_solve.py --task {task}`)", "",
                f"qrl's preset `configs/{task}.yaml` against stable-baselines3 with rl-baselines3-zoo's "
                f"hyperparameters ({', '.join(f'{k}={v}' for k, v in d['sb3_hyperparameters'].items())}), seeds "
                f"interleaved; seconds from launch (start-up included) to the first 20-episode deterministic "
                f"evaluation >= {d['threshold']:g}"
                + (", runs stopped there." if d.get("stop_at_solve") else
                   f", and the evaluation at the {d['steps']:,}-step budget."),
                "", measured_on(d), "", table(d["header"], d["table"]), ""]
        if png.exists():
            out += [f"![learning curves {task}]({png.relative_to(ROOT)})", ""]
    return out


def imitation_sections(results: dict) -> list[str]:
    out = []
    for name in sorted(k for k in results if k.startswith("imitation-")):
        d = results[name]
        algo = d["task"].split("-")[0].upper()
        out += [f"### Imitation: {d['task']} (`scripts/bench_imitation.py --task {d['task']}`)", "",
                f"qrl's preset `configs/{d['task']}.yaml` against the `imitation` library's {algo} "
                "on stable-baselines3's PPO with the same PPO settings, network size and 10 expert episodes, seeds "
                f"interleaved; env steps and seconds from launch to the first 10-episode deterministic evaluation "
                f">= {d['target']:g} (90% of the expert's normalized return).", "",
                measured_on(d), "", table(d["header"], d["table"]), ""]
    return out


def _match(r: dict) -> str:
    """A board-game check's match against its fixed opponent (scripts/learn.py GAME_CHECKS)."""
    m = r.get("match")
    if not m:
        return ""
    return f", then {m['wins']} won, {m['draws']} drawn, {m['losses']} lost of {m['games']} against {m['opponent']}"


def learn_section(results: dict) -> list[str]:
    rows = []
    for name in sorted(k for k in results if k.startswith("learn-")):
        d = results[name]
        per_seed = "; ".join(
            (f"retrained on the recovered reward to {r['env_return']:.0f} (recovered at {r['recovered_at_frames']:,} "
             f"frames), {r['wall_s']:.0f} s" if r["ok"] and "env_return" in r else
             f"{r['frames']:,} frames, {r['wall_s']:.0f} s" + _match(r) if r["ok"] else
             f"missed: reached at {r['frames']:,} frames" if r.get("frames") else f"missed (best {r.get('best')})")
            for r in d["results"])
        if "contrast" in d:  # the preset without what the task needs (memory, exploration), same seeds and budget
            c = d["contrast"]
            best = ", ".join(f"{r.get('best')}" for r in c["results"])
            per_seed += (f". Contrast `{c['preset']}` on it: {c['reached']} of {len(c['results'])} "
                         f"reached (best evaluations {best})")
        rows.append([f"`{d['preset']}`", f">= {d['target']:g} within {d['budget']:,}",
                     f"{d['reached']} of {d['seeds']}", per_seed, d["machine"]["date"]])
    if not rows:
        return []
    return ["## Learning checks (`make learn`, scripts/learn.py)", "",
            "Each preset trained with `qrl run` for 3 seeds: env frames and wall seconds (launch to exit) "
            "at the first deterministic evaluation (10 episodes) that reached the target.", "",
            table(["preset", "target", "seeds reached", "per seed", "date"], rows), ""]


def render() -> str:
    """BENCHMARKS.md's text from the results files as they are now."""
    names = [p.stem for p in sorted(RESULTS.glob("*.json")) if not p.stem.endswith("-quick")]
    results = {n: json.loads((RESULTS / f"{n}.json").read_text()) for n in names}
    for name, *_ in SECTIONS:
        results.setdefault(name, None)
    lines = ["# Benchmarks", "",
             "Generated by `scripts/benchmarks_md.py` from the results files in `bench/results/` (written by "
             "the scripts named in each section; `make bench`, `make learn`). Do not edit by hand: rerun the "
             "benchmark and the generator. One machine, shared and noisy: figures are medians of several "
             "rounds, and each ratio is measured side by side in one run.", "",
             "## Summary against the targets", ""]
    rows = []
    for figure, target, source, fn in TARGETS:
        try:
            got = fn(results)
        except (KeyError, TypeError, ZeroDivisionError):
            got = None
        if got is None:
            rows.append([figure, "not measured", "", "", target, "-", ""])
        else:
            qrl, ref, ratio, met = got
            rows.append([figure, qrl, ref, ratio, target, "-" if met is None else "yes" if met else "**no**",
                         results[source]["machine"]["date"]])
    lines += [table(["figure", "qrl", "reference (same run)", "ratio", "target", "met", "measured"], rows), ""]
    for name, title, what in SECTIONS:
        d = results.get(name)
        if not d:
            continue
        shown = table(d["header"], d["table"]) if "header" in d else "(a results file without its table: rerun it)"
        lines += [f"## {title}", "", what, "", measured_on(d), "", shown, ""]
        for extra in d.get("also", []):  # a comparison run side by side with the main table
            lines += [extra["text"], "", table(extra["header"], extra["table"]), ""]
        png = RESULTS / f"{name}.png"  # the scripts that draw one write it beside their results
        if png.exists():
            lines += [f"![{name}]({png.relative_to(ROOT)})", ""]
    lines += ["## Time to solve", ""] + solve_sections(results)
    imitation = imitation_sections(results)
    lines += (["## Imitation against the `imitation` library", ""] + imitation) if imitation else []
    lines += learn_section(results)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
