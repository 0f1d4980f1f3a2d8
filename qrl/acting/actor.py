"""Actors: a supervisor process that forks N stateless workers and restarts any
that die. Each worker asks the broker for the run spec and weights, steps a
synchronous vector env with batched inference, and pushes fixed-length
segments to the broker's ingest socket.

Workers are forked after torch, gymnasium and the algorithms are imported, so
32 of them share those pages (about 150 MB PSS for 8 here, against 1.2 GB for
8 spawned). No ZeroMQ context exists in the supervisor before the fork.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import zmq

from qrl import algorithm, envs, normalize
from qrl.protocol import transport, wire
from qrl.config import build
from qrl.acting.credit import CreditAhead, WrongRun
from qrl.acting.segments import SegmentWriter, SyncActing, confirm_delivery
from qrl.acting.supervisor import ActorConfig, RunChanged, Stop, Supervisor, run_supervised, run_worker

log = logging.getLogger("qrl.actor")

# Import every registered algorithm before forking so children share its pages. One that fails
# to import here is reported when a run asks for it.
for _name in algorithm.names():
    try:
        algorithm.load(_name)
    except Exception:  # noqa: BLE001  (a user's package: its error belongs to the run that uses it)
        pass


def ingest_socket(ctx: zmq.Context, send_hwm: int, send_buffer: int | None = None) -> zmq.Socket:
    """The PUSH socket segments go out on (an actor's, or the inference server's). Small queues
    (see ActorConfig; send_buffer None keeps the kernel's), a bounded flush on a clean stop, and
    no ZMTP heartbeats: the broker holds this connection's input back on purpose (rate limiter),
    so pings go unanswered; with heartbeats the actor dropped the connection after the timeout
    and resent the message in flight on the new one (a duplicate), and libzmq 4.3.5 aborted the
    broker (see transport.socket)."""
    push = transport.socket(ctx, zmq.PUSH, linger_ms=500, heartbeats=False)
    push.setsockopt(zmq.SNDHWM, send_hwm)
    if send_buffer is not None:
        push.setsockopt(zmq.SNDBUF, send_buffer)
    return push


def actor_seed(run: dict, actor_id: int) -> int:
    """Actor i's seed (its envs and its exploration), wherever it acts: run seed + 1000 (i + 1)."""
    return run["seed"] + 1000 * (actor_id + 1)


def newest_weights(sub: zmq.Socket, version: int, run_id: str, role: str) -> wire.Message | None:
    """The newest weights message waiting on a SUB socket (older ones are dropped: only the
    newest matters), when it is newer than `version` or of another run; else None."""
    newest = None
    while True:
        try:
            newest = sub.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            break
    if newest is None:
        return None
    try:
        msg = wire.decode(newest)
    except wire.WireError as exc:
        log.warning("%s: ignored malformed weights (%s)", role, exc)
        return None
    if msg.meta.get("version", -1) <= version and msg.meta.get("run_id") == run_id:
        return None
    return msg


def load_weights(net: torch.nn.Module, normalizer: normalize.ActorNormalizer, msg: wire.Message, run_id: str) -> int:
    """Load a weights message into the policy (its observation statistics into normalizer);
    return its version. RunChanged when it belongs to another run."""
    if msg.meta.get("run_id") != run_id:
        raise RunChanged(f"broker now serves run {msg.meta.get('run_id')}")
    load_arrays(net, normalizer, msg.arrays)
    return int(msg.meta["version"])


def load_arrays(net: torch.nn.Module, normalizer: normalize.ActorNormalizer, arrays: dict[str, np.ndarray]) -> None:
    """Published weights into the policy, their observation statistics into normalizer."""
    arrays = normalizer.split(arrays)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})


def report_actor_error(client: transport.Client, actor_id: int, reason: str, detail: str) -> None:
    """Tell the broker why this actor (-1: an inference server) cannot act on the run (counted in
    its stats); a broker that does not answer is not waited for."""
    try:
        client.request("actor_error", {"actor_id": actor_id, "reason": reason, "detail": detail[:512]}, wait_s=2.0)
    except transport.BrokerUnavailable:
        pass


@dataclass
class JoinedRun:
    """What an actor or an inference server needs to act on the broker's run."""

    spec: dict[str, Any]
    ports: dict[str, int]
    agent: algorithm.Agent
    args: Any
    net: torch.nn.Module  # the policy, holding the run's newest weights
    normalizer: normalize.ActorNormalizer
    weights_version: int  # of the weights loaded

    @property
    def run(self) -> dict[str, Any]:
        return self.spec["run"]


