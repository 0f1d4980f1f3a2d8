"""Each frame once (docs/frames.md): image observations travel and are stored as a pool of
distinct frames, and an item's observation fields as references into it.

A segment's window of steps repeats most of its pixels: next_obs[t] is obs[t + 1] (except where an
episode ended), and a stack of 4 frames shares 3 with the stack before it. The writer keeps each
distinct frame once (`encode`), hands the algorithm's make_items a rollout whose obs and next_obs
are frame indices instead of pixels (make_items only slices and reshapes observations, which
`plan` checks once per run), sends the pool and the index items, and the broker rebuilds every
observation at sample time by gathering the pool (brokers/tables.py).

What is a frame: for an observation [K, H, W] whose first axis is strictly its smallest (a frame
stack, as FrameStackObservation and the ale-py backend make it), one of its K slices; for any
other image ([H, W, C], or a single [C, H, W] frame), the whole observation. Deduplication is
structural and checked, never assumed: a frame is reused only where the pixels are equal, so an
environment that is not a frame stack still round-trips exactly (it just saves less).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

MAX_STACK = 16


@dataclass(frozen=True)
class Layout:
    stack: int
    """Frames per observation along its first axis; 1: the whole observation is one frame."""
    frame_shape: tuple[int, ...]
    dtype: str


def layout(obs_shape: tuple[int, ...], dtype: Any) -> Layout | None:
    """How observations of this shape split into frames; None where frames do not pay (anything
    but uint8 or bool images, as Atari and MinAtar give: vectors, floats)."""
    if np.dtype(dtype) not in (np.uint8, np.bool_) or len(obs_shape) < 3:
        return None
    first = obs_shape[0]
    if 1 < first <= MAX_STACK and first < min(obs_shape[1:]):
        return Layout(first, tuple(obs_shape[1:]), np.dtype(dtype).str)
    return Layout(1, tuple(obs_shape), np.dtype(dtype).str)


def encode(obs: np.ndarray, next_obs: np.ndarray, lay: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool [P, *frame], obs indices [L, B, K], next_obs indices [L, B, K]) for a window of
    steps obs, next_obs [L, B, *obs_shape] (K = 1 drops the last axis). Reused: next_obs[t]
    that equals obs[t] shifted by one frame, obs[t + 1] that equals next_obs[t], and repeated
    frames within one stack (an episode's first stack)."""
    L, B = obs.shape[:2]
    K = lay.stack
    o = obs.reshape(L, B, K, -1)
    n = next_obs.reshape(L, B, K, -1)
    # The equalities the reuse rests on, computed for the whole window at once.
    next_is_shifted = (n[:, :, :-1] == o[:, :, 1:]).all(axis=(2, 3)) if K > 1 else np.zeros((L, B), bool)
    obs_is_prev_next = np.zeros((L, B), bool)
    obs_is_prev_next[1:] = (o[1:] == n[:-1]).all(axis=(2, 3))
    repeats_o = (o[:, :, 1:] == o[:, :, :-1]).all(axis=3) if K > 1 else np.zeros((L, B, 0), bool)
    next_is_obs = (n == o).all(axis=(2, 3)) if K == 1 else np.zeros((L, B), bool)  # a step that changed nothing
    oi = np.empty((L, B, K), np.int32)
    ni = np.empty((L, B, K), np.int32)
    sources: list[tuple[int, int, int, int]] = []  # (from next_obs?, t, b, k) of each pool frame

    def new(which: int, t: int, b: int, k: int) -> int:
        sources.append((which, t, b, k))
        return len(sources) - 1

    for b in range(B):
        for t in range(L):
            if obs_is_prev_next[t, b]:
                oi[t, b] = ni[t - 1, b]
            else:
                for k in range(K):
                    oi[t, b, k] = oi[t, b, k - 1] if k and repeats_o[t, b, k - 1] else new(0, t, b, k)
            if next_is_shifted[t, b]:
                ni[t, b, :-1] = oi[t, b, 1:]
                ni[t, b, -1] = new(1, t, b, K - 1)
            elif next_is_obs[t, b]:
                ni[t, b] = oi[t, b]
            else:
                for k in range(K):
                    ni[t, b, k] = new(1, t, b, k)
    src = np.asarray(sources, dtype=np.int64).reshape(-1, 4)
    frames = np.where(src[:, :1] == 1, n[src[:, 1], src[:, 2], src[:, 3]], o[src[:, 1], src[:, 2], src[:, 3]])
    pool = frames.reshape((len(src),) + lay.frame_shape)
    if K == 1:
        return pool, oi[..., 0], ni[..., 0]
    return pool, oi, ni


