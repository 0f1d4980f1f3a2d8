"""Actors: a supervisor process that forks N stateless workers and restarts any
that die. Each worker asks the broker for the run spec and weights, steps a
synchronous vector env with batched inference, and pushes fixed-length
segments to the broker's ingest socket.

Workers are forked after torch, gymnasium and the algorithms are imported, so
32 of them share those pages (about 150 MB PSS for 8 here, against 1.2 GB for
8 spawned). No ZeroMQ context exists in the supervisor before the fork.
"""

from __future__ import annotations

import collections
import gc
import logging
import multiprocessing as mp
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import zmq

from qrl import algorithm, envs, normalize, transport, wire
from qrl.config import build
from qrl.lifetime import die_with_parent

log = logging.getLogger("qrl.actor")

# Import every registered algorithm before forking so children share its pages. One that fails
# to import here is reported when a run asks for it.
for _name in algorithm.names():
    try:
        algorithm.load(_name)
    except Exception:  # noqa: BLE001  (a user's package: its error belongs to the run that uses it)
        pass


@dataclass(frozen=True)
class ActorConfig:
    broker: str = "tcp://127.0.0.1:5555"
    n: int = 1
    """Worker processes under this supervisor."""
    first_id: int | None = 0
    """Actor id of the first worker; ids are first_id .. first_id + n - 1. None: ask the broker
    for a block no one uses (replicas started from one image, e.g. a Kubernetes Deployment)."""
    total: int | None = None
    """Actors in the whole run (all machines) for per-actor exploration; None: n."""
    send_hwm: int = 1
    """Segments queued in ZeroMQ per worker before its PUSH blocks (backpressure from the broker)."""
    send_buffer: int = 4 << 10
    """Kernel send buffer (SO_SNDBUF) of the PUSH socket. Every queued segment was made by an
    older policy: loopback's auto-tuned buffers (megabytes) let a fast actor run tens of
    segments ahead of what the broker has taken, so the learner trained on stale data."""
    allow_envs: list[str] = field(default_factory=list)
    """Environment entry points (module:Class, or a whole module) a run spec may make this actor
    import. Registered gymnasium ids need no permission; anything else is refused (reported to the broker)."""
    allow_wrappers: list[str] = field(default_factory=list)
    """gymnasium wrappers (by name) a run spec may apply; others are refused."""
    give_up_after: int = 0
    """Stop the supervisor (exit 1, with the last error) when a worker has failed this many times
    in a row within YOUNG_S of its start; 0: keep restarting (crash-only, as under Kubernetes).
    `qrl run` sets it, so a broken setting ends the run instead of a silent crash loop."""


def ingest_socket(ctx: zmq.Context, cfg: ActorConfig) -> zmq.Socket:
    """The PUSH socket segments go out on. Small queues (see ActorConfig), a bounded flush on a
    clean stop, and no ZMTP heartbeats: the broker holds this connection's input back on
    purpose (rate limiter), so pings go unanswered; with heartbeats the actor dropped the
    connection after the timeout and resent the message in flight on the new one (a
    duplicate), and libzmq 4.3.5 aborted the broker (see transport.socket)."""
    push = transport.socket(ctx, zmq.PUSH, linger_ms=500, heartbeats=False)
    push.setsockopt(zmq.SNDHWM, cfg.send_hwm)
    push.setsockopt(zmq.SNDBUF, cfg.send_buffer)
    return push


CONSUMED_WAIT_S = 10.0
"""A synchronous actor whose segment never comes back as consumed (lost on the way, or with a
broker that restarted) acts on with newer weights after waiting this long."""


class Stop(Exception):
    pass


class RunChanged(Exception):
    """A new run registered at the broker; the worker restarts to fetch its spec."""