def join_run(fetch: Callable[[str], wire.Message], report: Callable[[str, str], None], allow_envs: Sequence[str],
             allow_wrappers: Sequence[str], spaces: Callable[[dict[str, Any]], tuple], device: str = "cpu"
             ) -> JoinedRun:
    """Join the run the broker serves, the one way every acting process does it: fetch the spec,
    check that it names only environments and wrappers this process allows (before anything is
    imported; a refusal is reported to the broker as refused_spec and raised as RefusedSpec), load
    the agent, build its policy for spaces(spec) (observation and action space) and load the
    newest weights. fetch(type) asks the broker until it has an answer."""
    reply = fetch("get_spec")
    spec, ports = reply.meta["spec"], reply.meta["ports"]
    try:
        envs.check_spec_allowed(spec["env"], spec.get("wrappers") or (), allow_envs, allow_wrappers)
    except envs.RefusedSpec as exc:
        report("refused_spec", str(exc))
        raise
    agent = algorithm.load(spec["algo"])
    args = build(agent.Args, spec["args"], "algo")
    net = agent.make_policy(*spaces(spec), args).to(device)
    net.eval()
    normalizer = normalize.ActorNormalizer()
    version = load_weights(net, normalizer, fetch("get_weights"), spec["run_id"])
    return JoinedRun(spec, ports, agent, args, net, normalizer, version)


class Acting:
    """One actor's vector env, core and segment writer, stepped a segment at a time: what an
    actor process runs between pushes, and what the in-process runner (qrl/local.py) runs."""

    def __init__(self, env, core: algorithm.ActorCore, writer: SegmentWriter, net: torch.nn.Module, seed: int):
        self.env, self.core, self.writer, self.net = env, core, writer, net
        self.obs, _ = env.reset(seed=seed)
        self.state = core.initial_state(writer.num_envs)
        self.episode_start = np.ones(writer.num_envs, dtype=bool)

    def fill_segment(self, normalize_obs: Callable[[np.ndarray], np.ndarray]) -> None:
        """Step until the writer holds a full segment (items keep the raw observations)."""
        core, net, writer = self.core, self.net, self.writer
        core.begin_segment(net)
        while not writer.full:
            actions, next_state, extras = core.act(net, normalize_obs(self.obs), self.state, self.episode_start)
            next_obs, reward, terminated, truncated, info = self.env.step(actions)
            done = terminated | truncated
            writer.record(self.obs, actions, reward, terminated, truncated,
                          envs.next_observations(next_obs, done, info), extras, self.episode_start, self.state,
                          info.get("lives"))
            self.state, self.episode_start, self.obs = next_state, done, next_obs


