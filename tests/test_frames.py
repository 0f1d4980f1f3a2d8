"""Each frame once (issue 28 part 1, docs/frames.md): the writer's frame pool, references gathered
back into exactly the observations they replace, the table's frame ring (eviction, hostile
references, snapshots), and a broker that refuses what points outside a segment's frames."""

import dataclasses

import numpy as np
import pytest

from qrl import algorithm, frames
from qrl.brokers import snapshot
from qrl.brokers.tables import FRAMES, FrameSpec, ItemSchema, SchemaError, TableConfig, make_table
from qrl.config import build
from qrl.protocol import wire
from conftest import wait_for
from test_broker import SPEC, TOKEN, stats

K, H = 4, 3  # stacks of 4 frames of 3x3 pixels: frame v is all pixels equal to v


def frame(v):
    return np.full((H, H), v, np.uint8)


def stack(*values):
    return np.stack([frame(v) for v in values])


def window(obs_stacks, next_stacks):
    """obs, next_obs [L, 1, K, H, H] of one env from lists of frame values."""
    return (np.stack([stack(*s) for s in obs_stacks])[:, None], np.stack([stack(*s) for s in next_stacks])[:, None])


LAYOUT = frames.Layout(K, (H, H), "|u1")


def test_stacks_at_an_episode_boundary_are_filled_and_each_frame_is_kept_once():
    # An episode of frames 1, 2, 3 ends at step 2 (its final frame 3); the next one starts with
    # frame 7, its first stack filled with it as FrameStackObservation fills it, then frame 8.
    obs, nxt = window([(1, 1, 1, 1), (1, 1, 1, 2), (7, 7, 7, 7), (7, 7, 7, 8)],
                      [(1, 1, 1, 2), (1, 1, 2, 3), (7, 7, 7, 8), (7, 7, 8, 9)])
    pool, oi, ni = frames.encode(obs, nxt, LAYOUT)
    np.testing.assert_array_equal(pool[oi], obs)
    np.testing.assert_array_equal(pool[ni], nxt)
    values = sorted(int(f[0, 0]) for f in pool)
    assert values == [1, 2, 3, 7, 8, 9]  # 6 distinct frames, each once, against 32 in the stacks
    # the new episode's stack never reaches back into the old one
    assert set(pool[oi[2, 0]][:, 0, 0]) == {7}


def test_a_window_that_is_not_a_frame_stack_still_round_trips():
    rng = np.random.default_rng(1)
    obs = rng.integers(0, 256, (5, 2, K, H, H), dtype=np.uint8)
    nxt = rng.integers(0, 256, (5, 2, K, H, H), dtype=np.uint8)
    pool, oi, ni = frames.encode(obs, nxt, LAYOUT)
    np.testing.assert_array_equal(pool[oi], obs)
    np.testing.assert_array_equal(pool[ni], nxt)
    assert len(pool) == 5 * 2 * K * 2  # nothing equal, nothing shared


def test_layouts():
    assert frames.layout((4, 84, 84), np.uint8) == frames.Layout(4, (84, 84), "|u1")
    assert frames.layout((10, 10, 4), np.bool_) == frames.Layout(1, (10, 10, 4), "|b1")  # MinAtar: whole frames
    assert frames.layout((3, 64, 64), np.uint8).stack == 3  # a first axis strictly smallest is a stack
    assert frames.layout((4,), np.float32) is None and frames.layout((84, 84, 4), np.float32) is None


def rollout_of(obs, nxt, rewards, terminated, before=0, num_steps=None):
    L, B = rewards.shape
    num_steps = num_steps or L
    return algorithm.Rollout(obs=obs, actions=np.zeros((L, B), np.int64), rewards=rewards.astype(np.float32),
                             terminated=terminated, truncated=np.zeros((L, B), bool), next_obs=nxt,
                             valid=np.ones((L, B), bool), before=before, num_steps=num_steps)


