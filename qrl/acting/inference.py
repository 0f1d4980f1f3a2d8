"""Central inference (SEED style): `qrl inference --broker ADDR`.

One process holds the policy for many env-only actors (qrl/acting/env_actor.py). It gets the run spec and
every new weights version from the broker like an actor does, and serves a ROUTER socket: each env
actor sends its observations (with the rewards and episode ends of the step before) and gets its
actions back. Requests are answered in batches: the server waits until `batch_envs` environments'
observations are waiting, every connected actor has asked, or the oldest request is `deadline_ms`
old (default 0: at once), whichever comes first, then runs the network once on all of them
(algorithm.act_batched: the cores' forward) while each actor keeps its own exploration (its own core: Ape-X epsilon,
generators), recurrent state and item window. The items are built with the algorithm's item builder
and pushed to the broker with the usual accounting: the env actor's id, an incarnation per (server,
env actor) pair, sequence numbers and policy versions, so the broker cannot tell these segments from
a policy-running actor's.

Decision: a process of its own, not a thread of the learner. The learner's update loop keeps its
core and its device to itself, a crashed or restarted server costs no learner state, and the
server is restarted alone (crash-only, like every role): env actors notice, greet the new server
and resume their episodes; only the unfinished segments the old one held are lost (a gap the broker
sees as a new incarnation, never as a duplicate).

Bad messages on the ROUTER (malformed, unknown type or field, wrong shapes or dtypes, non-finite
rewards or observations, a step out of order) are answered with an error, counted by reason and
logged at most every few seconds; nothing of them reaches a table.
"""

from __future__ import annotations

import collections
import hmac
import logging
import secrets
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import zmq

from qrl import algorithm, envs
from qrl.protocol import messages, transport, wire
from qrl.acting.actor import (RunChanged, actor_seed, ingest_socket, join_run, load_weights, newest_weights,
                       report_actor_error)
from qrl.acting.credit import CreditLine, WrongRun
from qrl.acting.segments import SegmentWriter, SyncActing, confirm_delivery

log = logging.getLogger("qrl.inference")

STREAM_TAKEOVER_S = 5.0
"""A greeting without a live stream's token takes its actor id only after this long without a word
from it (a restarted env actor); a stranger cannot take over an env actor that is stepping."""


@dataclass(frozen=True)
class InferenceConfig:
    broker: str = "tcp://127.0.0.1:5555"
    bind: str = "tcp://127.0.0.1:5565"
    """Where env actors connect (port 0: a free one, written to --address-file)."""
    batch_envs: int = 256
    """Act as soon as this many environments' observations are waiting."""
    deadline_ms: float = 0.0
    """...or once the oldest waiting request is this old: a slow actor never holds up the others longer.
    0: act at once on whatever has arrived (batches form from the requests that come in while the
    previous batch is computed); on 2 CPU cores, 0 served 17.3k CartPole frames/s against 13.7k with
    2 ms (scripts/bench_inference.py, 8 actors)."""
    idle_timeout_s: float = 30.0
    """An env actor not heard from for this long is forgotten (its state freed); a clean stop says bye."""
    send_hwm: int = 8
    """Segments queued in ZeroMQ towards the broker before env actors are held back."""
    device: str = "cpu"
    """Where the policy runs."""
    allow_envs: list[str] = field(default_factory=list)
    """Environment entry points a run spec may make this server import (to learn the spaces), as ActorConfig's."""
    allow_wrappers: list[str] = field(default_factory=list)
    max_streams: int = 1024
    """Env actors served at once; more are refused (too_many_streams)."""
    total: int | None = None
    """Actors in the whole run, for per-actor exploration (Ape-X epsilons); None: the highest actor id seen + 1,
    at least 8."""


