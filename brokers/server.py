"""The broker: the one rendezvous point of a qrl run.

Sockets (all bound; everybody else connects):
    service     ROUTER  requests: register, get_spec, get_weights, sample, get_stats
    ingest      PULL    segments from actors
    weights_in  XSUB    the learner's PUB connects here
    weights_out XPUB    actors' SUB sockets connect here

The broker is a last-value cache for the run spec and the newest weights: a
subscriber that joins late is sent the cached weights as soon as its
subscription arrives. It never imports torch and knows no algorithm.

One thread, one poller. Every message is checked before any handler or counter
sees it: the envelope (qrl.protocol.wire), the metadata against its type's schema
(qrl.protocol.messages), then what only the broker can judge: the registered run, the
item schema the learner declared, finite values, sequence windows, the run's
token for weights, and with keys the sender's role. A message that fails is
dropped (a request gets an error reply), counted by reason and logged at most
once per reason every few seconds; it is never fatal. The trust model is in
docs/protocol.md ("Security", "No code from a spec").
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import itertools
import json
import math
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from qrl.protocol import messages, transport, wire
from qrl.brokers import snapshot
from qrl.brokers.actors import SEQ_WINDOW, ActorRecord, Duplicate, OutOfWindow
from qrl.brokers.credits import RESTORE_GRACE_S, Credits
from qrl.brokers.tables import (FRAMES, INITIAL_PRIORITY, ItemSchema, ReplayTable, SchemaError, TableConfig,
                               demonstration_table, make_table, sample_demonstrations)
from qrl.protocol.transport import bind

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
    max_table_bytes: int = 0
    """The largest replay table a learner may register, in bytes (0: 3/4 of this machine's memory)."""
    run_lease_s: float = 30.0
    """A run's learner holds it while heard from (its token on register, sample requests and weights)
    within this many seconds: meanwhile a register of another run is refused (run_held)."""


FLUSH_TIMEOUT_S = 5.0
"""How long a stopping actor's flush may read ingest past the rate limiter."""
MAX_ACTORS_TRACKED = 65_536
"""Actor ids whose counters are kept; beyond that the least recently seen are forgotten."""
MAX_SOURCES = 65_536
"""Actor incarnations whose consumed segments the broker reports (for synchronous actors), until a
new table starts; segments of any beyond are never reported (their actors wait out CONSUMED_WAIT_S)."""
PER_ACTOR_SHOWN = 256
"""Actors detailed in a stats reply (the most recently seen); the rest are summed."""
MAX_VERSION_STEP = 1 << 20
"""How far past the cached weights version a published version may jump."""
MAX_CLAIMED_ID = 1 << 40
"""claim_ids hands out ids below this (plenty for any cluster), whatever ids actors chose themselves."""
REQUESTS_PER_S = 200.0
"""Requests per second a peer (a connection) may send to service, in bursts of twice that; more are
dropped unread and counted (rate_limited). The run's own sampling socket is exempt, and so is a
peer the broker has granted a credit (an actor asks once per segment, and a central inference
server for all its env actors on one connection)."""
MAX_CREDIT_PEERS = 4096
"""Peers granted a credit that the rate limit exempts: the most recent this many."""
MAX_PEERS_TRACKED = 4096
MAX_PENDING_SAMPLES = 1024
"""Sample requests held at once; more are refused."""
RESEND_INTERVAL_S = 0.2
"""Cached weights are resent to (new) subscribers at most this often."""
REQUEST_ROLES = {
    "register": ("learner",), "demos": ("learner",), "sample": ("learner",), "sample_status": ("learner",),
    "update_priorities": ("learner",), "release": ("learner",),
    "get_spec": ("learner", "actor"), "get_weights": ("learner", "actor"),
    "claim_ids": ("actor",), "flush": ("actor",), "actor_error": ("actor",), "credit": ("actor",),
    "get_stats": ("learner", "actor", "observer"),
}
"""With keys: the roles (transport.ROLES) that may send each request; "client" (a key of the
layout before roles) may send all."""
HOLDER_REQUESTS = frozenset({"sample", "sample_status", "update_priorities", "release", "demos"})
"""Requests only the run's holder may send: without keys they carry its token."""


class Broker:
    def __init__(self, cfg: BrokerConfig, ctx: zmq.Context | None = None):
        self.cfg = cfg
        self.ctx = ctx or zmq.Context.instance()
        self.auth = None
        if cfg.keys:
            transport.use_keys(cfg.keys, server=True)
            self.auth = transport.start_authenticator(self.ctx, cfg.keys)
        self.limits = wire.Limits(max_message_bytes=cfg.max_message_bytes)
        self._open_sockets(cfg)

        self.spec: dict[str, Any] | None = None
        self.token_hash: str | None = None  # SHA-256 of the registered learner's token
        self.holder_seen = -math.inf  # when the run's learner (its token) was last heard from: its lease
        self.holder_peers: dict[bytes, None] = {}  # the routing ids the holder sampled from (not rate limited)
        self.credit_peers: collections.OrderedDict[bytes, None] = collections.OrderedDict()  # (nor these)
        self.peer_buckets: dict[bytes, tuple[float, float]] = {}  # peer -> (tokens, when)
        self.frame_limit: int | None = None  # stats.frames at which the run's frame budget is spent
        self.table: ReplayTable | None = None
        self.demo_table: ReplayTable | None = None  # the run's demonstrations (run.demos), filled by its learner
        self.demo_total = 0  # the items the learner said the demonstration table holds when whole
        self._reset_sources()
        self.weights_frames: list | None = None
        self.weights_layout: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None
        self.weights_version = -1
        self.last_resend, self.resend_due = -1e9, None
        self.max_table_bytes = cfg.max_table_bytes or int(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 3 // 4)
        self._handlers = {
            "register": self._on_register, "get_spec": self._on_get_spec, "get_weights": self._on_get_weights,
            "sample": self._on_sample, "sample_status": self._on_sample_status, "get_stats": self._on_get_stats,
            "flush": self._on_flush, "update_priorities": self._on_update_priorities, "claim_ids": self._on_claim_ids,
            "actor_error": self._on_actor_error, "release": self._on_release, "credit": self._on_credit,
            "demos": self._on_demos,
        }
        self.credits = Credits()
        self.pending: collections.deque = collections.deque()  # sample requests held by the rate limiter
        self.stats = _Stats()
        self.broker_id = uuid.uuid4().hex[:12]
        self.flushing: dict[tuple[int, str], tuple[int, float]] = {}  # (actor, incarnation) -> (last seq, deadline)
        self._stop = False
        if cfg.snapshot_dir:
            self._restore(cfg.snapshot_dir)

    def _open_sockets(self, cfg: BrokerConfig) -> None:
        """Bind the four sockets (service, ingest, weights in and out) on consecutive ports from
        cfg.port, or free ones (port 0)."""
        self.service = transport.socket(self.ctx, zmq.ROUTER)
        # A client that sets its own routing id (the learner's sampler) and reconnects, e.g. after
        # a pause longer than the heartbeat timeout, takes its id over: the batches for the
        # requests it left pending here reach the new connection instead of being dropped.
        self.service.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # No heartbeats on ingest (nor on the actors' side, qrl.acting.actor.ingest_socket): its input is
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
        self.sockets = {"service": self.service, "ingest": self.ingest, "weights_in": self.weights_in,
                        "weights_out": self.weights_out}
        if cfg.keys:  # the ZAP domain tells the authenticator which roles may connect (transport.SOCKET_ROLES)
            for name, sock in self.sockets.items():
                sock.zap_domain = name.encode()
        try:
            self.ports = {name: bind(sock, cfg.host, cfg.port + i if cfg.port else 0)
                          for i, (name, sock) in enumerate(self.sockets.items())}
        except Exception:
            for sock in self.sockets.values():
                sock.close(linger=0)
            raise
        self.weights_in.send(b"\x01")  # XSUB: subscribe to everything the learner publishes

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
        self.token_hash = restored.accounting.get("run_token_sha256")
        if self.spec is not None:  # its learner gets a whole lease to come back before anyone may take over
            self.holder_seen = time.monotonic()
        self.weights_layout = _layout(restored.weights)
        if self.spec is not None and restored.weights:
            self._cache_weights(wire.encode("weights", {"version": restored.weights_version,
                                                        "run_id": self.spec.get("run_id")}, restored.weights),
                                restored.weights_version)
        self.stats.restore_accounting(restored.accounting)
        self.credits.grace_until = time.monotonic() + RESTORE_GRACE_S  # what actors collected on earlier grants
        self.stats.restored = {"items": self.table.size, "segments": self.stats.segments, "batches": self.stats.batches,
                               "seq": {str(k): a.seq for k, a in self.stats.actors.items()}}
        log.info("broker: restored %d items, %d segments received, and run %s from %s", self.table.size,
                 self.stats.segments, (self.spec or {}).get("run_id"), directory)

    def snapshot(self) -> None:
        if not self.cfg.snapshot_dir or self.table is None:
            return
        t0 = time.monotonic()
        weights = wire.decode(self.weights_frames, self.limits).arrays if self.weights_frames else None
        path = snapshot.save(self.cfg.snapshot_dir, self.table, self.spec, weights, self.weights_version,
                             {**self.stats.accounting(), "run_token_sha256": self.token_hash})
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
                self._drain("service", self._on_request)
            if self.ingest in events:
                self._drain("ingest", self._on_segment)
            if self.weights_in in events:
                self._drain("weights_in", self._on_published_weights)
            if self.weights_out in events:
                self._drain("weights_out", self._on_subscription)
            if self.resend_due is not None and time.monotonic() >= self.resend_due:
                self._resend()
            self._serve_pending()
            self._answer_credits()
            self.stats.update_rates()
            if self.cfg.snapshot_dir and time.monotonic() >= next_snapshot:
                self.snapshot()
                next_snapshot = time.monotonic() + self.cfg.snapshot_every_s
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.cfg.stats_interval_s
                log.info("broker: %s", json.dumps(self.stats_summary(brief=True)))

    def _drain(self, where: str, handler, budget: int = 256) -> None:
        """Handle what is queued on a socket, at most ``budget`` messages, so no socket starves the others."""
        sock = self.sockets[where]
        for _ in range(budget):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._guarded(where, handler, frames)
            if sock is self.ingest and self.table is not None and not self.table.limiter.can_insert():
                self._update_flushing()
                if not self.flushing:
                    return

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()

    # -- handlers -------------------------------------------------------------------------------

    def _reject(self, where: str, reason: str, detail: str = "") -> None:
        self.stats.rejected[reason] += 1
        self.stats.rejected_on[where] += 1
        now = time.monotonic()
        if now - self.stats.last_reject_log.get(reason, -1e9) > 5.0:
            self.stats.last_reject_log[reason] = now
            log.warning("broker: rejected a message on %s: %s %s (%d so far)", where, reason, detail[:300],
                        self.stats.rejected[reason])

    def _receive(self, where: str, frames: list, expected: str) -> tuple[wire.Message, dict] | None:
        """Decode a message of the one type this socket takes and check its metadata against the
        type's schema; None (rejected and counted) if anything fails."""
        try:
            msg = wire.decode(frames, self.limits)
            meta = messages.validate(msg.type, msg.meta)
        except (wire.WireError, messages.MessageError) as exc:
            self._reject(where, exc.reason, exc.detail)
            return None
        if msg.type != expected:
            self._reject(where, "unexpected_type", msg.type)
            return None
        return msg, meta

    def _guarded(self, where: str, handler, frames: list) -> None:
        """The last line of defence: a message that gets past validation and still raises is
        counted as internal_error and logged with its traceback; the broker keeps serving."""
        try:
            handler(frames)
        except Exception:  # noqa: BLE001 - nothing a client sends may stop the broker
            self.stats.rejected["internal_error"] += 1
            self.stats.rejected_on[where] += 1
            log.exception("broker: internal error handling a message on %s (counted, not fatal)", where)

    def _on_segment(self, frames: list) -> None:
        received = self._receive("ingest", frames, "segment")
        if received is None:
            return
        msg, meta = received
        if self.table is None or self.spec is None:
            return self._reject("ingest", "no_table", "no learner has registered yet")
        if meta["run_id"] != self.spec["run_id"]:
            return self._reject("ingest", "wrong_run", f"segment of run {meta['run_id']}")
        stream = (meta["actor_id"], meta["incarnation"])  # whose previous segment its references may link to
        if not self.credits.covers(stream, meta["seq"], time.monotonic()):
            return self._reject("ingest", "no_credit", f"actor {meta['actor_id']} seq {meta['seq']}: no credit asked "
                                                       "for it (docs/protocol.md, \"Flow control\")")
        self.credits.arrived(stream, meta["seq"], time.monotonic())
        returns, lengths = meta.get("episode_returns", []), meta.get("episode_lengths", [])
        if len(returns) != len(lengths):
            return self._reject("ingest", "bad_meta", "episode_returns and episode_lengths differ in length")
        limit = self.table.item_schema.return_limit
        if limit is not None and any(abs(r) > limit for r in returns):
            return self._reject("ingest", "out_of_bounds", f"an episode return beyond +-{limit:g} (return_limit)")
        arrays = dict(msg.arrays)
        priorities = arrays.pop(INITIAL_PRIORITY, None)  # optional initial priorities computed by the actor
        pool = arrays.pop(FRAMES, None)  # a table of frames: the frames the items' references point into
        try:
            n_items = self.table.check(arrays, priorities, frames=meta["frames"], pool=pool, stream=stream,
                                       seq=meta["seq"])
        except SchemaError as exc:
            return self._reject("ingest", exc.reason, str(exc))
        actor_id, incarnation, seq = meta["actor_id"], meta["incarnation"], meta["seq"]
        a = self._actor(actor_id)
        # Sequence accounting per actor incarnation, only for segments that are otherwise
        # acceptable: a step back is a duplicate, a jump forward is segments lost on the way (gaps),
        # a jump beyond the window is refused (brokers/actors.py).
        try:
            a.check_seq(incarnation, seq)
        except Duplicate:
            self.stats.duplicates += 1
            return self._reject("ingest", "duplicate", f"actor {actor_id} seq {seq}")
        except OutOfWindow as exc:
            return self._reject("ingest", "seq_out_of_window", f"actor {actor_id}: {exc}")
        self.stats.gaps += a.record_seq(incarnation, seq)
        self.stats.actors.move_to_end(actor_id)
        self._store_segment(arrays, n_items, priorities, meta, a, returns, lengths, pool)

    def _store_segment(self, arrays: dict[str, np.ndarray], n_items: int, priorities: np.ndarray | None,
                       meta: dict[str, Any], a: ActorRecord, returns: list, lengths: list,
                       pool: np.ndarray | None) -> None:
        """Store an accepted segment, unless its weights are too old (flow control), and count it."""
        # Flow control for every table: a segment made by weights more than max_policy_lag
        # versions older than the newest is dropped (counted), so how far an actor runs ahead
        # (its socket options, its kernel buffers) never reaches the learner as stale data.
        # A version from the future (a broker restarted from an older snapshot) counts as current.
        version = min(meta["policy_version"], self.weights_version)
        lag = self.weights_version - version
        bound = self.table.cfg.max_policy_lag
        code, seq = self._source_code(meta["incarnation"]), meta["seq"]
        stream = (meta["actor_id"], meta["incarnation"])
        over_budget = self.frame_limit is not None and self.stats.frames >= self.frame_limit
        if over_budget or (bound is not None and lag > bound):
            if over_budget:  # what actors send after the budget is spent, until they are stopped
                self.stats.over_budget_segments += 1
                self.stats.over_budget_frames += meta["frames"]
            else:
                self.stats.dropped_stale_segments += 1
                self.stats.dropped_stale_items += n_items
                self.stats.dropped_stale_frames += meta["frames"]
            self._release_at_ingest(code, seq)
            self.table.keep_frames(arrays, pool, stream, seq)  # the stream's next segment may link to them
            return
        self.table.store(arrays, n_items, priorities, version, (code, seq), pool, stream, seq)
        s = self.stats
        if s.first_segment_time is None:
            s.first_segment_time = time.time()
        s.segments += 1
        s.items += n_items
        s.frames += meta["frames"]
        s.episodes += len(returns)
        s.returns.extend(returns)
        s.lengths.extend(lengths)
        s.policy_lag.append(lag)
        a.count(meta["frames"], version)

    def _actor(self, actor_id: int) -> ActorRecord:
        actors = self.stats.actors
        a = actors.get(actor_id)
        if a is None:
            a = actors[actor_id] = ActorRecord()
            while len(actors) > MAX_ACTORS_TRACKED:  # the least recently seen go first
                actors.popitem(last=False)
                self.stats.forgotten_actors += 1
        return a

    def _on_request(self, frames: list) -> None:
        identity, body = frames[0], frames[1:]
        if not self._within_rate(identity.bytes):  # before decoding: a flood costs the broker next to nothing
            self.stats.rejected["rate_limited"] += 1
            self.stats.rejected_on["service"] += 1
            return
        try:
            msg = wire.decode(body, self.limits)
        except wire.WireError as exc:  # answered with the request id when one could be read
            return self._refuse(identity, wire.peek_req(body), exc.reason, exc.detail)
        try:
            meta = messages.validate(msg.type, msg.meta)
        except messages.MessageError as exc:
            req = msg.meta.get("req")
            return self._refuse(identity, req if isinstance(req, int) and abs(req) <= messages.MAX_INT else None,
                                exc.reason, exc.detail)
        req = meta.get("req")
        handler = self._handlers.get(msg.type)
        if handler is None:
            return self._refuse(identity, req, "unexpected_type", f"{msg.type} is not a request")
        role = body[0].get("User-Id") if self.auth is not None else None
        if role is not None and role not in REQUEST_ROLES[msg.type] and role != "client":
            return self._refuse(identity, req, "role_refused", f"role {role} may not {msg.type}")
        if msg.type in HOLDER_REQUESTS and not self._from_holder(identity.bytes, meta, role):
            return self._refuse(identity, req, "not_holder", f"{msg.type}: only the learner that holds the run may "
                                                              "ask (the run's token, or with keys the learner role)")
        if msg.type == "register":
            return self._on_register(identity, msg, meta, req, role)
        handler(identity, msg, meta, req)

    def _within_rate(self, peer: bytes) -> bool:
        """A token bucket per peer (routing id): REQUESTS_PER_S, bursts of twice that; the holder's
        sampling socket is never limited."""
        if peer in self.holder_peers or peer in self.credit_peers:
            return True
        now = time.monotonic()
        tokens, then = self.peer_buckets.pop(peer, (2 * REQUESTS_PER_S, now))
        tokens = min(2 * REQUESTS_PER_S, tokens + (now - then) * REQUESTS_PER_S)
        self.peer_buckets[peer] = (tokens - 1, now)  # most recent last
        while len(self.peer_buckets) > MAX_PEERS_TRACKED:
            del self.peer_buckets[next(iter(self.peer_buckets))]
        return tokens >= 1

    def _from_holder(self, peer: bytes, meta: dict, role: str | None) -> bool:
        """Whether a learner's request comes from the run's holder: with keys its role says so
        (checked already), without keys its token; a holder's request renews its lease."""
        if self.token_hash is None:
            return True  # no run yet: the request's own handler answers
        if role is None and not hmac.compare_digest(_token_hash(meta.get("token") or ""), self.token_hash):
            return False
        self.holder_seen = time.monotonic()
        if peer not in self.holder_peers:  # its sampling sockets, one per register: the newest 64
            self.holder_peers[peer] = None
            while len(self.holder_peers) > 64:
                del self.holder_peers[next(iter(self.holder_peers))]
        return True

    def _holder_alive(self) -> float | None:
        """Seconds since the run's holder was last heard from, while its lease runs; None once it has lapsed."""
        silent = time.monotonic() - self.holder_seen
        return silent if self.spec is not None and silent < self.cfg.run_lease_s else None

    def _refuse(self, identity, req, reason: str, detail: str) -> None:
        """Count a refused request and answer it: `error` with the reason code and a one-line detail."""
        self._reject("service", reason, detail)
        self._reply(identity, "error", {"req": req, "reason": reason, "detail": detail[:512]})

    def _on_get_stats(self, identity, msg: wire.Message, meta: dict, req) -> None:
        extra: dict[str, Any] = {}
        if "actor" in meta and "incarnation" in meta:
            # Only a worker that knows its incarnation (never shown in stats) learns how far the
            # broker has read it: a stopping actor confirms its last segment arrived.
            extra["flushed_seq"] = self._flushed((meta["actor"], meta["incarnation"]))
        summary = self.stats_summary(actors_from=meta.get("actors_from"),
                                     actors_limit=meta.get("actors_limit", PER_ACTOR_SHOWN))
        self._reply(identity, "stats", {"req": req, **summary, **extra})

    def _reply(self, identity, msg_type: str, meta: dict, arrays: dict | None = None) -> None:
        self.service.send_multipart([identity, *wire.encode(msg_type, meta, arrays)], copy=False)

    def _on_flush(self, identity, msg: wire.Message, meta: dict, req) -> None:
        """A stopping actor's last segments may sit in ingest while the rate limiter holds actors
        back; once it disconnects libzmq would discard them. Read ingest past the limiter until
        that incarnation's last sequence number has arrived (or a few seconds have passed).
        Only for an incarnation the broker has seen, and a last_seq within its window."""
        last = self._last_seq(meta["actor_id"], meta["incarnation"])
        if last is None:
            return self._refuse(identity, req, "bad_flush", "flush: unknown actor incarnation")
        if meta["last_seq"] > last + SEQ_WINDOW:
            return self._refuse(identity, req, "bad_flush", "flush: last_seq beyond the sequence window")
        if last < meta["last_seq"]:
            self.flushing[(meta["actor_id"], meta["incarnation"])] = (meta["last_seq"],
                                                                      time.monotonic() + FLUSH_TIMEOUT_S)
        self._reply(identity, "ok", {"req": req})

    def _on_credit(self, identity, msg: wire.Message, meta: dict, req) -> None:
        """An actor asks to collect segment seq: answered at once when granted already, else held
        until the table has room for it or credits.HOLD_S has passed (brokers/credits.py)."""
        if self.table is None or self.spec is None:
            return self._refuse(identity, req, "no_table", "credit: no learner has registered yet")
        if meta["run_id"] != self.spec["run_id"]:
            return self._refuse(identity, req, "wrong_run", f"credit: the broker serves run {self.spec['run_id']}")
        try:
            until = self.credits.ask((meta["actor_id"], meta["incarnation"]), meta["seq"], identity, req,
                                     time.monotonic())
        except OverflowError as exc:
            return self._refuse(identity, req, "busy", f"credit: {exc}")
        if until is not None:
            self._reply(identity, "credit", {"req": req, "until": until})
            self._exempt(identity.bytes)
        else:
            self._answer_credits()

    def _answer_credits(self) -> None:
        if self.table is None or not (self.credits.waiting or self.credits.on_the_way):
            return
        limiter = self.table.limiter
        can_grant = limiter.can_grant if not self.flushing else (lambda *_: False)
        for identity, req, until in self.credits.answers(can_grant, self._segment_items(), time.monotonic()):
            self._reply(identity, "credit", {"req": req, "until": until})
            self._exempt(identity.bytes)

    def _exempt(self, peer: bytes) -> None:
        """A peer granted a credit (or asking again) is an actor at work: the rate limit spares it."""
        self.credit_peers[peer] = None
        self.credit_peers.move_to_end(peer)
        while len(self.credit_peers) > MAX_CREDIT_PEERS:
            self.credit_peers.popitem(last=False)

    def _segment_items(self) -> int:
        """Items a segment brings, for the credit accounting: the run's mean so far, else its run settings'."""
        s = self.stats
        if s.segments:
            return max(1, round(s.items / s.segments))
        run = self.spec["run"]
        return max(1, int(run.get("num_envs", 1)) * int(run.get("segment_length", 1)))

    def _on_claim_ids(self, identity, msg: wire.Message, meta: dict, req) -> None:
        """Hand out a block of actor ids no one has used (replicas of one container image
        cannot pick distinct --first-id values themselves)."""
        n = meta["n"]
        # Ids at or above MAX_CLAIMED_ID are never handed out, so one actor that names itself 2^53-1
        # cannot use up the range: the claims stay below every such id.
        first = max([self.stats.next_actor_id, *(k + 1 for k in self.stats.actors if k < MAX_CLAIMED_ID)])
        if first + n > MAX_CLAIMED_ID:
            return self._refuse(identity, req, "bad_claim_ids", "claim_ids: no ids left")
        self.stats.next_actor_id = first + n
        log.info("broker: actor ids %d..%d claimed", first, first + n - 1)
        self._reply(identity, "ok", {"req": req, "first_id": first})

    def _on_actor_error(self, identity, msg: wire.Message, meta: dict, req) -> None:
        """An actor that cannot act on the run (it refused the spec, its env failed) says why."""
        self.stats.actor_errors[meta["reason"]] += 1
        self.stats.actor_error_last[meta["reason"]] = f"actor {meta['actor_id']}: {meta['detail']}"
        log.warning("broker: actor %d: %s", meta["actor_id"], meta["detail"])
        self._reply(identity, "ok", {"req": req})

    def _last_seq(self, actor_id: int, incarnation: str) -> int | None:
        """The last sequence number read from this incarnation; None for one not tracked."""
        a = self.stats.actors.get(actor_id)
        return a.last_seq(incarnation) if a else None

    def _flushed(self, key: tuple[int, str]) -> int:
        last = self._last_seq(*key)
        return -1 if last is None else last

    def _update_flushing(self) -> None:
        now = time.monotonic()
        for key, (last_seq, deadline) in list(self.flushing.items()):
            if self._flushed(key) >= last_seq or now > deadline:
                del self.flushing[key]

    def _on_release(self, identity, msg: wire.Message, meta: dict, req) -> None:
        """The holder is done with its run: another run may register at once (what it stored stays)."""
        self.holder_seen = -math.inf
        log.info("broker: run %s released by its learner", (self.spec or {}).get("run_id"))
        self._reply(identity, "ok", {"req": req})

    def _on_register(self, identity, msg: wire.Message, meta: dict, req, role: str | None = None) -> None:
        spec = meta["spec"]
        try:
            table_cfg = TableConfig.from_meta(meta["table"])
            schema = ItemSchema.from_meta(meta["schema"])
            table_bytes = schema.table_bytes(table_cfg.capacity)
            if table_bytes > self.max_table_bytes:
                raise ValueError(f"a table of {table_cfg.capacity} items ({table_bytes} bytes) exceeds the broker's "
                                 f"limit of {self.max_table_bytes} bytes (broker.max_table_bytes)")
            if not _finite(msg.arrays):
                raise ValueError("the initial weights hold NaN or infinite values")
        except (ValueError, TypeError) as exc:
            return self._refuse(identity, req, "bad_register", f"bad register: {exc}")
        token_hash = _token_hash(meta["token"])
        same_run = self.spec is not None and self.spec["run_id"] == spec["run_id"]
        holder = self.token_hash is not None and hmac.compare_digest(token_hash, self.token_hash)
        if same_run and self.token_hash is not None and not holder:
            # Only the learner that holds a run (it keeps the token in its checkpoint) may register
            # it again: anyone else reusing the run id would replace its table and settings.
            return self._refuse(identity, req, "run_held", f"run {spec['run_id']} is held by another learner")
        silent = self._holder_alive()
        taking_over = meta.get("takeover_token") is not None and self.token_hash is not None and \
            hmac.compare_digest(_token_hash(meta["takeover_token"]), self.token_hash)
        if not same_run and silent is not None and role is None and not holder and not taking_over:
            # A run whose learner is alive is never switched under it (docs/protocol.md, "Run ownership").
            return self._refuse(identity, req, "run_held", f"run {self.spec['run_id']} is held by its learner (heard "
                                f"from {silent:.0f} s ago); another run may register once it has been silent "
                                f"{self.cfg.run_lease_s:g} s or released it, or with its token (takeover_token)")
        self.holder_seen = time.monotonic()
        if not same_run or self.table.cfg != table_cfg or self.table.item_schema != schema:
            # A learner that restarts with the same run, table and schema keeps the experience.
            self.table = make_table(table_cfg, seed=self.cfg.seed, schema=schema)
            self.demo_table, self.demo_total = None, 0
            self.pending.clear()
            self.flushing.clear()
            self.credits = Credits()
            self._reset_sources()
            if not same_run:
                self.stats.new_run()
                self.holder_peers.clear()
                self.credit_peers.clear()
            log.info("broker: new table %s for run %s", table_cfg, spec["run_id"])
        self.spec, self.token_hash = spec, token_hash
        left = meta.get("frames_left")  # counted from now: a restored broker's counter is its snapshot's
        self.frame_limit = None if left is None else self.stats.frames + left
        self.weights_layout = _layout(msg.arrays)
        self.weights_version = -1
        self._cache_weights(wire.encode("weights", {"version": meta["weights_version"], "run_id": spec["run_id"]},
                                        msg.arrays), meta["weights_version"])
        # frames: the count frames_left is counted from (actors of a restored run may push before this register)
        self._reply(identity, "ok", {"req": req, "ports": self.ports, "frames": self.stats.frames})

    def _on_get_spec(self, identity, msg, meta, req) -> None:
        if self.spec is None:
            return self._reply(identity, "not_ready", {"req": req})
        self._reply(identity, "spec", {"req": req, "spec": self.spec, "ports": self.ports,
                                       "weights_version": self.weights_version,
                                       "schema": self._schema_meta()})  # what a segment must hold

    def _schema_meta(self) -> dict | None:
        schema = self.table.item_schema if self.table is not None else None
        return schema.as_meta() if schema is not None else None

    def _on_get_weights(self, identity, msg, meta, req) -> None:
        if self.weights_frames is None:
            return self._reply(identity, "not_ready", {"req": req})
        weights = wire.decode(self.weights_frames, self.limits)
        self._reply(identity, "weights", {"req": req, **weights.meta}, weights.arrays)

    def _on_sample(self, identity, msg, meta, req) -> None:
        if self.table is None:
            return self._refuse(identity, req, "no_table", "sample: no table, register first")
        batch_size, demo_batch = meta["batch_size"], meta.get("demo_batch", 0)
        why = self._unservable(batch_size, demo_batch)
        if why:  # it could never be served, and would hold every request behind it
            return self._refuse(identity, req, "bad_sample", f"batch_size {batch_size}, demo_batch {demo_batch}: {why}")
        if demo_batch and not self._demos_whole():
            return self._refuse(identity, req, "no_demos", "sample: the run's demonstrations have not all arrived")
        if len(self.pending) >= MAX_PENDING_SAMPLES:
            return self._refuse(identity, req, "too_many_pending", f"{len(self.pending)} sample requests are waiting")
        self.pending.append((identity, req, batch_size, meta.get("beta", 1.0), time.monotonic(), demo_batch))

    def _on_sample_status(self, identity, msg, meta, req) -> None:
        """Which of this socket's sample requests are held here (waiting for data), and what a
        learner's stop rule and liveness need. Asked on the sampling socket itself and answered
        in order, so a request sent before it that is neither answered nor held was lost with a
        dropped connection (docs/protocol.md, "Requests on service")."""
        held = [r for ident, r, *_ in self.pending if ident.bytes == identity.bytes]
        self._reply(identity, "sample_status", {"req": req, "held": held, "frames": self.stats.frames,
                                                 "broker_id": self.broker_id, "weights_version": self.weights_version})

    def _unservable(self, batch_size: int, demo_batch: int = 0) -> str:
        """Why a batch of this size can never be served by the table ('' if it can)."""
        cfg, nbytes = self.table.cfg, batch_size * self.table.item_schema.served_bytes()
        if demo_batch and self.demo_table is not None:
            nbytes += demo_batch * self.demo_table.item_schema.served_bytes()
        if batch_size == 0 and demo_batch == 0:
            return "an empty batch"
        if nbytes > wire.DEFAULT_LIMITS.max_message_bytes:
            return f"{nbytes} bytes is more than a message may carry ({wire.DEFAULT_LIMITS.max_message_bytes})"
        if cfg.sampler == "fifo" and batch_size > cfg.capacity:
            return f"more than the queue's capacity {cfg.capacity}"
        if cfg.samples_per_insert > 0 and batch_size > cfg.tolerance:
            return f"more than the rate limiter's tolerance {cfg.tolerance} (it would wait forever)"
        return ""

    def _serve_pending(self) -> None:
        table = self.table
        if table is not None:  # a queue drops items too old for the newest weights (counted)
            table.drop_stale(self.weights_version)
        while self.pending and table is not None and self._can_serve(self.pending[0][2]):
            identity, req, batch_size, beta, t0, demo_batch = self.pending.popleft()
            arrays = table.sample_arrays(batch_size, beta) if batch_size else {}
            if demo_batch:
                arrays.update(sample_demonstrations(self.demo_table, demo_batch))
            self.stats.batches += 1
            self.stats.sampled_items += batch_size
            self.stats.sample_wait_s += time.monotonic() - t0
            # The run's frame count travels with every batch: the learner's frame budget is checked
            # on each update, not on its once-a-second stats.
            meta = {"req": req, "frames": self.stats.frames, "broker_id": self.broker_id, "run_id": self.spec["run_id"]}
            self.stats.served_lag.extend(table.served_lags)  # a queue's; a replay table serves by sampling
            meta["consumed"] = self._consumed(table)
            self.stats.sampled_frames += batch_size * table.frames_per_item
            self._reply(identity, "batch", meta, arrays)

    def _can_serve(self, batch_size: int) -> bool:
        """Whether the table may serve this many items now (demonstrations alone: always)."""
        return batch_size == 0 or self.table.limiter.can_sample(self.table.size, batch_size)

    def _demos_whole(self) -> bool:
        return self.demo_table is not None and self.demo_table.size == self.demo_total

    def _on_demos(self, identity, msg: wire.Message, meta: dict, req) -> None:
        """A part of the run's demonstration table from its learner: offset 0 (with the schema)
        starts a new one, each next part follows the last. Served beside the table's items, never
        snapshotted: a learner sends its demonstrations again with each register. A part refused
        changes nothing."""
        if self.table is None:
            return self._refuse(identity, req, "no_table", "demos: no run, register first")
        offset, total = meta["offset"], meta["total"]
        table = self.demo_table
        if offset and table is not None and offset < table.size and total == self.demo_total:
            return self._reply(identity, "ok", {"req": req, "size": table.size})  # a part sent again
        try:
            if offset == 0:
                table = self._new_demo_table(meta.get("schema"), total)
            elif table is None or offset != table.size or total != self.demo_total:
                raise SchemaError(f"a part at {offset} of {total} items does not follow the "
                                  f"{0 if table is None else table.size} received", "bad_demos")
            n = table.check(msg.arrays)
            if offset + n > total:
                raise SchemaError(f"{offset + n} items, more than the {total} announced", "bad_demos")
        except (SchemaError, ValueError, TypeError) as exc:
            return self._refuse(identity, req, getattr(exc, "reason", "bad_demos"), f"demos: {exc}")
        table.store(msg.arrays, n)
        self.demo_table, self.demo_total = table, total
        if self._demos_whole():
            log.info("broker: %d demonstration items for run %s", total, self.spec["run_id"])
        self._reply(identity, "ok", {"req": req, "size": table.size})

    def _new_demo_table(self, schema_meta: dict | None, total: int) -> ReplayTable:
        if schema_meta is None:
            raise SchemaError("the first part (offset 0) needs the items' schema", "bad_demos")
        schema = ItemSchema.from_meta(schema_meta)
        if schema.frames is not None:
            raise SchemaError("demonstration items carry their observations, not frame references", "bad_demos")
        nbytes = schema.table_bytes(total) + self.table.item_schema.table_bytes(self.table.cfg.capacity)
        if nbytes > self.max_table_bytes:
            raise SchemaError(f"{total} demonstration items and the table take {nbytes} bytes, more than the "
                              f"broker's limit of {self.max_table_bytes} (broker.max_table_bytes)", "bad_demos")
        return demonstration_table(schema, total, seed=self.cfg.seed + 1)

    # Segments the broker is done with, reported to the learner with each batch (which reports them
    # to synchronous actors with its weights): the table's (ReplayTable.take_released) and those
    # dropped at ingest. By source code: the incarnation's index in source_names.
    def _reset_sources(self) -> None:
        self.source_codes: dict[str, int] = {}
        self.source_names: list[str] = []
        self.released_at_ingest: dict[int, int] = {}

    def _source_code(self, incarnation: str) -> int:
        code = self.source_codes.get(incarnation)
        if code is None and len(self.source_names) < MAX_SOURCES:
            code = self.source_codes[incarnation] = len(self.source_names)
            self.source_names.append(incarnation)
        return -1 if code is None else code

    def _release_at_ingest(self, code: int, seq: int) -> None:
        if code >= 0 and seq > self.released_at_ingest.get(code, -1):
            self.released_at_ingest[code] = seq

    def _consumed(self, table: ReplayTable) -> dict[str, int]:
        """Incarnation -> the newest seq consumed since the last batch: items that left a queue (served
        or dropped as stale), stored in a replay table, or dropped at ingest."""
        released = table.take_released()
        for code, seq in self.released_at_ingest.items():
            released[code] = max(seq, released.get(code, -1))
        self.released_at_ingest = {}
        return {self.source_names[code]: seq for code, seq in released.items()}

    def _on_update_priorities(self, identity, msg: wire.Message, meta: dict, req) -> None:
        """New priorities by item id from the learner; ids overwritten meanwhile are skipped."""
        ids, priorities = msg.arrays.get("ids"), msg.arrays.get("priorities")
        if self.table is None:
            return self._refuse(identity, req, "bad_priorities", "update_priorities: no table, register first")
        if set(msg.arrays) != {"ids", "priorities"} or ids.ndim != 1 or priorities.shape != ids.shape \
                or ids.dtype.kind not in "iu" or priorities.dtype.kind not in "fiu":
            return self._refuse(identity, req, "bad_priorities",
                                "update_priorities: ids (int [K]) and priorities (float [K]), nothing else")
        updated = self.table.update_priorities(ids, priorities)
        self.stats.priority_updates += updated
        self.stats.priority_updates_skipped += len(ids) - updated
        self._reply(identity, "ok", {"req": req, "updated": updated})

    def _on_published_weights(self, frames: list) -> None:
        received = self._receive("weights_in", frames, "weights")
        if received is None:
            return
        msg, meta = received
        if self.spec is None or meta["run_id"] != self.spec["run_id"]:
            return self._reject("weights_in", "wrong_run", f"weights of run {meta['run_id']}")
        # Without keys the per-run token is what tells the learner's weights from anyone else's.
        if not hmac.compare_digest(_token_hash(meta.get("token", "")), self.token_hash or ""):
            return self._reject("weights_in", "bad_token", "weights not from the run's learner")
        self.holder_seen = time.monotonic()  # its learner is alive: the lease runs on
        version = meta["version"]
        if version <= self.weights_version:
            return  # a stale publish, e.g. from a learner that restarted from an older checkpoint
        if version > self.weights_version + MAX_VERSION_STEP:
            return self._reject("weights_in", "bad_version", f"version {version} after {self.weights_version}")
        if _layout(msg.arrays) != self.weights_layout:
            return self._reject("weights_in", "bad_weights", "arrays differ from the registered weights")
        if not _finite(msg.arrays):
            return self._reject("weights_in", "non_finite", "weights hold NaN or infinite values")
        # Re-encoded without the token (the arrays are not copied): actors never see it.
        forwarded = {k: v for k, v in meta.items() if k != "token"}
        self._cache_weights(wire.encode("weights", forwarded, msg.arrays), version)

    def _cache_weights(self, frames: list, version: int) -> None:
        self.weights_frames, self.weights_version = frames, version
        self._send_weights()

    def _send_weights(self) -> None:
        """The cached weights to every subscriber (which also serves any resend that was due)."""
        self.weights_out.send_multipart(self.weights_frames, copy=False)
        self.last_resend = time.monotonic()
        self.resend_due = None

    def _on_subscription(self, frames: list) -> None:
        data = frames[0].bytes
        if data[:1] != b"\x01" or self.weights_frames is None:
            return
        self.stats.subscriptions += 1
        # A new subscriber gets the cached weights; resends go to every subscriber, so at most one
        # per RESEND_INTERVAL_S: a burst of subscriptions (or a client resubscribing in a loop)
        # costs one resend per interval, and each subscriber still has the weights within it.
        if time.monotonic() - self.last_resend >= RESEND_INTERVAL_S:
            self._resend()
        elif self.resend_due is None:
            self.resend_due = self.last_resend + RESEND_INTERVAL_S

    def _resend(self) -> None:
        self._send_weights()
        self.stats.weights_resends += 1

    # -- stats ----------------------------------------------------------------------------------

    def stats_summary(self, brief: bool = False, actors_from: int | None = None,
                      actors_limit: int = PER_ACTOR_SHOWN) -> dict[str, Any]:
        """Counters of the registered run (``lifetime``: this broker process's totals over all runs)."""
        s, t = self.stats, self.table
        dropped_queue = getattr(t, "dropped_stale", 0)
        out = {
            "broker_id": self.broker_id,  # new with every broker process: tells a restart apart
            "run_id": (self.spec or {}).get("run_id"),
            "segments": s.segments, "items": s.items, "frames": s.frames, "episodes": s.episodes,
            "mean_return_100": float(np.mean(s.returns)) if s.returns else None,
            "mean_length_100": float(np.mean(s.lengths)) if s.lengths else None,
            "policy_lag_100": float(np.mean(s.policy_lag)) if s.policy_lag else None,
            "max_policy_lag": t.cfg.max_policy_lag if t else None,
            "rejected": dict(s.rejected),
            "rejected_on": dict(s.rejected_on),  # the same rejections by socket
            "refused_connections": dict(self.auth.refused) if self.auth is not None else {},
            "actor_errors": dict(s.actor_errors),
            "actor_error_last": dict(s.actor_error_last),
            "gaps": s.gaps,  # segments that never arrived (sequence numbers skipped)
            "duplicates": s.duplicates,
            "dropped_stale": s.dropped_stale_items + dropped_queue,  # items too old: dropped on purpose
            "dropped_stale_segments": s.dropped_stale_segments,  # ... of them at ingest, whole segments
            "dropped_stale_frames": s.dropped_stale_frames, "over_budget_frames": s.over_budget_frames,  # not stored
            "dropped_overflow": getattr(t, "dropped_overflow", 0),
            # Frames collected (frames), trained on (in batches served: each once from a queue, as
            # often as sampled from replay) and dropped unused (stale or overflowing a queue).
            "frames_consumed": s.sampled_frames,
            "frames_dropped": s.dropped_stale_frames
            + (dropped_queue + getattr(t, "dropped_overflow", 0)) * (t.frames_per_item if t else 0),
            "served_policy_lag": float(np.mean(s.served_lag)) if s.served_lag else None,
            "priority_updates": s.priority_updates,  # items whose priority the learner set
            "priority_updates_skipped": s.priority_updates_skipped,  # ids overwritten before the update came
            "replay_size": t.size if t else 0,
            "replay_capacity": t.cfg.capacity if t else 0,
            "batches": s.batches,
            "insert_rate": s.insert_rate,  # items/s over the last second
            "sample_rate": s.sample_rate,  # sampled items/s over the last second
            "pending_samples": len(self.pending),
            "credits": self.credits.summary(),  # flow control (brokers/credits.py)
            "weights_version": self.weights_version,
            "subscriptions": s.subscriptions,
            "weights_resends": s.weights_resends,
            "actors": len(s.actors),
            "uptime_s": time.monotonic() - s.started,
            "first_segment_time": s.first_segment_time,
            "snapshots": s.snapshots,
            "snapshot_error": s.snapshot_error,
            # What the snapshot this broker started from held: a restarted broker counts the
            # segments received after that snapshot (and in flight at the kill) as gaps.
            "restored": s.restored and {k: v for k, v in s.restored.items() if k != "seq"},
            "lifetime": s.lifetime_totals(),
        }
        if not brief:
            page = s.per_actor_page(actors_from, actors_limit)
            out.update(page)
            if s.restored:  # the restored sequence numbers of the actors shown (bounded like them)
                out["restored"]["seq"] = {k: v for k, v in s.restored["seq"].items() if k in page["per_actor"]}
        return out


class _Stats:
    _COUNTERS = ("segments", "items", "frames", "episodes", "batches", "sampled_items", "sampled_frames", "gaps",
                 "duplicates", "priority_updates", "priority_updates_skipped", "dropped_stale_segments",
                 "dropped_stale_items", "dropped_stale_frames", "over_budget_segments", "over_budget_frames")

    def __init__(self):
        self.started = time.monotonic()
        for k in self._COUNTERS:
            setattr(self, k, 0)
        self.lifetime = collections.Counter()  # totals of the runs before this one
        self.next_actor_id = 0  # the next id handed out by claim_ids
        self.snapshots = 0
        self.subscriptions = self.weights_resends = 0
        self.forgotten_actors = 0
        self.snapshot_error: str | None = None  # a snapshot found at start but refused
        self.restored: dict[str, Any] | None = None
        self.insert_rate = self.sample_rate = 0.0
        self._rate_mark = (self.started, 0, 0)  # (time, items, sampled items) at the last rate update
        self.sample_wait_s = 0.0
        self.rejected: collections.Counter = collections.Counter()
        self.rejected_on: collections.Counter = collections.Counter()
        self.actor_errors: collections.Counter = collections.Counter()
        self.actor_error_last: dict[str, str] = {}
        self.last_reject_log: dict[str, float] = {}
        self._reset_run()

    def _reset_run(self) -> None:
        for k in self._COUNTERS:
            setattr(self, k, 0)
        self.first_segment_time: float | None = None  # wall clock of the run's first accepted segment
        self.returns: collections.deque = collections.deque(maxlen=100)
        self.lengths: collections.deque = collections.deque(maxlen=100)
        self.policy_lag: collections.deque = collections.deque(maxlen=100)  # weight versions behind, per segment
        self.served_lag: collections.deque = collections.deque(maxlen=1000)  # FIFO queues: lag of items when served
        # actor id -> its counters, least recently seen first (bounded by MAX_ACTORS_TRACKED)
        self.actors: collections.OrderedDict[int, ActorRecord] = collections.OrderedDict()
        self._rate_mark = (time.monotonic(), 0, 0)

    def new_run(self) -> None:
        """A different run registered: its counters start from zero (the learner counts frames
        and budgets from them); what came before goes into the lifetime totals."""
        self.lifetime.update({k: getattr(self, k) for k in self._COUNTERS})
        self._reset_run()

    def lifetime_totals(self) -> dict[str, int]:
        return {k: self.lifetime[k] + getattr(self, k) for k in ("segments", "items", "frames", "episodes", "batches")}

    def per_actor_page(self, actors_from: int | None, limit: int) -> dict[str, Any]:
        """At most ``limit`` actors: the most recently seen, or with ``actors_from`` the ids from
        that one up (paging). The others are summed into ``per_actor_rest``, so a reply stays
        small with any number of actors."""
        if actors_from is None:
            shown = list(itertools.islice(reversed(self.actors), limit))
        else:
            shown = sorted(k for k in self.actors if k >= actors_from)[:limit]
        shown_set = set(shown)
        rest = [a for k, a in self.actors.items() if k not in shown_set]
        return {
            "per_actor": {str(k): self.actors[k].public() for k in sorted(shown)},
            "per_actor_rest": {"actors": len(rest), "segments": sum(a.segments for a in rest),
                               "frames": sum(a.frames for a in rest), "gaps": sum(a.gaps for a in rest)},
            "forgotten_actors": self.forgotten_actors,
        }

    def accounting(self) -> dict[str, Any]:
        """The counters a snapshot keeps (JSON-ready), including each incarnation's last
        sequence number (private: stats never show incarnations)."""
        return {**{k: getattr(self, k) for k in self._COUNTERS}, "next_actor_id": self.next_actor_id,
                "lifetime": dict(self.lifetime),
                "actors": {str(k): v.saved() for k, v in self.actors.items()}}

    def restore_accounting(self, doc: dict[str, Any]) -> None:
        for k in self._COUNTERS:
            setattr(self, k, int(doc.get(k, 0)))
        self.next_actor_id = int(doc.get("next_actor_id", 0))
        self.lifetime = collections.Counter({k: int(v) for k, v in doc.get("lifetime", {}).items()})
        self.actors = collections.OrderedDict()
        for k, v in doc.get("actors", {}).items():
            self.actors[int(k)] = ActorRecord.from_saved(v)
        self._rate_mark = (time.monotonic(), self.items, self.sampled_items)

    def update_rates(self, every_s: float = 1.0) -> None:
        t0, items0, sampled0 = self._rate_mark
        now = time.monotonic()
        if now - t0 >= every_s:
            self.insert_rate = (self.items - items0) / (now - t0)
            self.sample_rate = (self.sampled_items - sampled0) / (now - t0)
            self._rate_mark = (now, self.items, self.sampled_items)
            for a in self.actors.values():  # env frames/s of each actor over the last second
                a.frames_per_s = (a.frames - (a.frames if a.frames_mark is None else a.frames_mark)) / (now - t0)
                a.frames_mark = a.frames


def _layout(arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {k: (a.dtype.str, a.shape) for k, a in arrays.items()}


def _finite(arrays: dict[str, np.ndarray]) -> bool:
    return all(a.dtype.kind != "f" or np.isfinite(a).all() for a in arrays.values())


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def run_broker(cfg: BrokerConfig, address_file: str | None = None) -> None:
    """Process entry point: serve until SIGINT/SIGTERM."""
    broker = Broker(cfg)
    if not cfg.keys and not transport.is_loopback(cfg.host):
        log.warning("broker: WARNING: listening on %s without encryption or authentication; anyone who can "
                    "reach these ports can read weights and inject experience", cfg.host)
    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    signal.signal(signal.SIGINT, lambda *_: broker.stop())
    if address_file:
        # The keys directory too: `qrl status RUN_DIR` reads both.
        transport.write_address_file(address_file, broker.address(), ports=broker.ports,
                                     keys=str(Path(cfg.keys).resolve()) if cfg.keys else None)
    log.info("broker: serving on %s (ports %s)", broker.address(), broker.ports)
    try:
        broker.serve()
        broker.snapshot()  # stopped by SIGINT/SIGTERM: keep what we hold
    finally:
        broker.close()
        log.info("broker: stopped")