def test_dqn_n_step_bootstrap_frames_come_back_exact():
    dqn = algorithm.load("dqn")
    args = build(dqn.Args, {"n_step": 3}, "algo")
    # frames 1..6 of one episode, ending (terminated) at step 3 with final frame 5; a new one from frame 20
    obs, nxt = window([(1, 1, 1, 1), (1, 1, 1, 2), (1, 1, 2, 3), (1, 2, 3, 4), (20, 20, 20, 20), (20, 20, 20, 21)],
                      [(1, 1, 1, 2), (1, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (20, 20, 20, 21), (20, 20, 21, 22)])
    terminated = np.zeros((6, 1), bool)
    terminated[3] = True
    rollout = rollout_of(obs, nxt, np.ones((6, 1)), terminated, num_steps=3)  # 3 own steps + n_step after
    items, pool = frames.indexed_items(dqn.make_items, rollout, args, LAYOUT, ("obs", "next_obs"))
    expected = dqn.make_items(rollout, args)
    for name in ("obs", "next_obs"):
        np.testing.assert_array_equal(pool[items[name]], expected[name])
    # step 0's 3-step bootstrap is step 2's successor, (1, 2, 3, 4); step 1's is the final frame 5's stack
    assert [int(f[0, 0]) for f in pool[items["next_obs"][0]]] == [1, 2, 3, 4]
    assert [int(f[0, 0]) for f in pool[items["next_obs"][1]]] == [2, 3, 4, 5]
    assert sorted(int(f[0, 0]) for f in pool) == [1, 2, 3, 4, 5]  # frames 20.. are used by no item: pruned


def test_overlapping_r2d2_sequences_share_their_frames():
    r2d2 = algorithm.load("r2d2")
    args = build(r2d2.Args, {"burn_in": 2, "sequence_length": 4, "n_step": 1}, "algo")
    L, B = 2 + 4 + 4, 2  # history before: burn_in + sequence_length; the segment's own 4 steps
    values = np.arange(L + K)[:, None] + 100 * np.arange(B)[None, :]  # env b's frame t: 100 b + t
    obs = np.stack([[stack(*values[t:t + K, b]) for b in range(B)] for t in range(L)])
    nxt = np.stack([[stack(*values[t + 1:t + 1 + K, b]) for b in range(B)] for t in range(L)])
    rollout = rollout_of(obs, nxt, np.zeros((L, B)), np.zeros((L, B), bool), before=6, num_steps=4)
    rollout.states.update(h=np.zeros((L, B, 8), np.float32), c=np.zeros((L, B, 8), np.float32))
    items, pool = frames.indexed_items(r2d2.make_items, rollout, args, LAYOUT, ("obs", "next_obs"))
    expected = r2d2.make_items(rollout, args)
    for name in ("obs", "next_obs"):
        np.testing.assert_array_equal(pool[items[name]], expected[name])
    # each env's sequence (steps 4..9: 6 stacks, 24 frames) and its 4 bootstrap stacks (16 frames)
    # use 10 distinct frames: 4..12 for the stacks, and 13 for the last bootstrap
    assert len(pool) == B * 10
    assert sorted(pool[:10, 0, 0]) == list(range(4, 14))
    assert len(np.unique(pool[:, 0, 0])) == len(pool)


# -- the table -----------------------------------------------------------------------------------

def frame_table(capacity=8, sampler="uniform", per_item=1.0):
    spec = FrameSpec("|u1", (H, H), ("obs",), per_item)
    schema = ItemSchema((("obs", "<i4", (2,)), ("action", "<i8", ())), 1, spec)
    return make_table(TableConfig(capacity=capacity, sampler=sampler, min_size=1), seed=0, schema=schema)


def frame_segment(first_value, n):
    """n items; item i is the stack (v_i, v_i + 1) of a pool of n + 1 frames valued first_value + j."""
    pool = np.stack([frame((first_value + j) % 256) for j in range(n + 1)])
    refs = np.stack([np.arange(n), np.arange(n) + 1], axis=1).astype(np.int32)
    return {"obs": refs, "action": np.arange(n, dtype=np.int64) + first_value}, pool


def test_items_are_served_as_their_frames_and_the_ring_holds_each_frame_once():
    table = frame_table()
    items, pool = frame_segment(10, 4)
    assert table.insert(items, pool=pool) == 4
    assert table.ring.next == 5  # 5 frames stored for 4 items of 2 frames each
    batch, ids, _ = table.sample(16)
    assert batch["obs"].shape == (16, 2, H, H) and batch["obs"].dtype == np.uint8
    np.testing.assert_array_equal(batch["obs"][:, 0, 0, 0], batch["action"])
    np.testing.assert_array_equal(batch["obs"][:, 1, 0, 0], batch["action"] + 1)


@pytest.mark.parametrize("sampler", ["uniform", "prioritized", "fifo"])
def test_both_rings_wrap_and_every_served_item_is_its_own_frames(sampler):
    table = frame_table(capacity=64, sampler=sampler, per_item=1.0)
    ring, n = len(table.ring.frames), 50
    for s in range(100):  # 100 segments of 50 items and 51 frames: the frame ring (4096) wraps
        items, pool = frame_segment(s * 7, n)
        table.insert(items, pool=pool)
        if sampler == "fifo":
            batch, _, _ = table.sample(n)
            np.testing.assert_array_equal(batch["obs"][:, 0, 0, 0], batch["action"] % 256)
    assert table.ring.next == 100 * (n + 1) > ring
    if sampler != "fifo":
        batch, ids, _ = table.sample(64)
        np.testing.assert_array_equal(batch["obs"][:, 0, 0, 0], batch["action"] % 256)
        np.testing.assert_array_equal(batch["obs"][:, 1, 0, 0], (batch["action"] + 1) % 256)
        assert (ids >= table.next_id - 64).all()


def test_a_small_ring_drops_the_oldest_items_with_their_frames():
    table = frame_table(capacity=10_000, per_item=0.01)  # a ring of 4096 frames for 10,000 items
    for s in range(60):
        items, pool = frame_segment(s, 100)
        table.insert(items, pool=pool)
    assert table.next_id == 6000 and table.size < 6000
    oldest_frame = table.ring.next - len(table.ring.frames)
    live = np.arange(table.next_id - table.size, table.next_id) % table.cfg.capacity
    assert (table.item_frame0[live] >= oldest_frame).all() and table.size >= len(table.ring.frames) // 101 * 100 - 100
    batch, _, _ = table.sample(256)
    np.testing.assert_array_equal(batch["obs"][:, 0, 0, 0], batch["action"] % 256)


HOSTILE = {
    "a reference past the pool": lambda items, pool: ({**items, "obs": items["obs"] + 1}, pool, "bad_reference"),
    "a link with no previous segment": lambda items, pool: ({**items, "obs": items["obs"] - 1}, pool,
                                                            "missing_frames"),
    "no pool": lambda items, pool: (items, None, "schema_mismatch"),
    "frames of another shape": lambda items, pool: (items, pool[:, :2], "schema_mismatch"),
    "frames of another dtype": lambda items, pool: (items, pool.astype(np.float32), "schema_mismatch"),
    "more frames than the ring": lambda items, pool: (items, np.zeros((5000, H, H), np.uint8), "bad_frame_count"),
    "references as int64": lambda items, pool: ({**items, "obs": items["obs"].astype(np.int64)}, pool,
                                                "schema_mismatch"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_references_outside_a_segment_s_frames_are_refused(case):
    table = frame_table()
    items, pool, reason = HOSTILE[case](*frame_segment(0, 4))
    with pytest.raises(SchemaError) as err:
        table.check(items, pool=pool)
    assert err.value.reason == reason
    assert table.ring.next == 0 and table.size == 0


def test_a_pool_for_a_table_without_frames_is_refused():
    table = make_table(TableConfig(capacity=8), schema=ItemSchema((("obs", "<f4", (2,)),)))
    with pytest.raises(SchemaError):
        table.check({"obs": np.zeros((2, 2), np.float32)}, pool=np.zeros((1, 3, 3), np.uint8))


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_a_snapshot_of_a_table_of_frames_restores_exactly(tmp_path, sampler):
    table = frame_table(capacity=10_000, sampler=sampler, per_item=0.01)  # frames run out first
    for s in range(50):
        items, pool = frame_segment(s * 3, 100)
        table.insert(items, pool=pool)
    if table.prioritized:
        table.update_priorities(np.arange(table.next_id - 10, table.next_id), np.linspace(0.1, 5, 10))
    assert table.valid_from > 0  # the ring wrapped and took the oldest items with it
    snapshot.save(tmp_path, table, SPEC, {"w": np.ones(2, np.float32)}, 3)
    restored = snapshot.load(tmp_path, seed=0).table
    np.testing.assert_array_equal(restored.ring.frames, table.ring.frames)
    np.testing.assert_array_equal(restored.item_frame0, table.item_frame0)
    assert (restored.ring.next, restored.valid_from, restored.size) == (table.ring.next, table.valid_from, table.size)
    for name in table.storage:
        np.testing.assert_array_equal(restored.storage[name], table.storage[name])
    table.rng, restored.rng = np.random.default_rng(5), np.random.default_rng(5)
    a, b = table.sample(32), restored.sample(32)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            for name in x:
                np.testing.assert_array_equal(x[name], y[name])
        elif x is not None:
            np.testing.assert_array_equal(x, y)


def test_every_algorithm_that_takes_images_sends_frames_once():
    """The plan, from each algorithm's own make_items: observation fields become references, and
    a DQN item of Atari's 84x84x4 stacks takes about one frame of the table's memory."""
    import gymnasium as gym

    space, actions = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(6)
    for name in ("dqn", "apex", "c51", "ppo", "impala", "r2d2", "rppo", "sac"):
        agent = algorithm.load(name)
        args = build(agent.Args, {}, "algo")
        net = agent.make_policy(space, actions, args)
        schema = algorithm.item_schema(agent, net, space, actions, args, 8, 32 if name == "r2d2" else 128)
        assert schema.frames is not None and set(schema.frames.fields) == {"obs", "next_obs"}, name
        if name in ("dqn", "apex", "c51"):
            per_item = schema.table_bytes(1_000_000) / 1_000_000
            assert per_item < 1.1 * 84 * 84 + 200 and schema.served_bytes() > 8 * 84 * 84, name
        off = algorithm.item_schema(agent, net, space, actions, args, 8, 32, store_frames=False)
        assert off.frames is None


# -- through a broker ----------------------------------------------------------------------------

def frames_register(client):
    spec = FrameSpec("|u1", (H, H), ("obs",), 1.0)
    schema = ItemSchema((("obs", "<i4", (2,)), ("action", "<i8", ())), 1, spec)
    meta = {"spec": SPEC, "table": {"capacity": 100, "sampler": "uniform", "min_size": 4},
            "schema": schema.as_meta(), "weights_version": 0, "token": TOKEN}
    return client.request("register", meta, {"w": np.arange(3, dtype=np.float32)}, wait_s=10)


def frames_message(seq, items, pool):
    meta = {"run_id": "r1", "actor_id": 0, "incarnation": "x", "seq": seq, "policy_version": 0,
            "frames": len(items["action"])}
    return wire.encode("segment", meta, {**items, FRAMES: pool} if pool is not None else items)


def test_a_broker_serves_frames_and_refuses_references_outside_them(client, push):
    assert frames_register(client).type == "ok"
    items, pool = frame_segment(40, 8)
    push.send_multipart(frames_message(0, {**items, "obs": items["obs"] + 5}, pool))  # points past the pool
    push.send_multipart(frames_message(0, items, None))  # no pool at all
    push.send_multipart(frames_message(0, items, pool))
    wait_for(lambda: stats(client)["segments"] == 1, 10, "the good segment")
    s = stats(client)
    assert s["rejected"] == {"bad_reference": 1, "schema_mismatch": 1} and s["replay_size"] == 8
    reply = client.request("sample", {"token": TOKEN, "batch_size": 6}, wait_s=10)
    assert reply.type == "batch" and reply.arrays["obs"].shape == (6, 2, H, H)
    np.testing.assert_array_equal(reply.arrays["obs"][:, 1, 0, 0], reply.arrays["action"] + 1)


def test_a_dataclass_rollout_keeps_its_fields_when_indexed():
    """indexed_items hands make_items a copy with index observations; the caller's rollout is untouched."""
    obs, nxt = window([(1, 1, 1, 1)], [(1, 1, 1, 2)])
    rollout = rollout_of(obs, nxt, np.ones((1, 1)), np.zeros((1, 1), bool))
    before = dataclasses.replace(rollout)
    frames.indexed_items(algorithm.load("dqn").make_items, rollout, build(algorithm.load("dqn").Args, {"n_step": 1},
                         "algo"), LAYOUT, ("obs", "next_obs"))
    assert rollout.obs is before.obs and rollout.obs.dtype == np.uint8


# -- links to the previous segment ---------------------------------------------------------------

def stacked_steps(steps, envs=2, episode=23, side=6, seed=0):
    """(obs, next_obs, done) per step of `envs` frame-stacked environments of side x side frames."""
    rng = np.random.default_rng(seed)
    new = lambda: rng.integers(0, 256, (envs, side, side), dtype=np.uint8)
    obs = np.repeat(new()[:, None], K, axis=1)
    for t in range(1, steps + 1):
        nxt = np.concatenate([obs[:, 1:], new()[:, None]], axis=1)
        done = np.full(envs, t % episode == 0)
        yield obs, nxt, done
        obs = np.where(done[:, None, None, None], np.repeat(new()[:, None], K, axis=1), nxt)


def written(segment_length=8, steps=400, links=True, fields=("obs", "next_obs")):
    """The wire segments (meta, arrays) a DQN SegmentWriter makes of stacked_steps."""
    from qrl.acting.segments import SegmentWriter

    dqn = algorithm.load("dqn")
    args = build(dqn.Args, {"n_step": 3}, "algo")
    writer = SegmentWriter(dqn, args, "r1", 0, "x", 2,
                           {"segment_length": segment_length, "frame_fields": fields, "frame_links": links})
    start, out = np.ones(2, bool), []
    for obs, nxt, done in stacked_steps(steps):
        writer.record(obs, np.zeros(2, np.int64), np.ones(2, np.float32), done, np.zeros(2, bool), nxt, {}, start, {})
        start = done
        if writer.full:
            meta, arrays = writer.segment()
            writer.mark_sent()
            out.append((meta, dict(arrays)))
    return out


def linked_table(capacity=1000, sampler="uniform"):
    spec = FrameSpec("|u1", (6, 6), ("obs", "next_obs"), 1.0)
    schema = ItemSchema((("obs", "<i4", (K,)), ("action", "<i8", ()), ("return", "<f4", ()),
                         ("discount", "<f4", ()), ("next_obs", "<i4", (K,))), 1, spec)
    return make_table(TableConfig(capacity=capacity, sampler=sampler, min_size=1), seed=0, schema=schema)


def put(table, meta, arrays):
    arrays = dict(arrays)
    pool = arrays.pop(FRAMES)
    return table.insert(arrays, pool=pool, stream=(meta["actor_id"], meta["incarnation"]), seq=meta["seq"])


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_linked_segments_store_each_frame_once_and_serve_the_pixels_exactly(sampler):
    linked, pixels = written(links=True), written(links=False, fields=())
    table = linked_table(sampler=sampler)
    for meta, arrays in linked:
        put(table, meta, arrays)
    expected = {name: np.concatenate([a[name] for _, a in pixels]) for name in ("obs", "next_obs", "action")}
    served = table.gather(np.arange(table.next_id) % table.cfg.capacity)
    for name in ("obs", "next_obs"):
        np.testing.assert_array_equal(served[name], expected[name])
    sent = sum(len(a[FRAMES]) for _, a in linked)
    steps = 8 * len(linked) * 2  # 2 envs
    # one new frame per env step, the episodes' first and final frames, and the overlap of the
    # self-contained segment every KEYFRAME_EVERY: about 1.1x here (tiny 8-step segments)
    assert table.ring.next == sent and sent < 1.2 * steps
    assert sum(len(a[FRAMES]) for _, a in written(links=False)) > 1.6 * steps  # without links: the overlaps


def test_links_to_a_segment_the_table_does_not_hold_are_refused_until_a_self_contained_one():
    segs = written(steps=8 * 40)
    table = linked_table()
    put(table, *segs[0])
    with pytest.raises(SchemaError) as err:  # seq 2 links to seq 1, which never arrived
        put(table, *segs[2])
    assert err.value.reason == "missing_frames"
    meta, arrays = segs[1]
    with pytest.raises(SchemaError) as err:  # a link past the previous segment's logical frames
        put(table, meta, {**arrays, "obs": np.full_like(arrays["obs"], -10_000)})
    assert err.value.reason == "bad_reference"
    put(table, *segs[1])
    for meta, arrays in segs[3:16]:  # each links to one the table refused or never had
        with pytest.raises(SchemaError):
            put(table, meta, arrays)
    assert all((a["obs"] >= 0).all() for _, a in segs[16:17])  # the writer's self-contained segment ...
    for meta, arrays in segs[16:]:  # ... and every one after it gets in again
        put(table, meta, arrays)


def test_an_item_whose_linked_frames_are_overwritten_is_never_served():
    a_segs = written(steps=8 * 3)  # stream a: 3 segments
    table = linked_table(capacity=3000)
    table.ring.frames = np.zeros((120,) + table.ring.frames.shape[1:], np.uint8)  # a small ring
    put(table, *a_segs[0])
    other = written(steps=8 * 40)
    for meta, arrays in other[:3]:  # another stream moves the ring on
        put(table, {**meta, "actor_id": 1}, arrays)
    put(table, *a_segs[1])  # links to a's first segment, still held
    first_of_a1 = table.next_id - len(a_segs[1][1]["action"])
    for meta, arrays in other[3:6]:
        put(table, {**meta, "actor_id": 1}, arrays)
    oldest = table.ring.oldest
    slots = np.arange(first_of_a1, first_of_a1 + 8) % table.cfg.capacity
    assert (table.item_frame0[slots] < oldest).any(), "the test needs an item that lost a linked frame"
    batch, ids, _ = table.sample(2000)
    assert (table.item_frame0[ids % table.cfg.capacity] >= oldest).all()


def test_a_snapshot_keeps_the_links_so_the_next_segment_still_gets_in(tmp_path):
    segs = written(steps=8 * 5)
    table = linked_table()
    for meta, arrays in segs[:3]:
        put(table, meta, arrays)
    snapshot.save(tmp_path, table, SPEC, {}, 0)
    restored = snapshot.load(tmp_path).table
    assert (segs[3][1]["obs"] < 0).any()  # it links
    put(restored, *segs[3])
    put(table, *segs[3])
    for name in ("obs", "next_obs"):
        np.testing.assert_array_equal(restored.gather(np.arange(restored.next_id))[name],
                                      table.gather(np.arange(table.next_id))[name])