class Worker:
    def __init__(self, cfg: ActorConfig, actor_id: int):
        self.cfg, self.actor_id = cfg, actor_id
        self.role = f"actor {actor_id}"
        self.stopping = False
        self.incarnation = uuid.uuid4().hex[:8]  # tells this process's sequence numbers from a restart's
        self.writer: SegmentWriter | None = None  # once the run's spec is known
        self.weights_version = -1  # of the weights loaded last
        self.sync = SyncActing({}, self.incarnation)  # the run's, once its spec is known

    @property
    def sent(self) -> int:
        """Segments handed to ZeroMQ (flushed within the PUSH linger on a clean stop)."""
        return self.writer.sent if self.writer is not None else 0

    def should_stop(self) -> bool:
        return self.stopping

    def summary(self) -> str:
        return f"incarnation {self.incarnation} sent {self.sent} segments"

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
            if time.monotonic() - last > transport.REPORT_EVERY_S:
                last = time.monotonic()
                log.warning("%s: waiting for a learner to register a run (%.0f s)", self.role, last - start)
            time.sleep(0.05)  # a learner starting with us registers within a second or two

    def _run(self) -> None:
        client = transport.Client(self.ctx, self.cfg.broker, self.role)
        env = None

        def spaces(spec: dict[str, Any]) -> tuple:  # the actor's own vector env tells them
            nonlocal env
            run = spec["run"]
            env = envs.make_vector_env(spec["env"], run["num_envs"], spec.get("env_kwargs"), spec.get("wrappers") or (),
                                       self.cfg.vector_env, self.cfg.vector_threads)
            return env.single_observation_space, env.single_action_space

        joined = join_run(lambda msg_type: self._fetch(client, msg_type),
                          lambda reason, detail: self._report(client, reason, detail),
                          self.cfg.allow_envs, self.cfg.allow_wrappers, spaces)
        self.credits = CreditAhead(client, joined.spec["run_id"], self.actor_id, self.incarnation, self.role)
        spec, ports, agent, args, net = joined.spec, joined.ports, joined.agent, joined.args, joined.net
        run = joined.run
        num_envs = run["num_envs"]
        total = self.cfg.total or self.cfg.n
        seed = actor_seed(run, self.actor_id)
        # Claimed ids (--first-id auto) can exceed the total after restarts: wrap for exploration.
        core = agent.make_core(args, self.actor_id % total, total, num_envs, seed)
        self.normalizer = joined.normalizer
        version = self.weights_version = joined.weights_version

        host, _ = transport.split_address(self.cfg.broker)
        weights_sub = transport.socket(self.ctx, zmq.SUB)
        weights_sub.setsockopt(zmq.SUBSCRIBE, b"")
        weights_sub.connect(f"tcp://{host}:{ports['weights_out']}")
        push = ingest_socket(self.ctx, self.cfg.send_hwm, self.cfg.send_buffer)
        push.connect(f"tcp://{host}:{ports['ingest']}")
        log.info("%s: running %s on %s x%d, weights version %d", self.role, spec["algo"], spec["env"], num_envs,
                 version)

        self.sync = SyncActing(run, self.incarnation)
        writer = self.writer = SegmentWriter(agent, args, spec["run_id"], self.actor_id, self.incarnation, num_envs,
                                             run)
        acting = Acting(env, core, writer, net, seed)
        while not self.stopping:
            try:
                self._wait_for_credit(writer.sent)
                version = self._poll_weights(weights_sub, net, version, spec["run_id"])  # the newest, after the wait
                policy_version = writer.policy_version = version
                acting.fill_segment(self.normalizer)
                self._push(push, writer.encode())  # stopped while held back: never sent; confirm the rest
                writer.mark_sent()
                ready = self.sync.after_push(writer.sent - 1, policy_version)
                if ready is not None:
                    version = self._wait_for_weights(weights_sub, net, ready, spec["run_id"])
            except Stop:
                break
        env.close()
        client.close()
        self._confirm_delivery()

    def _wait_for_credit(self, seq: int) -> None:
        """Collect a segment only once the broker will take it (docs/protocol.md, "Flow control")."""
        try:
            self.credits.wait(seq, self.should_stop)
        except WrongRun as exc:
            raise RunChanged(str(exc)) from None
        except transport.BrokerUnavailable:
            raise Stop from None

    def _report(self, client: transport.Client, reason: str, detail: str) -> None:
        report_actor_error(client, self.actor_id, reason, detail)

    def _confirm_delivery(self) -> None:
        if self.sent:
            confirm_delivery(self.ctx, self.cfg.broker, self.role, [(self.actor_id, self.incarnation, self.sent - 1)])

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

    def _wait_for_weights(self, sub: zmq.Socket, net: torch.nn.Module, ready: Callable[[int, float], bool],
                          run_id: str) -> int:
        """Load the newest weights, then block (but never past a stop request) until ready(version, waited)."""
        since = time.monotonic()
        version = self._poll_weights(sub, net, self.weights_version, run_id)
        while not ready(version, time.monotonic() - since):
            if self.stopping:
                raise Stop
            if sub.poll(50):
                version = self._poll_weights(sub, net, version, run_id)
        return version

    def _poll_weights(self, sub: zmq.Socket, net: torch.nn.Module, version: int, run_id: str) -> int:
        msg = newest_weights(sub, version, run_id, self.role)
        return version if msg is None else self._load_weights(net, msg, run_id)

    def _load_weights(self, net: torch.nn.Module, msg: wire.Message, run_id: str) -> int:
        self.weights_version = load_weights(net, self.normalizer, msg, run_id)
        self.sync.weights_arrived(msg.meta)
        return self.weights_version


def run_actors(cfg: ActorConfig) -> None:
    run_supervised(Supervisor(cfg, functools.partial(run_worker, "actor", Worker)))