def indexed_items(make_items: Callable, rollout, args, lay: Layout, fields: tuple[str, ...]
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """make_items on the rollout with frame indices for observations, and the pool of the frames
    the items use (unused frames pruned, references renumbered), as int32 references."""
    pool, oi, ni = encode(rollout.obs, rollout.next_obs, lay)
    items = make_items(dataclasses.replace(rollout, obs=oi, next_obs=ni), args)
    used = np.unique(np.concatenate([items[f].ravel() for f in fields]))
    for f in fields:
        items[f] = np.searchsorted(used, items[f]).astype(np.int32)
    return items, np.ascontiguousarray(pool[used])


@dataclass(frozen=True)
class Plan:
    """Which item fields are frame references, and how many pool frames an item brings (in a
    window without episode ends: what the broker sizes its frame ring by)."""

    layout: Layout
    fields: tuple[str, ...]
    per_item: float


def plan(make_items: Callable, rollout, args, obs_shape: tuple[int, ...], dtype: Any) -> Plan | None:
    """The frame plan of an algorithm, found by running make_items on a rollout of distinct random
    frames both ways (pixels, and indices) and checking that gathering the pool with the index
    items gives the pixel items exactly. None: no frames for these observations, or make_items
    does more with observations than slice them (then items carry pixels, as before)."""
    lay = layout(obs_shape, dtype)
    if lay is None:
        return None
    L, B = rollout.rewards.shape
    K = lay.stack
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(B * (L + K + 1),) + lay.frame_shape, dtype=np.uint8).astype(lay.dtype)
    base = (np.arange(B) * (L + K + 1))[None, :, None] + np.arange(L)[:, None, None] + np.arange(K)[None, None, :]
    oi, ni = base, base + 1  # each step's stack is the last one shifted by a frame
    if K == 1:
        oi, ni = oi[..., 0], ni[..., 0]
    pixels = dataclasses.replace(rollout, obs=pool[oi].reshape(rollout.obs.shape),
                                 next_obs=pool[ni].reshape(rollout.next_obs.shape))
    try:
        expected = make_items(pixels, args)
        got = make_items(dataclasses.replace(rollout, obs=oi.astype(np.int32), next_obs=ni.astype(np.int32)), args)
    except Exception:  # noqa: BLE001 - make_items computes with observations: items carry pixels
        return None
    if set(got) != set(expected):
        return None
    fields = tuple(name for name in expected if got[name].shape != expected[name].shape
                   or got[name].dtype != expected[name].dtype)
    for name in expected:
        if name in fields:
            ok = (got[name].dtype.kind == "i" and pool[got[name]].shape == expected[name].shape
                  and np.array_equal(pool[got[name]], expected[name]))
        else:
            ok = np.array_equal(got[name], expected[name])
        if not ok:
            return None
    if not fields:
        return None
    n_items = len(next(iter(expected.values())))
    used = np.unique(np.concatenate([got[f].ravel() for f in fields]))
    return Plan(lay, fields, len(used) / n_items)


KEYFRAME_EVERY = 16
"""A linking writer sends every this-many-th segment self-contained: a segment the broker never
stored (lost with a broker restart) breaks the links of at most this many - 1 after it."""


def link(items: dict[str, np.ndarray], pool: np.ndarray, fields: tuple[str, ...], previous: dict[bytes, int]
         ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[bytes, int]]:
    """Items whose frames were in the previous segment point there instead of resending them
    (docs/protocol.md, "Frames"): a frame equal to the previous segment's logical frame j becomes
    reference -(j + 1). Returns the items, the pool of new frames, and this segment's logical
    frames (content -> position in its sorted distinct references) for the next one."""
    keys = [f.tobytes() for f in pool]
    wire = np.empty(len(pool), np.int64)
    new: list[int] = []
    for u, key in enumerate(keys):
        j = previous.get(key)
        if j is None:
            wire[u] = len(new)
            new.append(u)
        else:
            wire[u] = -(j + 1)
    items = {name: (wire[a].astype(np.int32) if name in fields else a) for name, a in items.items()}
    logical = np.unique(wire)  # the broker's list for the next segment: sorted distinct references
    position = np.searchsorted(logical, wire)
    return items, pool[np.asarray(new, dtype=np.int64)], {key: int(p) for key, p in zip(keys, position)}
