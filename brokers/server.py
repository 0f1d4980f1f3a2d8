"""The broker: the one rendezvous point of a qrl run.

Sockets (all bound; everybody else connects):
    service     ROUTER  requests: register, get_spec, get_weights, sample, get_stats
    ingest      PULL    segments from actors
    weights_in  XSUB    the learner's PUB connects here
    weights_out XPUB    actors' SUB sockets connect here

The broker is a last-value cache for the run spec and the newest weights: a
subscriber that joins late is sent the cached weights as soon as its
subscription arrives. It never imports torch and knows no algorithm.

One thread, one poller. A message that fails validation is dropped, counted
by reason and logged at most once per reason every few seconds; it is never
fatal.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from qrl import transport, wire
from qrl.brokers import snapshot
from qrl.brokers.tables import QueueTable, ReplayTable, SchemaError, TableConfig, make_table
from qrl.transport import bind

log = logging.getLogger("qrl.broker")


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 5555
    """Service (ROUTER) port; ingest, weights_in and weights_out use the next three. 0: all random."""
    max_message_bytes: int = 64 << 20
    """ZMQ_MAXMSGSIZE on ingest: larger segments are cut off by libzmq before they reach Python."""
    ingest_hwm: int = 2
    """Segments queued per actor connection on ingest. Small on purpose: a queued segment ages
    while it waits (policy lag), and a held-back actor should block, not run ahead. Not 1:
    with CURVE on, libzmq 4.3.5 never delivered a segment to a PULL socket with RCVHWM 1."""
    ingest_buffer: int = 4 << 10
    """Kernel receive buffer (SO_RCVBUF) of the ingest socket, kept small for the same reason (0: the OS's)."""
    stats_interval_s: float = 10.0
    seed: int = 0
    keys: str | None = None
    """Directory from `qrl keygen`: CURVE on every socket, only authorized client keys get in."""
    snapshot_dir: str | None = None
    """Where the replay table, spec and weights are snapshotted (and restored from at start)."""
    snapshot_every_s: float = 60.0
    """Seconds between snapshots: what arrives after the last one is lost if the broker is killed."""


FLUSH_TIMEOUT_S = 5.0
"""How long a stopping actor's flush may read ingest past the rate limiter."""
MAX_INCARNATIONS_TRACKED = 8
"""Per actor id, the incarnations whose sequence numbers are remembered (a worker restarting
in a loop would otherwise grow the stats without bound)."""


class Broker:
    def __init__(self, cfg: BrokerConfig, ctx: zmq.Context | None = None):
        self.cfg = cfg
        self.ctx = ctx or zmq.Context.instance()
        self.auth = None
        if cfg.keys:
            transport.use_keys(cfg.keys, server=True)
            self.auth = transport.start_authenticator(self.ctx, cfg.keys)
        self.limits = wire.Limits(max_message_bytes=cfg.max_message_bytes)
        self.service = transport.socket(self.ctx, zmq.ROUTER)
        # A client that sets its own routing id (the learner's sampler) and reconnects, e.g. after
        # a pause longer than the heartbeat timeout, takes its id over: the batches for the
        # requests it left pending here reach the new connection instead of being dropped.
        self.service.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # No heartbeats on ingest (nor on the actors' side, qrl.actor.ingest_socket): its input is
        # held back by the rate limiter, and libzmq 4.3.5 aborts the process when a heartbeat
        # meets a stopped input whose peer died (see transport.socket). A dead actor needs no
        # detecting here; a dead broker shows as a TCP reset on the actor's side.
        self.ingest = transport.socket(self.ctx, zmq.PULL, heartbeats=False)
        self.ingest.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        self.ingest.setsockopt(zmq.RCVHWM, cfg.ingest_hwm)
        if cfg.ingest_buffer:
            self.ingest.setsockopt(zmq.RCVBUF, cfg.ingest_buffer)
        self.weights_in = transport.socket(self.ctx, zmq.XSUB)
        self.weights_out = transport.socket(self.ctx, zmq.XPUB)
        # Verbose: every subscription reaches us, not just the first per topic,
        # so each late subscriber triggers a resend of the cached weights.
        self.weights_out.setsockopt(zmq.XPUB_VERBOSE, 1)
        sockets = [self.service, self.ingest, self.weights_in, self.weights_out]
        ports = [cfg.port + i if cfg.port else 0 for i in range(4)]
        try:
            self.ports = {
                name: bind(sock, cfg.host, port)
                for name, sock, port in zip(("service", "ingest", "weights_in", "weights_out"), sockets, ports)
            }
        except Exception:
            for s in sockets:
                s.close(linger=0)
            raise
        self.weights_in.send(b"\x01")  # XSUB: subscribe to everything the learner publishes

        self.spec: dict[str, Any] | None = None
        self.table: ReplayTable | None = None
        self.weights_frames: list | None = None
        self.weights_version = -1
        self.pending: collections.deque = collections.deque()  # sample requests held by the rate limiter
        self.stats = _Stats()
        self.broker_id = uuid.uuid4().hex[:12]
        self.flushing: dict[tuple[int, str], tuple[int, float]] = {}  # (actor, incarnation) -> (last seq, deadline)
        self._stop = False
        if cfg.snapshot_dir:
            self._restore(cfg.snapshot_dir)

    # -- snapshots ------------------------------------------------------------------------------

    def _restore(self, directory: str) -> None:
        try:
            restored = snapshot.load(directory, seed=self.cfg.seed)
        except snapshot.SnapshotError as exc:
            self.stats.snapshot_error = str(exc)
            log.error("broker: %s; starting empty", exc)
            return
        if restored is None:
            return
        self.table, self.spec = restored.table, restored.spec
        if self.spec is not None and restored.weights:
            self._cache_weights(wire.encode("weights", {"version": restored.weights_version,
                                                        "run_id": self.spec.get("run_id")}, restored.weights),
                                restored.weights_version)
        self.stats.restore_accounting(restored.accounting)
        self.stats.restored = {"items": self.table.size, "segments": self.stats.segments, "batches": self.stats.batches,
                               "seq": {str(k): a["seq"] for k, a in self.stats.actors.items()}}
        log.info("broker: restored %d items, %d segments received, and run %s from %s", self.table.size,
                 self.stats.segments, (self.spec or {}).get("run_id"), directory)

    def snapshot(self) -> None:
        if not self.cfg.snapshot_dir or self.table is None:
            return
        t0 = time.monotonic()
        weights = wire.decode(self.weights_frames, self.limits).arrays if self.weights_frames else None
        path = snapshot.save(self.cfg.snapshot_dir, self.table, self.spec, weights, self.weights_version,
                             self.stats.accounting())
        self.stats.snapshots += 1
        log.info("broker: snapshot of %d items to %s in %.2f s", self.table.size, path, time.monotonic() - t0)

    # -- the loop -------------------------------------------------------------------------------

    def address(self) -> str:
        return f"tcp://{self.cfg.host}:{self.ports['service']}"

    def stop(self) -> None:
        self._stop = True

    def serve(self, max_seconds: float | None = None) -> None:
        end = None if max_seconds is None else time.monotonic() + max_seconds
        next_stats = time.monotonic() + self.cfg.stats_interval_s
        next_snapshot = time.monotonic() + self.cfg.snapshot_every_s
        poller = zmq.Poller()
        for s in (self.service, self.weights_in, self.weights_out):
            poller.register(s, zmq.POLLIN)
        ingest_on = False
        while not self._stop and (end is None or time.monotonic() < end):
            # Not reading the ingest socket is how actors are held back: their
            # PUSH sockets fill to the high-water mark and block.
            self._update_flushing()
            want_ingest = self.table is None or self.table.limiter.can_insert() or bool(self.flushing)
            if want_ingest != ingest_on:
                if want_ingest:
                    poller.register(self.ingest, zmq.POLLIN)
                else:
                    poller.unregister(self.ingest)
                ingest_on = want_ingest
            events = dict(poller.poll(100))
            if self.service in events:
                self._drain(self.service, self._on_request)
            if self.ingest in events:
                self._drain(self.ingest, self._on_segment)
            if self.weights_in in events:
                self._drain(self.weights_in, self._on_published_weights)
            if self.weights_out in events:
                self._drain(self.weights_out, self._on_subscription)
            self._serve_pending()
            self.stats.update_rates()
            if self.cfg.snapshot_dir and time.monotonic() >= next_snapshot:
                self.snapshot()
                next_snapshot = time.monotonic() + self.cfg.snapshot_every_s
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.cfg.stats_interval_s
                log.info("broker: %s", json.dumps(self.stats_summary(brief=True)))

    def _drain(self, sock: zmq.Socket, handler, budget: int = 256) -> None:
        """Handle what is queued on a socket, at most ``budget`` messages, so no socket starves the others."""
        for _ in range(budget):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handler(frames)
            if sock is self.ingest and self.table is not None and not self.table.limiter.can_insert():
                self._update_flushing()
                if not self.flushing:
                    return

    def close(self) -> None:
        for s in (self.service, self.ingest, self.weights_in, self.weights_out):
            s.close(linger=0)
        if self.auth is not None:
            self.auth.stop()

    # -- handlers -------------------------------------------------------------------------------

    def _reject(self, where: str, reason: str, detail: str = "") -> None:
        self.stats.rejected[reason] += 1
        self.stats.rejected_on[where] += 1
        now = time.monotonic()
        if now - self.stats.last_reject_log.get(reason, -1e9) > 5.0:
            self.stats.last_reject_log[reason] = now
            log.warning("broker: rejected a message on %s: %s %s (%d so far)", where, reason, detail,
                        self.stats.rejected[reason])

    def _on_segment(self, frames: list) -> None:
        try:
            msg = wire.decode(frames, self.limits)
        except wire.WireError as exc:
            return self._reject("ingest", exc.reason, exc.detail)
        if msg.type != "segment":
            return self._reject("ingest", "unexpected_type", msg.type)
        meta = msg.meta
        try:
            actor_id = _int(meta, "actor_id")
            seq = _int(meta, "seq")
            version = _int(meta, "policy_version")
            frames_count = _int(meta, "frames")
            incarnation = str(meta.get("incarnation", ""))[:32]
            returns = [float(x) for x in meta.get("episode_returns", [])]
            lengths = [int(x) for x in meta.get("episode_lengths", [])]
        except (KeyError, TypeError, ValueError) as exc:
            return self._reject("ingest", "bad_meta", str(exc))
        s = self.stats
        a = s.actors.setdefault(actor_id, {"segments": 0, "frames": 0, "seq": -1, "policy_version": -1,
                                           "incarnation": None, "incarnations": 0, "gaps": 0, "duplicates": 0,
                                           "seqs": {}, "frames_per_s": 0.0})
        # Sequence accounting per actor incarnation (a restarted worker starts again at 0):
        # a jump forward is segments lost on the way, a step back a duplicate, dropped here.
        # A killed worker's last segments can still arrive after its successor's first ones,
        # so the last sequence number of each recent incarnation is kept, not just the newest.
        seqs = a["seqs"]
        if incarnation not in seqs:
            seqs[incarnation] = -1
            a.update(incarnation=incarnation, incarnations=a["incarnations"] + 1)
            while len(seqs) > MAX_INCARNATIONS_TRACKED:
                del seqs[next(iter(seqs))]  # the oldest
        if seq <= seqs[incarnation]:
            a["duplicates"] += 1
            s.duplicates += 1
            return self._reject("ingest", "duplicate", f"actor {actor_id} seq {seq}")
        if seq > seqs[incarnation] + 1:
            a["gaps"] += seq - seqs[incarnation] - 1
            s.gaps += seq - seqs[incarnation] - 1
        seqs[incarnation] = seq
        a["last_seen"] = time.time()
        if incarnation == a["incarnation"]:
            a["seq"] = seq
        if self.table is None:
            return self._reject("ingest", "no_table", "no learner has registered yet")
        arrays = dict(msg.arrays)
        priorities = arrays.pop("_priority", None)  # optional initial priorities computed by the actor
        try:
            n = self.table.insert(arrays, None if priorities is None else np.asarray(priorities, dtype=np.float64),
                                  version=version)
        except SchemaError as exc:
            return self._reject("ingest", "schema_mismatch", str(exc))
        s.segments += 1
        s.items += n
        s.frames += frames_count
        s.episodes += len(returns)
        s.returns.extend(returns)
        s.lengths.extend(lengths)
        s.policy_lag.append(max(0, self.weights_version - version))
        a.update(segments=a["segments"] + 1, frames=a["frames"] + frames_count, policy_version=version)

    def _on_request(self, frames: list) -> None:
        identity, body = frames[0], frames[1:]
        try:
            msg = wire.decode(body, self.limits)
        except wire.WireError as exc:
            return self._reject("service", exc.reason, exc.detail)
        req = msg.meta.get("req")
        handler = {
            "register": self._on_register,
            "get_spec": self._on_get_spec,
            "get_weights": self._on_get_weights,
            "sample": self._on_sample,
            "get_stats": self._on_get_stats,
            "flush": self._on_flush,
            "update_priorities": self._on_update_priorities,
            "claim_ids": self._on_claim_ids,
        }.get(msg.type)
        if handler is None:
            self._reject("service", "unexpected_type", msg.type)
            return self._reply(identity, "error", {"req": req, "reason": f"unexpected message type {msg.type}"})
        handler(identity, msg, req)

    def _on_get_stats(self, identity, msg: wire.Message, req) -> None:
        extra = {}
        sampler = msg.meta.get("sampler")
        if isinstance(sampler, str) and len(sampler) <= 64:
            # The learner asks which of its sample requests are held here (still waiting for data),
            # so it can tell requests lost with a dropped connection from requests merely waiting.
            sampler_id = sampler.encode()
            extra["sampler_pending"] = [r for ident, r, *_ in self.pending
                                       if isinstance(r, int) and ident.bytes == sampler_id]
        self._reply(identity, "stats", {"req": req, **self.stats_summary(), **extra})

    def _reply(self, identity, msg_type: str, meta: dict, arrays: dict | None = None) -> None:
        self.service.send_multipart([identity, *wire.encode(msg_type, meta, arrays)], copy=False)

    def _on_flush(self, identity, msg: wire.Message, req) -> None:
        """A stopping actor's last segments may sit in ingest while the rate limiter holds actors
        back; once it disconnects libzmq would discard them. Read ingest past the limiter until
        that incarnation's last sequence number has arrived (or a few seconds have passed)."""
        try:
            key = (_int(msg.meta, "actor_id"), str(msg.meta["incarnation"])[:32])
            last_seq = _int(msg.meta, "last_seq")
        except (KeyError, TypeError, ValueError) as exc:
            self._reject("service", "bad_flush", str(exc))
            return self._reply(identity, "error", {"req": req, "reason": f"bad flush: {exc}"})
        if self._flushed(key) < last_seq:
            self.flushing[key] = (last_seq, time.monotonic() + FLUSH_TIMEOUT_S)
        self._reply(identity, "ok", {"req": req})

    def _on_claim_ids(self, identity, msg: wire.Message, req) -> None:
        """Hand out a block of actor ids no one has used (replicas of one container image
        cannot pick distinct --first-id values themselves)."""
        try:
            n = _int(msg.meta, "n")
            if not 1 <= n <= 4096:
                raise ValueError("n must be 1..4096")
        except (KeyError, TypeError, ValueError) as exc:
            self._reject("service", "bad_claim_ids", str(exc))
            return self._reply(identity, "error", {"req": req, "reason": f"bad claim_ids: {exc}"})
        first = max([self.stats.next_actor_id, *(k + 1 for k in self.stats.actors)])
        self.stats.next_actor_id = first + n
        log.info("broker: actor ids %d..%d claimed", first, first + n - 1)
        self._reply(identity, "ok", {"req": req, "first_id": first})

    def _flushed(self, key: tuple[int, str]) -> int:
        return self.stats.actors.get(key[0], {}).get("seqs", {}).get(key[1], -1)

    def _update_flushing(self) -> None:
        now = time.monotonic()
        for key, (last_seq, deadline) in list(self.flushing.items()):
            if self._flushed(key) >= last_seq or now > deadline:
                del self.flushing[key]

    def _on_register(self, identity, msg: wire.Message, req) -> None:
        try:
            spec = msg.meta["spec"]
            table_cfg = TableConfig.from_meta(msg.meta["table"])
            version = _int(msg.meta, "weights_version")
            if not isinstance(spec, dict):
                raise TypeError("spec must be a map")
        except (KeyError, TypeError, ValueError) as exc:
            self._reject("service", "bad_register", str(exc))
            return self._reply(identity, "error", {"req": req, "reason": f"bad register: {exc}"})
        # A learner that restarts with the same table keeps the experience collected so far.
        if self.table is None or self.table.cfg != table_cfg or (self.spec or {}).get("run_id") != spec.get("run_id"):
            self.table = make_table(table_cfg, seed=self.cfg.seed)
            self.pending.clear()
            log.info("broker: new table %s for run %s", table_cfg, spec.get("run_id"))
        self.spec = spec
        self.weights_version = -1
        self._cache_weights(wire.encode("weights", {"version": version, "run_id": spec.get("run_id")}, msg.arrays), version)
        self._reply(identity, "ok", {"req": req, "ports": self.ports})

    def _on_get_spec(self, identity, msg, req) -> None:
        if self.spec is None:
            return self._reply(identity, "not_ready", {"req": req})
        self._reply(identity, "spec", {"req": req, "spec": self.spec, "ports": self.ports,
                                       "weights_version": self.weights_version})

    def _on_get_weights(self, identity, msg, req) -> None:
        if self.weights_frames is None:
            return self._reply(identity, "not_ready", {"req": req})
        weights = wire.decode(self.weights_frames, self.limits)
        self._reply(identity, "weights", {"req": req, **weights.meta}, weights.arrays)

    def _on_sample(self, identity, msg, req) -> None:
        batch_size = msg.meta.get("batch_size")
        if not isinstance(batch_size, int) or not 0 < batch_size <= 1 << 20:
            self._reject("service", "bad_sample", repr(batch_size))
            return self._reply(identity, "error", {"req": req, "reason": "batch_size must be a positive int"})
        beta = msg.meta.get("beta", 1.0)  # importance-sampling exponent (prioritized tables), annealed by the learner
        if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0 <= beta <= 1:
            self._reject("service", "bad_sample", f"beta {beta!r}")
            return self._reply(identity, "error", {"req": req, "reason": "beta must be a number in [0, 1]"})
        if self.table is None:
            return self._reply(identity, "error", {"req": req, "reason": "no table: register first"})
        self.pending.append((identity, req, batch_size, float(beta), time.monotonic()))

    def _serve_pending(self) -> None:
        table = self.table
        if isinstance(table, QueueTable):  # on-policy: items too old for the newest weights are dropped, counted
            table.drop_stale(self.weights_version)
        while self.pending and table is not None and table.limiter.can_sample(table.size, self.pending[0][2]):
            identity, req, batch_size, beta, t0 = self.pending.popleft()
            arrays, ids, weights = table.sample(batch_size, beta)
            self.stats.batches += 1
            self.stats.sampled_items += batch_size
            self.stats.sample_wait_s += time.monotonic() - t0
            extra = {"_id": ids} if weights is None else {"_id": ids, "_weight": weights}
            if isinstance(table, QueueTable):
                self.stats.served_lag.extend(table.served_lags)
            self._reply(identity, "batch", {"req": req}, {**arrays, **extra})

    def _on_update_priorities(self, identity, msg: wire.Message, req) -> None:
        """New priorities by item id from the learner; ids overwritten meanwhile are skipped."""
        try:
            if self.table is None:
                raise ValueError("no table: register first")
            updated = self.table.update_priorities(msg.arrays["ids"], msg.arrays["priorities"])
        except (KeyError, ValueError) as exc:
            self._reject("service", "bad_priorities", str(exc))
            return self._reply(identity, "error", {"req": req, "reason": f"bad update_priorities: {exc}"})
        self.stats.priority_updates += updated
        self.stats.priority_updates_skipped += len(msg.arrays["ids"]) - updated
        self._reply(identity, "ok", {"req": req, "updated": updated})

    def _on_published_weights(self, frames: list) -> None:
        try:
            msg = wire.decode(frames, self.limits)
            version = _int(msg.meta, "version")
        except (wire.WireError, KeyError, TypeError, ValueError) as exc:
            return self._reject("weights_in", getattr(exc, "reason", "bad_meta"), str(exc))
        if msg.type != "weights":
            return self._reject("weights_in", "unexpected_type", msg.type)
        if version <= self.weights_version:
            return  # a stale publish, e.g. from a learner that restarted from an older checkpoint
        self._cache_weights([f.buffer for f in frames], version)

    def _cache_weights(self, frames: list, version: int) -> None:
        self.weights_frames, self.weights_version = frames, version
        self.weights_out.send_multipart(frames, copy=False)

    def _on_subscription(self, frames: list) -> None:
        data = frames[0].bytes
        if data[:1] == b"\x01" and self.weights_frames is not None:
            self.weights_out.send_multipart(self.weights_frames, copy=False)

    # -- stats ----------------------------------------------------------------------------------

    def stats_summary(self, brief: bool = False) -> dict[str, Any]:
        s, t = self.stats, self.table
        out = {
            "broker_id": self.broker_id,  # new with every broker process: tells a restart apart
            "run_id": (self.spec or {}).get("run_id"),
            "segments": s.segments,
            "items": s.items,
            "frames": s.frames,
            "episodes": s.episodes,
            "mean_return_100": float(np.mean(s.returns)) if s.returns else None,
            "mean_length_100": float(np.mean(s.lengths)) if s.lengths else None,
            "policy_lag_100": float(np.mean(s.policy_lag)) if s.policy_lag else None,
            "rejected": dict(s.rejected),
            "rejected_on": dict(s.rejected_on),  # the same rejections by socket
            "gaps": s.gaps,  # segments that never arrived (sequence numbers skipped)
            "duplicates": s.duplicates,
            "dropped_stale": getattr(t, "dropped_stale", 0),  # FIFO queues: dropped on purpose (too old)
            "dropped_overflow": getattr(t, "dropped_overflow", 0),
            "served_policy_lag": float(np.mean(s.served_lag)) if s.served_lag else None,
            "priority_updates": s.priority_updates,  # items whose priority the learner set
            "priority_updates_skipped": s.priority_updates_skipped,  # ids overwritten before the update came
            "replay_size": t.size if t else 0,
            "replay_capacity": t.cfg.capacity if t else 0,
            "batches": s.batches,
            "insert_rate": s.insert_rate,  # items/s over the last second
            "sample_rate": s.sample_rate,  # sampled items/s over the last second
            "pending_samples": len(self.pending),
            "weights_version": self.weights_version,
            "actors": len(s.actors),
            "uptime_s": time.monotonic() - s.started,
            "snapshots": s.snapshots,
            "snapshot_error": s.snapshot_error,
            # What the snapshot this broker started from held: a restarted broker counts the
            # segments received after that snapshot (and in flight at the kill) as gaps.
            "restored": s.restored,
        }
        if not brief:
            out["per_actor"] = {str(k): {n: x for n, x in v.items() if not n.startswith("_")}
                                for k, v in s.actors.items()}
        return out


class _Stats:
    def __init__(self):
        self.started = time.monotonic()
        self.segments = self.items = self.frames = self.episodes = self.batches = 0
        self.sampled_items = 0
        self.gaps = self.duplicates = 0
        self.priority_updates = self.priority_updates_skipped = 0
        self.next_actor_id = 0  # the next id handed out by claim_ids
        self.snapshots = 0
        self.snapshot_error: str | None = None  # a snapshot found at start but refused
        self.restored: dict[str, Any] | None = None
        self.insert_rate = self.sample_rate = 0.0
        self._rate_mark = (self.started, 0, 0)  # (time, items, sampled items) at the last rate update
        self.sample_wait_s = 0.0
        self.returns: collections.deque = collections.deque(maxlen=100)
        self.lengths: collections.deque = collections.deque(maxlen=100)
        self.policy_lag: collections.deque = collections.deque(maxlen=100)  # weight versions behind, per segment
        self.served_lag: collections.deque = collections.deque(maxlen=1000)  # FIFO queues: lag of items when served
        self.rejected: collections.Counter = collections.Counter()
        self.rejected_on: collections.Counter = collections.Counter()
        self.last_reject_log: dict[str, float] = {}
        self.actors: dict[int, dict[str, Any]] = {}

    _COUNTERS = ("segments", "items", "frames", "episodes", "batches", "sampled_items", "gaps", "duplicates",
                 "next_actor_id")

    def accounting(self) -> dict[str, Any]:
        """The counters a snapshot keeps (JSON-ready)."""
        return {**{k: getattr(self, k) for k in self._COUNTERS},
                "actors": {str(k): {n: x for n, x in v.items() if not n.startswith("_")}
                           for k, v in self.actors.items()}}

    def restore_accounting(self, doc: dict[str, Any]) -> None:
        for k in self._COUNTERS:
            setattr(self, k, int(doc.get(k, 0)))
        self.actors = {int(k): dict(v) for k, v in doc.get("actors", {}).items()}
        self._rate_mark = (time.monotonic(), self.items, self.sampled_items)

    def update_rates(self, every_s: float = 1.0) -> None:
        t0, items0, sampled0 = self._rate_mark
        now = time.monotonic()
        if now - t0 >= every_s:
            self.insert_rate = (self.items - items0) / (now - t0)
            self.sample_rate = (self.sampled_items - sampled0) / (now - t0)
            self._rate_mark = (now, self.items, self.sampled_items)
            for a in self.actors.values():  # env frames/s of each actor over the last second
                a["frames_per_s"] = (a["frames"] - a.get("_frames_mark", a["frames"])) / (now - t0)
                a["_frames_mark"] = a["frames"]


def _int(meta: dict, key: str) -> int:
    value = meta[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key} must be an integer")
    return value


def run_broker(cfg: BrokerConfig, address_file: str | None = None) -> None:
    """Process entry point: serve until SIGINT/SIGTERM."""
    broker = Broker(cfg)
    if not cfg.keys and not ipaddress.ip_address(socket.gethostbyname(cfg.host)).is_loopback:
        log.warning("broker: WARNING: listening on %s without encryption or authentication; anyone who can "
                    "reach these ports can read weights and inject experience", cfg.host)
    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    signal.signal(signal.SIGINT, lambda *_: broker.stop())
    if address_file:
        tmp = address_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"address": broker.address(), "ports": broker.ports, "pid": os.getpid()}, f)
        os.replace(tmp, address_file)  # readers never see a half-written file
    log.info("broker: serving on %s (ports %s)", broker.address(), broker.ports)
    try:
        broker.serve()
        broker.snapshot()  # stopped by SIGINT/SIGTERM: keep what we hold
    finally:
        broker.close()
        log.info("broker: stopped")