class Refused(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class Stream:
    """One env actor as the server sees it."""

    identity: bytes
    req: Any
    actor_id: int
    incarnation: str  # the env actor's
    token: str  # the stream's secret: only the env actor that greeted may step it
    num_envs: int
    core: algorithm.ActorCore
    state: algorithm.RecurrentState
    writer: SegmentWriter
    sync: SyncActing
    episode_start: np.ndarray
    next_step: int = 0
    pending: np.ndarray | None = None  # observations waiting for actions
    pending_since: float = 0.0
    acted: dict[str, Any] | None = None  # the last step acted on, waiting for its rewards
    last_reply: tuple[int, np.ndarray] | None = None
    hold: Callable[[int, float], bool] | None = None  # sync_actors: act again once hold(version, waited)
    held_since: float = 0.0
    unsent: int = 0  # segments of ours still in the outbox
    last_seen: float = 0.0
    credit_until: int = -1  # the last seq the broker granted this stream (docs/protocol.md, "Flow control")

    @property
    def key(self) -> tuple[int, str]:
        """The stream as the broker knows it (its segments' actor id and incarnation)."""
        return self.actor_id, self.writer.incarnation

    @property
    def granted(self) -> bool:
        """Its current segment is granted: under way, or its next seq is covered by a credit."""
        return not self.writer.starting or self.writer.sent <= self.credit_until

    @property
    def free(self) -> bool:
        """Not held back: no sync_actors wait, no segment of its waiting to be pushed, credit for its segment."""
        return self.hold is None and not self.unsent and self.granted


class InferenceServer:
    def __init__(self, cfg: InferenceConfig):
        self.cfg = cfg
        self.stopping = False
        self.incarnation = uuid.uuid4().hex[:8]
        self.greetings = 0  # streams opened by this server (part of each stream's incarnation)
        self.stats: collections.Counter = collections.Counter()
        self.rejected: collections.Counter = collections.Counter()
        self.last_reject_log: dict[str, float] = {}
        self.address = ""
        self.device = torch.device(cfg.device)  # the policy's: cores move batches there and back
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"inference.device={cfg.device}: torch sees no CUDA device here")

    # -- set-up -----------------------------------------------------------------------------

    def bind(self, ctx: zmq.Context, keys: str | None = None) -> None:
        """Bind the env actors' ROUTER: with keys, CURVE with the actor role's key pair (only actor
        keys get in); without, a warning when it listens beyond loopback."""
        self.router = transport.socket(ctx, zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, wire.DEFAULT_LIMITS.max_message_bytes)
        self.auth = transport.serve_inference_securely(ctx, self.router, keys) if keys else None
        host, port = transport.split_address(self.cfg.bind, "--bind", lowest_port=0)
        if not keys and not transport.is_loopback(host):
            log.warning("inference: WARNING: listening on %s without encryption or authentication; anyone who can "
                        "reach it can step streams and feed the run (start it with --keys DIR)", host)
        if port == 0:
            port = self.router.bind_to_random_port(f"tcp://{host}")
        else:
            self.router.bind(f"tcp://{host}:{port}")
        self.address = f"tcp://{host}:{port}"

    def serve(self, ctx: zmq.Context) -> None:
        """Serve runs until stopped (a new run at the broker: start over with its spec)."""
        while not self.stopping:
            try:
                self._serve_run(ctx)
            except RunChanged as exc:
                log.warning("inference: %s; serving it", exc)

    def _fetch(self, client: transport.Client, msg_type: str) -> wire.Message:
        """Ask until the broker has it, saying what it waits for every few seconds."""
        start = last = time.monotonic()
        while True:
            reply = client.request(msg_type, wait_s=None, report=log.warning, should_stop=lambda: self.stopping)
            if reply.type != "not_ready":
                return reply
            if time.monotonic() - last > transport.REPORT_EVERY_S:
                last = time.monotonic()
                log.warning("inference: waiting for a learner to register a run at %s (%.0f s)", self.cfg.broker,
                            last - start)
            self._answer_waiting()
            time.sleep(0.05)

    def _answer_waiting(self) -> None:
        """While there is no run: tell env actors so (they wait and ask again)."""
        while self.router.poll(0):
            frames = self.router.recv_multipart(copy=False)
            if len(frames) > 1:
                self._reply(frames[0].bytes, "not_ready", {"req": self._req_of(frames[1:])})

    def _req_of(self, frames: list) -> Any:
        try:
            req = wire.decode(frames).meta.get("req")
            return req if isinstance(req, int) else None
        except wire.WireError:
            return None

    def _serve_run(self, ctx: zmq.Context) -> None:
        client = transport.Client(ctx, self.cfg.broker, "inference")

        def spaces(spec: dict[str, Any]) -> tuple:
            self.obs_space, self.action_space = envs.spaces(spec["env"], spec.get("env_kwargs"),
                                                            spec.get("wrappers") or ())
            return self.obs_space, self.action_space

        joined = join_run(lambda msg_type: self._fetch(client, msg_type),
                          lambda reason, detail: report_actor_error(client, -1, reason, detail),  # -1: this server
                          self.cfg.allow_envs, self.cfg.allow_wrappers, spaces, str(self.device))
        client.close()
        self.spec, ports, self.agent, self.args = joined.spec, joined.ports, joined.agent, joined.args
        self.run, self.net, self.normalizer = joined.run, joined.net, joined.normalizer
        # What the broker will accept of the segments made here (the schema's limits for "obs", and rewards).
        self.value_limit = self.spec["run"].get("value_limit", algorithm.DEFAULT_VALUE_LIMIT)
        self.obs_limits = algorithm.observation_limits(self.obs_space, self.value_limit)
        self.weights_version = joined.weights_version

        host, _ = transport.split_address(self.cfg.broker)
        self.weights_sub = transport.socket(ctx, zmq.SUB)
        self.weights_sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.weights_sub.connect(f"tcp://{host}:{ports['weights_out']}")
        self.push = ingest_socket(ctx, self.cfg.send_hwm)
        self.push.connect(f"tcp://{host}:{ports['ingest']}")
        self.credit = CreditLine(ctx, self.cfg.broker, self.spec["run_id"])
        self.streams: dict[int, Stream] = {}
        self.outbox: collections.deque = collections.deque()
        self.done_streams: list[tuple[int, str, int]] = []  # (actor, incarnation, last seq) of streams closed
        log.info("inference: serving %s on %s at %s (batches of up to %d envs, %.1f ms deadline), weights version %d",
                 self.spec["algo"], self.spec["env"], self.address, self.cfg.batch_envs, self.cfg.deadline_ms,
                 self.weights_version)
        try:
            self._loop()
        finally:
            self._flush_outbox(deadline_s=2.0)
            # Confirm what reached ZeroMQ: a segment still in the outbox (the broker holding ingest
            # back past the flush deadline) was never sent and cannot be.
            streams = self.done_streams + [(s.actor_id, s.writer.incarnation, s.writer.sent - 1 - s.unsent)
                                           for s in self.streams.values() if s.writer.sent > s.unsent]
            if streams and self.stopping:
                confirm_delivery(ctx, self.cfg.broker, "inference", streams)
            self.weights_sub.close(linger=0)
            self.credit.close()
            self.push.close()

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.weights_sub, zmq.POLLIN)
        poller.register(self.credit.sock, zmq.POLLIN)
        last_log = last_sweep = time.monotonic()
        while not self.stopping:
            timeout_ms = 50.0
            waiting = [s for s in self.streams.values() if s.pending is not None and s.free]
            if waiting:
                oldest = min(s.pending_since for s in waiting)
                timeout_ms = max(0.0, self.cfg.deadline_ms - (time.monotonic() - oldest) * 1000)
            if self.outbox:
                poller.register(self.push, zmq.POLLOUT)
            events = dict(poller.poll(timeout_ms))
            if self.outbox:
                poller.unregister(self.push)
            if self.weights_sub in events:
                self._poll_weights()
            if self.credit.sock in events:
                self._on_credits()
            if self.router in events:
                for _ in range(1000):  # everything that is there, within reason
                    try:
                        frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_message(frames)
            self._flush_outbox()
            self._act_if_due()
            now = time.monotonic()
            if now - last_sweep > 1.0:
                last_sweep = now
                self._forget_idle(now)
                self.credit.resend_lost()
            if now - last_log > 10.0:
                last_log = now
                log.info("inference: %d env actors, %d steps in %d batches (%.1f envs per batch), "
                         "%d segments pushed, rejected %s", len(self.streams), self.stats["steps"],
                         self.stats["batches"], self.stats["batched_envs"] / max(1, self.stats["batches"]),
                         self.stats["segments"], dict(self.rejected) or "none")

    def _on_credits(self) -> None:
        try:
            granted = self.credit.granted()
        except WrongRun as exc:
            raise RunChanged(str(exc)) from None
        for (actor_id, incarnation), until in granted:
            s = self.streams.get(actor_id)
            if s is not None and s.writer.incarnation == incarnation:
                s.credit_until = max(s.credit_until, until)

    def _act_if_due(self) -> None:
        now = time.monotonic()
        for s in self.streams.values():
            if s.hold is not None and s.hold(self.weights_version, now - s.held_since):
                s.hold = None
            if s.pending is not None and not s.granted:  # its env actor waits for the reply meanwhile
                self.credit.ask(s.key, s.actor_id, s.writer.incarnation, s.writer.sent)
        ready = [s for s in self.streams.values() if s.pending is not None and s.free]
        if not ready:
            return
        envs_waiting = sum(s.num_envs for s in ready)
        everyone = len(ready) == sum(1 for s in self.streams.values() if s.free)
        oldest = min(s.pending_since for s in ready)
        if envs_waiting < self.cfg.batch_envs and not everyone and (now - oldest) * 1000 < self.cfg.deadline_ms:
            return
        for s in ready:
            if s.writer.starting:  # the first step of a segment: its policy version, its noise
                s.writer.policy_version = self.weights_version
                s.core.begin_segment(self.net)
        results = algorithm.act_batched(self.net, [s.core for s in ready], [self.normalizer(s.pending) for s in ready],
                                        [s.state for s in ready], [s.episode_start for s in ready])
        for s, (actions, next_state, extras) in zip(ready, results):
            s.acted = dict(obs=s.pending, actions=actions, extras=extras, state=s.state, episode_start=s.episode_start)
            s.state, s.pending = next_state, None
            s.last_reply = (s.next_step - 1, actions)
            self._reply(s.identity, "env_actions", {"req": s.req, "step": s.next_step - 1}, {"actions": actions})
        self.stats["batches"] += 1
        self.stats["batched_envs"] += envs_waiting

    # -- messages ---------------------------------------------------------------------------------

    def _reply(self, identity: bytes, msg_type: str, meta: dict[str, Any], arrays=None) -> None:
        try:
            self.router.send_multipart([identity, *wire.encode(msg_type, meta, arrays)], flags=zmq.NOBLOCK,
                                       copy=False)
        except zmq.ZMQError:  # the actor is gone (or not reading): it asks again
            self.stats["replies_dropped"] += 1

    def _reject(self, identity: bytes, req: Any, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        now = time.monotonic()
        if now - self.last_reject_log.get(reason, -1e9) > 5.0:
            self.last_reject_log[reason] = now
            log.warning("inference: rejected a message: %s %s (%d so far)", reason, detail[:300], self.rejected[reason])
        self._reply(identity, "error", {"req": req, "reason": reason, "detail": detail[:512]})

    def _on_message(self, frames: list) -> None:
        if len(frames) < 2:
            self.rejected["malformed"] += 1
            return
        identity = frames[0].bytes
        req = wire.peek_req(frames[1:])  # envelope errors are answered with the request's id too
        try:
            msg = wire.decode(frames[1:])
            meta = messages.validate(msg.type, msg.meta, messages.INFERENCE_SCHEMAS, "the inference server")
            handler = getattr(self, f"_on_{msg.type}")
            handler(identity, meta, msg.arrays)
        except (wire.WireError, messages.MessageError) as exc:
            self._reject(identity, req, exc.reason, exc.detail)
        except Refused as exc:
            self._reject(identity, req, exc.reason, exc.detail)
        except Exception as exc:  # noqa: BLE001  (a bug: no client message may stop the server)
            log.exception("inference: internal error on a message")
            self._reject(identity, req, "internal_error", f"{type(exc).__name__}: {exc}")

    def _on_get_stats(self, identity: bytes, meta: dict, arrays: dict) -> None:
        self._reply(identity, "stats", {"req": meta.get("req"), "actors": len(self.streams),  # (never their ids)
                                        "version": self.weights_version,
                                        "rejected": dict(self.rejected), **dict(self.stats)})

    def _on_env_hello(self, identity: bytes, meta: dict, arrays: dict) -> None:
        actor_id, num_envs = meta["actor_id"], meta.get("num_envs", self.run["num_envs"])
        self._check_hello(actor_id, num_envs, meta.get("token"))
        old = self.streams.pop(actor_id, None)
        if old is not None:  # a restarted env actor (or one resuming after we forgot it): free the old state
            self._close(old)
        self.greetings += 1
        total = self.cfg.total or max(8, actor_id + 1)
        seed = actor_seed(self.run, actor_id)  # as a policy-running actor's
        core = self.agent.make_core(self.args, actor_id % total, total, num_envs, seed)
        incarnation = f"{self.incarnation}.{self.greetings}.{meta['incarnation']}"
        writer = SegmentWriter(self.agent, self.args, self.spec["run_id"], actor_id, incarnation, num_envs, self.run)
        if meta.get("resume"):
            writer.counted[:] = False  # episodes under way began before we saw them: returns unknown
        self.streams[actor_id] = Stream(
            identity=identity, req=meta.get("req"), actor_id=actor_id, incarnation=meta["incarnation"],
            token=secrets.token_hex(16),
            num_envs=num_envs, core=core, state=core.initial_state(num_envs), writer=writer,
            sync=SyncActing(self.run, incarnation), episode_start=np.ones(num_envs, dtype=bool),
            last_seen=time.monotonic())
        self.stats["greetings"] += 1
        self._reply(identity, "env_config", {
            "req": meta.get("req"), "run_id": self.spec["run_id"], "env": self.spec["env"],
            "env_kwargs": self.spec.get("env_kwargs"), "wrappers": self.spec.get("wrappers"),
            "num_envs": num_envs, "seed": seed, "token": self.streams[actor_id].token})

    def _check_hello(self, actor_id: int, num_envs: int, token: str | None) -> None:
        """A greeting takes a live stream's id only with its token, or once it has been silent
        STREAM_TAKEOVER_S (a restarted env actor); streams and their envs are capped."""
        live = self.streams.get(actor_id)
        if live is not None and not (token is not None and hmac.compare_digest(token, live.token)):
            silent = time.monotonic() - live.last_seen
            if silent < STREAM_TAKEOVER_S:
                raise Refused("stream_held", f"actor {actor_id} has a live stream here (heard from {silent:.1f} s "
                                             f"ago); greet again once it has been silent {STREAM_TAKEOVER_S:g} s")
        most = algorithm.SEGMENTS_AT_ONCE * self.run["num_envs"]
        if num_envs > most:
            raise Refused("too_many_envs", f"num_envs {num_envs}: at most {most} per env actor "
                                           f"({algorithm.SEGMENTS_AT_ONCE} x the run's num_envs)")
        if live is None and len(self.streams) >= self.cfg.max_streams:
            raise Refused("too_many_streams", f"{len(self.streams)} env actors are connected "
                                              "(inference.max_streams)")

    def _stream(self, meta: dict) -> Stream:
        s = self.streams.get(meta["actor_id"])
        if s is None or s.incarnation != meta["incarnation"]:
            raise Refused("unknown_actor", f"actor {meta['actor_id']} has not said hello to this server")
        if not hmac.compare_digest(meta["token"], s.token):
            raise Refused("bad_token", f"actor {meta['actor_id']}: not the token of its stream")
        return s

    def _on_env_bye(self, identity: bytes, meta: dict, arrays: dict) -> None:
        self._close(self.streams.pop(self._stream(meta).actor_id))
        self._reply(identity, "ok", {"req": meta.get("req")})

    def _close(self, s: Stream) -> None:
        """Forget an env actor: its unfinished segment is dropped (its accounting stays with the broker)."""
        self.credit.forget(s.key)
        if s.writer.sent > s.unsent:  # (a segment of its still in the outbox goes out later, unconfirmed)
            self.done_streams.append((s.actor_id, s.writer.incarnation, s.writer.sent - 1 - s.unsent))
            del self.done_streams[:-1024]
        self.stats["closed"] += 1

    def _forget_idle(self, now: float) -> None:
        for actor_id, s in list(self.streams.items()):
            if now - s.last_seen > self.cfg.idle_timeout_s:
                log.warning("inference: env actor %d silent for %.0f s: freed its state", actor_id, now - s.last_seen)
                self._close(self.streams.pop(actor_id))

    def _on_env_step(self, identity: bytes, meta: dict, arrays: dict) -> None:
        s = self._stream(meta)
        s.identity, s.req, s.last_seen = identity, meta.get("req"), time.monotonic()
        step = meta["step"]
        if step == s.next_step - 1:  # a repeat (the actor timed out): checked like the first, answered alike
            self._observations(arrays.get("obs"), s.num_envs, "obs")
            if s.pending is None and s.last_reply is not None and s.last_reply[0] == step:
                self._reply(identity, "env_actions", {"req": s.req, "step": step}, {"actions": s.last_reply[1]})
            self.stats["repeats"] += 1
            return
        if step != s.next_step:
            raise Refused("bad_step", f"actor {s.actor_id}: step {step}, expected {s.next_step}")
        obs = self._observations(arrays.get("obs"), s.num_envs, "obs")
        if step > 0:
            self._record(s, obs, arrays)
        s.pending, s.pending_since = obs, time.monotonic()
        s.next_step += 1
        self.stats["steps"] += 1

    def _observations(self, obs: Any, n: int, name: str, reason: str = "bad_obs") -> np.ndarray:
        """The observations an env actor sent, cast to the space's dtype (_castable), then checked
        against the run's limits: a float64 1e300 is checked as the float32 inf it becomes."""
        shape, dtype = tuple(self.obs_space.shape), self.obs_space.dtype
        if obs is None or obs.shape != (n, *shape) or not _castable(obs.dtype, dtype):
            got = "none" if obs is None else f"{obs.dtype}{list(obs.shape)}"
            raise Refused(reason, f"{name} must be {dtype}{[n, *shape]}, got {got}")
        obs = obs.astype(dtype, copy=False)
        lo, hi = self.obs_limits
        if obs.size and obs.dtype.kind in "fiu" and not (lo <= obs.min() and obs.max() <= hi):
            raise Refused(reason, f"{name} holds values outside [{lo:g}, {hi:g}] (NaN, infinite or beyond the limits)")
        return obs

    def _record(self, s: Stream, obs: np.ndarray, arrays: dict) -> None:
        """The previous step's outcome: complete its transition and push the segment once full."""
        n = s.num_envs
        reward, terminated, truncated = arrays.get("reward"), arrays.get("terminated"), arrays.get("truncated")
        limit = self.value_limit
        if reward is None or reward.shape != (n,) or reward.dtype.kind != "f" \
                or not (np.abs(reward.astype(np.float32)) <= limit).all():
            raise Refused("bad_reward", f"reward must be {n} floats within +-{limit:g} (as float32)")
        for name, flags in (("terminated", terminated), ("truncated", truncated)):
            if flags is None or flags.shape != (n,) or flags.dtype != np.bool_:
                raise Refused("bad_flags", f"{name} must be {n} bools")
        done = terminated | truncated
        next_obs = obs
        index = arrays.get("final_index")
        if done.any() or index is not None:
            if index is None or index.dtype.kind not in "iu" or index.ndim != 1 \
                    or not np.array_equal(np.sort(index), np.flatnonzero(done)):
                raise Refused("bad_final_obs", "final_index must list exactly the envs whose episode ended")
            final = self._observations(arrays.get("final_obs"), len(index), "final_obs", "bad_final_obs")
            next_obs = obs.copy()
            next_obs[index] = final
        lives = arrays.get("lives")
        if lives is None and s.writer.episodic_life:
            raise Refused("bad_lives", "run.episodic_life needs each env's lives (info['lives'] of ALE games)")
        if lives is not None and (lives.shape != (n,) or lives.dtype.kind not in "iu"):
            raise Refused("bad_lives", f"lives must be {n} integers")
        a = s.acted
        s.writer.record(a["obs"], a["actions"], reward, terminated, truncated, next_obs, a["extras"],
                        a["episode_start"], a["state"], lives)
        s.episode_start = done
        if s.writer.full:
            policy_version = s.writer.policy_version
            self.outbox.append((s, s.writer.encode()))
            s.unsent += 1
            s.writer.mark_sent()
            hold = s.sync.after_push(s.writer.sent - 1, policy_version)
            if hold is not None:
                s.hold, s.held_since = hold, time.monotonic()

    # -- broker side ------------------------------------------------------------------------------

    def _flush_outbox(self, deadline_s: float = 0.0) -> None:
        end = time.monotonic() + deadline_s
        while self.outbox:
            s, frames = self.outbox[0]
            try:
                self.push.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if time.monotonic() >= end:
                    return
                self.push.poll(50, zmq.POLLOUT)
                continue
            self.outbox.popleft()
            s.unsent -= 1
            self.stats["segments"] += 1

    def _poll_weights(self) -> None:
        msg = newest_weights(self.weights_sub, self.weights_version, self.spec["run_id"], "inference")
        if msg is None:
            return
        self._load_weights(msg)
        for s in self.streams.values():
            s.sync.weights_arrived(msg.meta)

    def _load_weights(self, msg: wire.Message) -> None:
        self.weights_version = load_weights(self.net, self.normalizer, msg, self.spec["run_id"])


def run_inference(cfg: InferenceConfig, address_file: str | None = None, keys: str | None = None) -> None:
    torch.set_num_threads(1)
    server = InferenceServer(cfg)

    def _stop(*_):
        server.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ctx = zmq.Context()
    try:
        server.bind(ctx, keys)
        if address_file:
            transport.write_address_file(address_file, server.address)
        server.serve(ctx)
    except transport.BrokerUnavailable:
        if not server.stopping:
            raise
    finally:
        if getattr(server, "auth", None) is not None:
            server.auth.stop()
        ctx.destroy(linger=0)


def _castable(sent: np.dtype, space: np.dtype) -> bool:
    """Whether observations of dtype `sent` may stand for the space's: floats of any width for a float
    space (checked after the cast), integers that convert exactly for an integer one, bools for bools."""
    if space.kind == "f":
        return sent.kind == "f"
    if space.kind in "iu":
        return sent.kind in "iu" and np.can_cast(sent, space, "safe")
    return sent == space
