"""Each frame once (issue 28 part 1): Atari-shaped DQN replay, side by side in one run.

- table bytes per transition: qrl's table of frames (the references and its share of the frame
  ring, full) against the same table holding pixels (run.store_frames false) and against
  stable-baselines3's ReplayBuffer(optimize_memory_usage=True) (its observation array per slot);
- actor -> broker bytes per env frame: the wire size of the segments qrl's SegmentWriter encodes
  (the real writer, DQN's make_items, 8 envs), in units of one 84x84 frame, each way; and R2D2's
  (burn-in and sequences overlapping across segments), with the table bytes it allocates;
- sample: batches of 32 stacked 84x84x4 observations (with actions, returns, next observations)
  per second from a full table, qrl (gathering frames) against sb3's optimize_memory_usage buffer.

Frames are random pixels in a frame-stack structure: each step brings one new frame, episodes of
EPISODE steps end with a final frame and restart with a stack filled with its first frame. Nothing
here depends on what the pixels show (no compression).

    python scripts/bench_frames.py [--quick]
"""

from __future__ import annotations

import statistics

import gymnasium as gym
import numpy as np

from _common import calls_per_s, parser, print_table, save_results
from qrl import algorithm
from qrl.acting.segments import SegmentWriter
from qrl.brokers.tables import FRAMES, TableConfig, make_table
from qrl.config import build
from qrl.protocol import wire

OBS = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
ACT = gym.spaces.Discrete(6)
FRAME_BYTES = 84 * 84
ENVS, EPISODE = 8, 500