class Worker:
    def __init__(self, cfg: ActorConfig, actor_id: int):
        self.cfg, self.actor_id = cfg, actor_id
        self.role = f"actor {actor_id}"
        self.stopping = False
        self.incarnation = uuid.uuid4().hex[:8]  # tells this process's sequence numbers from a restart's
        self.sent = 0  # segments handed to ZeroMQ (flushed within the PUSH linger on a clean stop)
        self.version = -1  # of the weights loaded last
        self.consumed_seq = -1  # sync_actors: our last segment the learner is done with (from its weights)
        self.waiting_since = 0.0

    def should_stop(self) -> bool:
        return self.stopping

    def run(self) -> None:
        torch.set_num_threads(1)
        self.ctx = zmq.Context()
        try:
            self._run()
        finally:
            self.ctx.destroy()  # each socket's own LINGER: the PUSH gets its bounded flush

    def _fetch(self, client: transport.Client, msg_type: str) -> wire.Message:
        """Ask until the broker has it: a missing broker or a run not yet registered both just wait."""
        start = last = time.monotonic()
        while True:
            reply = client.request(msg_type, wait_s=None, report=log.warning, should_stop=self.should_stop)
            if reply.type != "not_ready":
                return reply
            if self.stopping:
                raise Stop
            if time.monotonic() - last > 5:
                last = time.monotonic()
                log.warning("%s: waiting for a learner to register a run (%.0f s)", self.role, last - start)
            time.sleep(0.05)  # a learner starting with us registers within a second or two

    def _run(self) -> None:
        client = transport.Client(self.ctx, self.cfg.broker, self.role)
        reply = self._fetch(client, "get_spec")
        spec, ports = reply.meta["spec"], reply.meta["ports"]
        try:
            envs.check_spec_allowed(spec["env"], spec.get("wrappers") or (), self.cfg.allow_envs,
                                    self.cfg.allow_wrappers)
        except envs.RefusedSpec as exc:
            self._report(client, "refused_spec", str(exc))
            raise
        agent = algorithm.load(spec["algo"])
        args = build(agent.Args, spec["args"], "algo")
        run = spec["run"]
        num_envs, T = run["num_envs"], run["segment_length"]
        total = self.cfg.total or self.cfg.n
        seed = run["seed"] + 1000 * (self.actor_id + 1)

        env = envs.make_vector_env(spec["env"], num_envs, spec.get("env_kwargs"), spec.get("wrappers") or ())
        net = agent.make_policy(env.single_observation_space, env.single_action_space, args)
        net.eval()
        # Claimed ids (--first-id auto) can exceed the total after restarts: wrap for exploration.
        core = agent.actor(args, self.actor_id % total, total, num_envs, seed)
        self.normalizer = normalize.ActorNormalizer()
        version = self._load_weights(net, self._fetch(client, "get_weights"), spec["run_id"])
        client.close()

        host, _ = transport.split_address(self.cfg.broker)
        weights_sub = transport.socket(self.ctx, zmq.SUB)
        weights_sub.setsockopt(zmq.SUBSCRIBE, b"")
        weights_sub.connect(f"tcp://{host}:{ports['weights_out']}")
        push = ingest_socket(self.ctx, self.cfg)
        push.connect(f"tcp://{host}:{ports['ingest']}")
        log.info("%s: running %s on %s x%d, weights version %d", self.role, spec["algo"], spec["env"], num_envs,
                 version)

        history = agent.history(args)
        L = history.before + T + history.after
        obs, _ = env.reset(seed=seed)
        state = core.initial_state(num_envs)
        episode_start = np.ones(num_envs, dtype=bool)
        valid = np.ones(num_envs, dtype=bool)
        ep_return = np.zeros(num_envs)
        ep_length = np.zeros(num_envs, dtype=np.int64)
        finished_returns: list[float] = []
        finished_lengths: list[int] = []
        window: list[dict[str, Any]] = []
        sent_versions: collections.deque = collections.deque(maxlen=65)  # sync_actors: each segment's weights
        while not self.stopping:
            segment_version = version
            core.begin_segment(net)
            while len(window) < L:
                # items keep raw obs
                actions, next_state, extras = core.act(net, self.normalizer(obs), state, episode_start)
                next_obs, reward, terminated, truncated, info = env.step(actions)
                done = terminated | truncated
                step = dict(obs=obs, actions=actions, rewards=reward.astype(np.float32), terminated=terminated,
                            truncated=truncated, next_obs=envs.next_observations(next_obs, done, info),
                            extras=extras, episode_start=episode_start, state=state, valid=valid)
                if not window and history.before and self.sent == 0:  # nothing before the first step yet
                    window += [algorithm.padding_step(obs, actions, extras, state)] * history.before
                window.append(step)
                state, episode_start = next_state, done
                ep_return += reward
                ep_length += 1
                for i in np.flatnonzero(done):
                    finished_returns.append(float(ep_return[i]))
                    finished_lengths.append(int(ep_length[i]))
                ep_return[done] = 0.0
                ep_length[done] = 0
                obs = next_obs
            items = agent.make_items(algorithm.stack_steps(window, history.before, T), args)
            meta = {"run_id": spec["run_id"], "actor_id": self.actor_id, "incarnation": self.incarnation,
                    "seq": self.sent,
                    "policy_version": segment_version, "frames": T * num_envs,
                    "episode_returns": finished_returns, "episode_lengths": finished_lengths}
            try:
                self._push(push, wire.encode("segment", meta, items))
            except Stop:  # stopped while held back: this segment was never sent; confirm the rest
                break
            self.sent += 1
            finished_returns, finished_lengths = [], []
            window = window[T:]  # keep the history: the next segment's items need those steps
            lead = run.get("sync_lead", 0)
            try:
                if run.get("sync_actors") and lead == 0:  # strictly on-policy: act again only with new weights
                    version = self._wait_for_weights(weights_sub, net, lambda v: v > segment_version,
                                                     spec["run_id"])
                elif run.get("sync_actors"):
                    # Act on while the learner trains, up to `lead` segments, then wait for weights made
                    # after the learner was done with the segment `lead` before this one.
                    sent_versions.append(segment_version)
                    due = self.sent - 1 - lead
                    if due >= 0:
                        made_with = sent_versions[-1 - lead]
                        version = self._wait_for_weights(
                            weights_sub, net, lambda v: self.consumed_seq >= due or (
                                v > made_with and time.monotonic() - self.waiting_since > CONSUMED_WAIT_S),
                            spec["run_id"])
                    else:
                        version = self._poll_weights(weights_sub, net, version, spec["run_id"])
                else:
                    version = self._poll_weights(weights_sub, net, version, spec["run_id"])
            except Stop:
                break
        env.close()
        self._confirm_delivery()

    def _report(self, client: transport.Client, reason: str, detail: str) -> None:
        """Tell the broker why this actor cannot act on the run (counted in its stats)."""
        try:
            client.request("actor_error", {"actor_id": self.actor_id, "reason": reason, "detail": detail[:512]},
                           wait_s=2.0)
        except transport.BrokerUnavailable:
            pass

    def _confirm_delivery(self, timeout_s: float = 3.0) -> None:
        """On a clean stop, wait (bounded) until the broker has read our last segment.

        Closing the PUSH socket is not enough: when a peer disconnects, libzmq discards
        what is still queued for it at the receiving PULL socket, so a segment sent just
        before the stop could vanish without a gap ever showing in the sequence numbers."""
        if self.sent == 0:
            return
        client = transport.Client(self.ctx, self.cfg.broker, self.role, timeout_s=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            # While the rate limiter holds actors back the broker is not reading ingest: ask it to.
            client.request("flush", {"actor_id": self.actor_id, "incarnation": self.incarnation,
                                     "last_seq": self.sent - 1}, wait_s=timeout_s)
            while time.monotonic() < deadline:
                reply = client.request("get_stats", {"actor": self.actor_id, "incarnation": self.incarnation},
                                       wait_s=timeout_s)
                if reply.meta.get("flushed_seq", -1) >= self.sent - 1:
                    return
                time.sleep(0.05)
            log.warning("%s: the broker had not confirmed segment %d when stopping", self.role, self.sent - 1)
        except transport.BrokerUnavailable:
            log.warning("%s: no broker to confirm delivery of the last segments", self.role)
        finally:
            client.close()

    def _push(self, push: zmq.Socket, frames: list) -> None:
        """Send, blocking while the broker holds us back, but never past a stop request."""
        while True:
            if push.poll(200, zmq.POLLOUT):
                try:
                    # NOBLOCK: the broker can vanish between poll and send, and a PUSH
                    # socket with no peer would block in send past a stop request.
                    push.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    return
                except zmq.Again:
                    pass
            if self.stopping:
                raise Stop

    def _wait_for_weights(self, sub: zmq.Socket, net: torch.nn.Module, ready: Callable[[int], bool],
                          run_id: str) -> int:
        """Load the newest weights, then block (but never past a stop request) until ready(version)."""
        self.waiting_since = time.monotonic()
        version = self._poll_weights(sub, net, self.version, run_id)
        while not ready(version):
            if self.stopping:
                raise Stop
            if sub.poll(50):
                version = self._poll_weights(sub, net, version, run_id)
        return version

    def _poll_weights(self, sub: zmq.Socket, net: torch.nn.Module, version: int, run_id: str) -> int:
        newest = None
        while True:  # drain: only the newest weights matter
            try:
                newest = sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
        if newest is None:
            return version
        try:
            msg = wire.decode(newest)
        except wire.WireError as exc:
            log.warning("%s: ignored malformed weights (%s)", self.role, exc)
            return version
        if msg.meta.get("version", -1) <= version and msg.meta.get("run_id") == run_id:
            return version
        return self._load_weights(net, msg, run_id)

    def _load_weights(self, net: torch.nn.Module, msg: wire.Message, run_id: str) -> int:
        if msg.meta.get("run_id") != run_id:
            raise RunChanged(f"broker now serves run {msg.meta.get('run_id')}")
        arrays = self.normalizer.split(msg.arrays)
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        consumed = msg.meta.get("consumed")
        if isinstance(consumed, dict) and isinstance(consumed.get(self.incarnation), int):
            self.consumed_seq = max(self.consumed_seq, consumed[self.incarnation])
        self.version = int(msg.meta["version"])
        return self.version


def _worker_main(cfg: ActorConfig, actor_id: int, supervisor_pid: int, errors_fd: int,
                 start_pipe: tuple[int, int] | None = None) -> None:
    # Ctrl-C reaches the whole process group; the supervisor decides what happens,
    # and it stops workers with SIGTERM, which finishes the current push cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(supervisor_pid)  # a SIGKILLed supervisor leaves no worker behind
    if start_pipe is not None:  # the first workers start together, once all are forked (Supervisor.run)
        start_r, start_w = start_pipe
        os.close(start_w)  # inherited: the supervisor's is the last write end, its close is the signal
        os.read(start_r, 1)
        os.close(start_r)
    worker = Worker(cfg, actor_id)
    signal.signal(signal.SIGTERM, lambda *_: setattr(worker, "stopping", True))
    code = 0
    try:
        worker.run()
    except (Stop, transport.BrokerUnavailable):
        if not worker.stopping:
            log.error("actor %d: failed: the broker went away", actor_id)
            code = 1
    except RunChanged as exc:
        log.warning("actor %d: %s; restarting", actor_id, exc)
        code = 3
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.error("actor %d: failed: %s", actor_id, error)
        # One line to the supervisor, which reports it if this worker keeps failing (a write of
        # under PIPE_BUF bytes to a pipe is atomic, so workers' lines never interleave).
        os.write(errors_fd, f"{actor_id}\t{error}"[:1000].replace("\n", " ").encode() + b"\n")
        code = 1
    # scripts/load_test.py checks these counts against the broker's
    log.info("actor %d: incarnation %s sent %d segments", actor_id, worker.incarnation, worker.sent)
    if code:
        os._exit(code)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name
        return f"signal {number}"


class ActorsFailed(RuntimeError):
    """A worker kept failing at start (ActorConfig.give_up_after): the supervisor gave up."""


YOUNG_S = 10.0
"""A worker that exits within this many seconds of its start is dying young: its restart backs off."""
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.1, 5.0


class Supervisor:
    """Keeps N workers alive. A worker that dies is restarted after a backoff that starts at
    FIRST_BACKOFF_S and doubles (to MAX_BACKOFF_S) while it keeps dying young; one log line per
    death says when it comes back, and a worker that fails young again and again is named as such,
    with its last error (sent up a pipe), or ends the supervisor with ActorsFailed."""

    def __init__(self, cfg: ActorConfig):
        self.cfg = cfg
        self.mp = mp.get_context("fork")
        self.procs: dict[int, Any] = {}
        self.started_at: dict[int, float] = {}
        self.backoff: dict[int, float] = {}
        self.restart_at: dict[int, float] = {}  # worker id -> when its pending restart is due
        self.failures_in_a_row: dict[int, int] = {}  # young deaths with an error, per worker
        self.last_error: dict[int, str] = {}
        self.restarts = 0
        self.stopping = False
        self.errors_r, self.errors_w = os.pipe()
        os.set_blocking(self.errors_r, False)

    def start(self, actor_id: int, start_pipe: tuple[int, int] | None = None) -> None:
        p = self.mp.Process(target=_worker_main, args=(self.cfg, actor_id, os.getpid(), self.errors_w, start_pipe),
                            name=f"qrl-actor-{actor_id}", daemon=True)
        p.start()
        self.procs[actor_id] = p
        self.started_at[actor_id] = time.monotonic()

    def _read_errors(self) -> None:
        try:
            data = os.read(self.errors_r, 1 << 16)
        except BlockingIOError:
            return
        for line in data.decode(errors="replace").splitlines():
            worker, _, error = line.partition("\t")
            if worker.isdigit():
                self.last_error[int(worker)] = error

    def _on_exit(self, i: int, exitcode: int | None, now: float) -> None:
        """A worker died: schedule its restart (once) and say so, or give up."""
        self._read_errors()
        lived = now - self.started_at[i]
        young = lived < YOUNG_S
        failed = exitcode is not None and exitcode > 0 and exitcode != 3  # 3: a new run, not a failure
        self.failures_in_a_row[i] = self.failures_in_a_row.get(i, 0) + 1 if young and failed else 0
        delay = min(MAX_BACKOFF_S, self.backoff.get(i, FIRST_BACKOFF_S / 2) * 2) if young else FIRST_BACKOFF_S
        self.backoff[i] = delay
        self.restart_at[i] = now + delay
        how = f"exited with code {exitcode}" if exitcode is None or exitcode >= 0 else \
            f"was killed by {_signal_name(-exitcode)}"
        n = self.failures_in_a_row[i]
        if n >= 2:
            message = (f"worker {i} keeps dying young: failed {n} times in a row within {YOUNG_S:g} s of its "
                       f"start; last error: {self.last_error.get(i, 'unknown')}")
            if self.cfg.give_up_after and n >= self.cfg.give_up_after:
                raise ActorsFailed(message)
            log.error("actors: %s; restarting in %.1f s", message, delay)
        else:
            log.warning("actors: worker %d %s after %.1f s; restarting in %.1f s", i, how, lived, delay)

    def claim_ids(self) -> int:
        """A block of n unused actor ids from the broker (waiting for it like the workers do).
        The context is gone before any worker is forked: ZeroMQ contexts do not survive fork."""
        ctx = zmq.Context()
        try:
            client = transport.Client(ctx, self.cfg.broker, "actors")
            reply = client.request("claim_ids", {"n": self.cfg.n}, wait_s=None, report=log.warning,
                                   should_stop=lambda: self.stopping)
            client.close()
            if reply.type != "ok":
                raise RuntimeError(f"the broker refused to hand out actor ids: {reply.meta.get('reason')}")
            return int(reply.meta["first_id"])
        finally:
            ctx.destroy(linger=0)

    def run(self) -> None:
        try:
            first = self.cfg.first_id if self.cfg.first_id is not None else self.claim_ids()
        except transport.BrokerUnavailable:  # stopped while waiting for the broker
            return
        ids = range(first, first + self.cfg.n)
        # Objects that exist now (torch, gymnasium, the algorithms: hundreds of MB) are never
        # collected: a collection in a forked worker would write to every page it scans, and the
        # workers would copy the parent's heap page by page instead of sharing it.
        gc.freeze()
        # Workers wait until all are forked: workers already stepping their envs would take the
        # cores from the forking supervisor (on 2 cores, 32 forks took 2.7 s instead of 0.3 s).
        start_r, start_w = os.pipe()
        for i in ids:
            self.start(i, (start_r, start_w))
        os.close(start_w)  # end of file: every worker goes
        os.close(start_r)
        log.info("actors: started %d workers (ids %d..%d), pids %s", self.cfg.n, ids[0], ids[-1],
                 [p.pid for p in self.procs.values()])
        try:
            while not self.stopping:
                time.sleep(0.02)
                now = time.monotonic()
                for i, p in list(self.procs.items()):
                    if p.is_alive() or self.stopping:
                        continue
                    if i not in self.restart_at:
                        p.join(0)
                        self._on_exit(i, p.exitcode, now)
                    elif now >= self.restart_at[i]:  # the restart is kept until it is due
                        del self.restart_at[i]
                        self.start(i)
                        self.restarts += 1
        finally:
            self.shutdown()

    def shutdown(self, grace_s: float = 5.0) -> None:
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()  # SIGTERM: workers finish their current step and exit
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
        log.info("actors: stopped %d workers", len(self.procs))


def run_actors(cfg: ActorConfig) -> None:
    sup = Supervisor(cfg)

    def _stop(*_):
        sup.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sup.run()
