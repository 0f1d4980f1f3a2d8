"""One actor's steps turned into the segments it pushes to the broker.

Shared by the two places an agent acts: an actor process running its policy itself (qrl/acting/actor.py)
and the central inference server acting for env-only actors (qrl/acting/inference.py). Both hand every
step to a SegmentWriter and push what it encodes, so a segment carries the same accounting either
way: actor id, incarnation, sequence number, the policy version it started with, and the episodes
that finished in it.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Callable

import numpy as np
import zmq

from qrl import algorithm, frames
from qrl.brokers.tables import FRAMES, INITIAL_PRIORITY
from qrl.protocol import transport, wire

log = logging.getLogger("qrl.actor")


class SegmentWriter:
    """The window of steps (the segment's own and the history its items need around them) and the
    episode statistics of one actor's vector env."""

    def __init__(self, agent: algorithm.Agent, args: Any, run_id: str, actor_id: int, incarnation: str,
                 num_envs: int, run: dict[str, Any]):
        """run: the run spec's `run` map (segment_length; frame_fields, frame_links, clip_rewards,
        episodic_life)."""
        self.agent, self.args = agent, args
        segment_length = run["segment_length"]
        # The run's schema says: these fields travel as frame references, and may point into the
        # previous segment's frames.
        self.frame_fields, self.frame_links = tuple(run.get("frame_fields") or ()), bool(run.get("frame_links"))
        self.clip_rewards = bool(run.get("clip_rewards"))  # learn from each reward's sign; report raw returns
        self.episodic_life = bool(run.get("episodic_life"))  # a lost life is terminal for learning only
        self.lives: np.ndarray | None = None  # each env's lives after its last step
        self.previous_frames: dict[bytes, int] = {}  # the last segment sent: frame content -> logical index
        self.pending_frames: dict[bytes, int] = {}
        self.run_id, self.actor_id, self.incarnation = run_id, actor_id, incarnation
        self.num_envs, self.T = num_envs, segment_length
        self.history = agent.history(args)
        self.length = self.history.before + segment_length + self.history.after
        self.window: list[dict[str, Any]] = []
        self.sent = 0  # segments encoded and handed on (the next one's sequence number)
        self.policy_version = -1  # the policy version the current segment started with
        self.ep_return = np.zeros(num_envs)
        self.ep_length = np.zeros(num_envs, dtype=np.int64)
        # False for an env whose episode began before we saw it (an env actor resuming on a new
        # inference server): its return is unknown until its next episode starts.
        self.counted = np.ones(num_envs, dtype=bool)
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []
        self._valid = np.ones(num_envs, dtype=bool)

    @property
    def starting(self) -> bool:
        """No step of the current segment recorded yet (the next step is its first)."""
        return len(self.window) <= self.length - self.T

    @property
    def full(self) -> bool:
        return len(self.window) >= self.length

    def record(self, obs, actions, rewards, terminated, truncated, next_obs, extras, episode_start, state,
               lives: np.ndarray | None = None) -> None:
        """One step of every env: obs -> actions -> rewards, terminated, truncated, next_obs (the
        true successor: the final observation where an episode ended), with the core's extras, the
        state it acted from, which obs began an episode, and (episodic_life) each env's lives after
        the step (info['lives'])."""
        if not self.window and self.history.before and self.sent == 0:  # nothing before the first step yet
            self.window += [algorithm.padding_step(obs, actions, extras, state)] * self.history.before
        done = terminated | truncated
        learn_terminated = terminated | self._lost_life(lives, done) if self.episodic_life else terminated
        self.window.append(dict(obs=obs, actions=actions, rewards=rewards.astype(np.float32, copy=False),
                                terminated=learn_terminated, truncated=truncated, next_obs=next_obs, extras=extras,
                                episode_start=episode_start, state=state, valid=self._valid))
        self.ep_return += rewards
        self.ep_length += 1
        if done.any():
            for i in np.flatnonzero(done & self.counted):
                self.finished_returns.append(float(self.ep_return[i]))
                self.finished_lengths.append(int(self.ep_length[i]))
            self.ep_return[done] = 0.0
            self.ep_length[done] = 0
            self.counted[done] = True

    def _lost_life(self, lives: np.ndarray | None, done: np.ndarray) -> np.ndarray:
        """Which envs lost a life in this step and play on (a game that ended is terminated anyway;
        a new game starts with more lives)."""
        if lives is None:
            raise ValueError("run.episodic_life needs an env that reports info['lives'] (ALE games do)")
        lives = np.array(lives, dtype=np.int64)  # a copy: the caller may reuse its array
        lost = np.zeros(self.num_envs, dtype=bool) if self.lives is None else (lives < self.lives) & ~done
        self.lives = lives
        return lost

    def encode(self) -> list:
        """The full window's segment as wire frames (call mark_sent once it is handed to ZeroMQ)."""
        return wire.encode("segment", *self.segment())

    def segment(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The full window's segment: its metadata and its items."""
        rollout = algorithm.stack_steps(self.window, self.history.before, self.T)
        if self.clip_rewards:
            rollout.rewards = np.sign(rollout.rewards)
        if self.frame_fields:  # each frame once: the distinct frames, and items that point into them
            lay = frames.layout(rollout.obs.shape[2:], rollout.obs.dtype)
            items, pool = frames.indexed_items(self.agent.make_items, rollout, self.args, lay, self.frame_fields)
            if self.frame_links:
                previous = self.previous_frames if self.sent % frames.KEYFRAME_EVERY else {}
                items, pool, self.pending_frames = frames.link(items, pool, self.frame_fields, previous)
            items[FRAMES] = pool
        else:
            items = self.agent.make_items(rollout, self.args)
        priorities = self.agent.initial_priorities(rollout, self.args)
        if priorities is not None:
            items = {**items, INITIAL_PRIORITY: priorities}
        meta = {"run_id": self.run_id, "actor_id": self.actor_id, "incarnation": self.incarnation, "seq": self.sent,
                "policy_version": self.policy_version, "frames": self.T * self.num_envs,
                "episode_returns": self.finished_returns, "episode_lengths": self.finished_lengths}
        return meta, items

    def mark_sent(self) -> None:
        self.sent += 1
        self.previous_frames, self.pending_frames = self.pending_frames, {}
        self.finished_returns, self.finished_lengths = [], []
        self.window = self.window[self.T:]  # keep the history: the next segment's items need those steps


CONSUMED_WAIT_S = 10.0
"""A synchronous actor whose segment never comes back as consumed (lost on the way, or with a
broker that restarted) acts on with newer weights after waiting this long."""


class SyncActing:
    """run.sync_actors: after pushing a segment, when may this actor act again?

    With sync_lead 0, only with weights newer than the segment's (strictly on-policy). With a lead
    of k, it acts on while the learner trains, up to k segments ahead, then waits for weights made
    after the learner was done with the segment k before the one just pushed (the learner's
    weights messages say, per incarnation, the last segment it is done with)."""

    def __init__(self, run: dict[str, Any], incarnation: str):
        self.on, self.lead = bool(run.get("sync_actors")), int(run.get("sync_lead", 0))
        self.incarnation = incarnation
        self.versions: collections.deque = collections.deque(maxlen=65)  # each pushed segment's policy version
        self.consumed_seq = -1  # our last segment the learner is done with

    def after_push(self, seq: int, segment_version: int) -> Callable[[int, float], bool] | None:
        """None: act on at once; else ready(newest weights version, seconds waited)."""
        if not self.on:
            return None
        if self.lead == 0:
            return lambda version, waited: version > segment_version
        self.versions.append(segment_version)
        due = seq - self.lead
        if due < 0:
            return None
        made_with = self.versions[-1 - self.lead]
        return lambda version, waited: self.consumed_seq >= due or (version > made_with and waited > CONSUMED_WAIT_S)

    def weights_arrived(self, meta: dict[str, Any]) -> None:
        consumed = meta.get("consumed")
        if isinstance(consumed, dict) and isinstance(consumed.get(self.incarnation), int):
            self.consumed_seq = max(self.consumed_seq, consumed[self.incarnation])


def confirm_delivery(ctx: zmq.Context, broker: str, role: str, streams: list[tuple[int, str, int]],
                     timeout_s: float = 3.0) -> None:
    """On a clean stop, wait (bounded) until the broker has read each (actor id, incarnation)'s
    last segment (last seq).

    Closing the PUSH socket is not enough: when a peer disconnects, libzmq discards what is still
    queued for it at the receiving PULL socket, so a segment sent just before the stop could
    vanish without a gap ever showing in the sequence numbers."""
    client = transport.Client(ctx, broker, role, timeout_s=0.5)
    deadline = time.monotonic() + timeout_s
    try:
        for actor_id, incarnation, last_seq in streams:
            # While the rate limiter holds actors back the broker is not reading ingest: ask it to.
            client.request("flush", {"actor_id": actor_id, "incarnation": incarnation, "last_seq": last_seq},
                           wait_s=timeout_s)
        for actor_id, incarnation, last_seq in streams:
            while True:
                reply = client.request("get_stats", {"actor": actor_id, "incarnation": incarnation}, wait_s=timeout_s)
                if reply.meta.get("flushed_seq", -1) >= last_seq:
                    break
                if time.monotonic() > deadline:
                    log.warning("%s: the broker had not confirmed segment %d of actor %d when stopping", role,
                                last_seq, actor_id)
                    return
                time.sleep(0.05)
    except transport.BrokerUnavailable:
        log.warning("%s: no broker to confirm delivery of the last segments", role)
    finally:
        client.close()