class FrameStacks:
    """ENVS environments' stacked observations, one new random frame per step."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.obs = np.repeat(self.new_frames()[:, None], 4, axis=1)

    def new_frames(self) -> np.ndarray:
        return self.rng.integers(0, 256, (ENVS, 84, 84), dtype=np.uint8)

    def step(self):
        self.t += 1
        nxt = np.concatenate([self.obs[:, 1:], self.new_frames()[:, None]], axis=1)
        done = np.full(ENVS, self.t % EPISODE == 0)
        obs = np.where(done[:, None, None, None], np.repeat(self.new_frames()[:, None], 4, axis=1), nxt)
        return nxt, done, obs


VARIANTS = {"pixels": (False, False), "frames once": (True, False), "frames once + links": (True, True)}
"""Label -> (run.store_frames, links to the previous segment)."""


def writer_segments(algo: str, variant: str, T: int):
    """The schema, and an endless stream of (meta, arrays, wire bytes) the real writer encodes for
    `algo` (its default arguments) on FrameStacks."""
    store, links = VARIANTS[variant]
    agent = algorithm.load(algo)
    args = build(agent.Args, {}, "algo")
    net = agent.make_policy(OBS, ACT, args)
    schema = algorithm.item_schema(agent, net, OBS, ACT, args, ENVS, T, store, links)
    fields = schema.frames.fields if schema.frames else ()

    def stream():
        writer = SegmentWriter(agent, args, "r", 0, "x", ENVS,
                               {"segment_length": T, "frame_fields": fields, "frame_links": links})
        state = agent.make_core(args, 0, 1, ENVS, 0).initial_state(ENVS)  # R2D2's items carry it
        env, start = FrameStacks(), np.ones(ENVS, bool)
        while True:
            obs = env.obs
            nxt, done, new_obs = env.step()
            writer.record(obs, np.zeros(ENVS, np.int64), np.ones(ENVS, np.float32), done, np.zeros(ENVS, bool), nxt,
                          {}, start, state)
            env.obs, start = new_obs, done
            if writer.full:
                frames = writer.encode()
                writer.mark_sent()
                decoded = wire.decode(frames)
                yield decoded.meta, dict(decoded.arrays), sum(len(f) for f in frames)

    return schema, stream()


def r2d2_wire_and_table(variant: str, T: int, capacity: int, segments: int = 34) -> tuple[float, float]:
    """R2D2 (burn-in 40, sequences of 80, 5-step targets; an item per env and segment of T steps):
    frames per env frame on the wire (the real writer, after its first 2 segments) and table bytes
    per env frame as allocated for `capacity` items."""
    schema, stream = writer_segments("r2d2", variant, T)
    sizes = [nbytes for _, (_, _, nbytes) in zip(range(segments), stream)]
    wire_frames = statistics.mean(sizes[2:]) / (T * ENVS) / FRAME_BYTES
    return wire_frames, schema.table_bytes(capacity) / (capacity * schema.frames_per_item)


def filled(variant: str, T: int, capacity: int, sampler: str = "uniform"):
    """A table filled past full by the writer's segments (both rings have wrapped), and the mean
    wire bytes of a segment."""
    schema, segments = writer_segments("dqn", variant, T)
    table = make_table(TableConfig(capacity=capacity, min_size=0, sampler=sampler), 0, schema)
    sizes = []
    while table.next_id < capacity * 1.5:
        meta, arrays, nbytes = next(segments)
        sizes.append(nbytes)
        table.insert(arrays, pool=arrays.pop(FRAMES, None), stream=(meta["actor_id"], meta["incarnation"]),
                     seq=meta["seq"])
    return table, statistics.mean(sizes)


def table_bytes(table) -> int:
    ring = table.ring.frames.nbytes + table.item_frame0.nbytes if table.ring is not None else 0
    return sum(a.nbytes for a in table.storage.values()) + table.ids.nbytes + ring


def sb3_filled(capacity: int):
    from stable_baselines3.common.buffers import ReplayBuffer

    buf = ReplayBuffer(capacity, OBS, ACT, device="cpu", n_envs=ENVS, optimize_memory_usage=True,
                       handle_timeout_termination=False)
    env = FrameStacks(1)
    for _ in range(capacity // ENVS + 1):
        obs = env.obs
        nxt, done, env.obs = env.step()
        buf.add(obs, nxt, np.zeros((ENVS, 1)), np.ones(ENVS, np.float32), done, [{} for _ in range(ENVS)])
    per_transition = (buf.observations.nbytes + buf.actions.nbytes + buf.rewards.nbytes + buf.dones.nbytes) / capacity
    return buf, per_transition


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--capacity", type=int, default=100_000)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.seconds, a.capacity = 1, 0.3, 10_000
    rows, results = [], {}
    for T in (32, 128):
        for variant in VARIANTS:
            table, segment_bytes = filled(variant, T, a.capacity)
            label = f"qrl {variant}, segments of {T} steps"
            wire_frames = segment_bytes / (T * ENVS) / FRAME_BYTES
            per = table_bytes(table) / table.size
            results[f"wire {label}"], results[f"table {label}"] = wire_frames, per
            rows.append(["actor -> broker per env frame", label, f"{wire_frames:.3f} frames", ""])
            rows.append(["table bytes per transition", label, f"{per:,.0f} B", f"held {table.size:,}"])
            del table
    for variant in VARIANTS:
        wire_frames, per = r2d2_wire_and_table(variant, 40, a.capacity // 40, 6 if a.quick else 34)
        label = f"qrl r2d2 {variant}, segments of 40 steps"
        results[f"wire {label}"], results[f"table {label}"] = wire_frames, per
        rows.append(["actor -> broker per env frame", label, f"{wire_frames:.3f} frames", ""])
        rows.append(["table bytes per env frame", label, f"{per:,.0f} B", "allocated"])
    buf, sb3_bytes = sb3_filled(a.capacity)
    results["table sb3"] = sb3_bytes
    rows.append(["table bytes per transition", "sb3 ReplayBuffer(optimize_memory_usage=True)", f"{sb3_bytes:,.0f} B",
                 ""])
    table, _ = filled("frames once + links", 128, a.capacity)
    impls = {"qrl table of frames: sample 32": lambda: table.sample(32),
             "qrl table of frames: sample 32 + encode": lambda: wire.encode("batch", {}, table.sample_arrays(32)),
             "sb3 optimize_memory_usage: sample 32": lambda: buf.sample(32)}
    rates = {name: [] for name in impls}
    for _ in range(a.rounds):  # interleaved rounds
        for name, fn in impls.items():
            rates[name].append(calls_per_s(fn, a.seconds))
    ref = statistics.median(rates["sb3 optimize_memory_usage: sample 32"])
    for name, vals in rates.items():
        med = statistics.median(vals)
        rows.append(["batches/s", name, f"{med:,.0f}", f"{med / ref:.2f}x sb3"])
    out = print_table(["figure", "what", "median", "note"], rows)
    save_results("frames", {"quick": a.quick, "rounds": a.rounds, "capacity": a.capacity, **out,
                            "results": results, "sample_rates": rates})


if __name__ == "__main__":
    main()
