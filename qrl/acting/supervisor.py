"""The actor supervisor: keeps N worker processes alive (forked from it, so they share what it
imported), restarting any that die with a backoff. Imports no torch: it supervises the policy-running
workers of qrl/acting/actor.py and the env-only workers of qrl/acting/env_actor.py alike."""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from qrl.protocol import transport
from qrl.lifetime import die_with_parent

log = logging.getLogger("qrl.actor")


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
    """Kernel send buffer (SO_SNDBUF) of the PUSH socket. Credits bound how far an actor runs
    ahead (it asks before each segment), whatever its buffers; a small one still frees memory
    (loopback's auto-tuned buffers are megabytes per connection)."""
    allow_envs: list[str] = field(default_factory=list)
    """Environment entry points (module:Class, or a whole module) a run spec may make this actor
    import. Registered gymnasium ids need no permission; anything else is refused (reported to the broker)."""
    allow_wrappers: list[str] = field(default_factory=list)
    """gymnasium wrappers (by name) a run spec may apply; others are refused."""
    inference: str | None = None
    """A central inference server's address (`qrl inference`): the workers only step their envs and
    ask it for every step's actions; they import no torch and hold no policy."""
    inference_timeout_s: float = 2.0
    """Env-only workers: seconds without an answer before a step request is sent again (a live server
    ignores the repeat; a restarted one is greeted again and the actor resumes)."""
    vector_env: str = "gymnasium"
    """How the workers step their environments: gymnasium (SyncVectorEnv), or ale (Atari ids: ale-py's
    C++ vector env, same preprocessing, several times the frames per second; qrl/envs/ale_vector.py)."""
    vector_threads: int = 1
    """vector_env=ale: threads each worker steps its games on."""
    give_up_after: int = 0
    """Stop the supervisor (exit 1, with the last error) when a worker has failed this many times
    in a row within YOUNG_S of its start; 0: keep restarting (crash-only, as under Kubernetes).
    `qrl run` sets it, so a broken setting ends the run instead of a silent crash loop."""


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

    def __init__(self, cfg: Any, worker_main: Callable[..., None]):
        """cfg: the workers' config (broker, n, first_id, give_up_after); worker_main(cfg, id,
        supervisor_pid, errors_fd, start_pipe) runs in each forked worker."""
        self.cfg, self.worker_main = cfg, worker_main
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
        p = self.mp.Process(target=self.worker_main, args=(self.cfg, actor_id, os.getpid(), self.errors_w, start_pipe),
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
        failed = exitcode is not None and exitcode > 0 and exitcode != RESTART_FOR_NEW_RUN
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
                raise RuntimeError("the broker refused to hand out actor ids: "
                                   f"{reply.meta.get('reason')}: {reply.meta.get('detail')}")
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


def worker_prelude(supervisor_pid: int, start_pipe: tuple[int, int] | None) -> None:
    """What every forked worker does first: Ctrl-C reaches the whole process group, but the
    supervisor decides what happens (it stops workers with SIGTERM, which finishes the current
    step cleanly); die with the supervisor; wait until all first workers are forked (Supervisor.run)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(supervisor_pid)  # a SIGKILLed supervisor leaves no worker behind
    if start_pipe is not None:
        start_r, start_w = start_pipe
        os.close(start_w)  # inherited: the supervisor's is the last write end, its close is the signal
        os.read(start_r, 1)
        os.close(start_r)


class Stop(Exception):
    """The worker stops: it was asked to (SIGTERM), or its peer went away while it waited."""


class RunChanged(Exception):
    """A new run at the broker or inference server: the worker restarts to join it."""


RESTART_FOR_NEW_RUN = 3
"""A worker's exit code when it restarts for a new run (not counted as a failure)."""


def run_worker(name: str, make_worker: Callable[[ActorConfig, int], Any], cfg: ActorConfig, actor_id: int,
               supervisor_pid: int, errors_fd: int, start_pipe: tuple[int, int] | None = None) -> None:
    """A forked worker's life (Supervisor's target, with name and make_worker bound): run until
    stopped, then exit 0, 1 (failed, reported up the errors pipe) or RESTART_FOR_NEW_RUN. The
    worker has run(), a `stopping` flag SIGTERM sets, and summary() for the last log line."""
    worker_prelude(supervisor_pid, start_pipe)
    worker = make_worker(cfg, actor_id)
    signal.signal(signal.SIGTERM, lambda *_: setattr(worker, "stopping", True))
    code = 0
    try:
        worker.run()
    except (Stop, transport.BrokerUnavailable):
        if not worker.stopping:
            log.error("%s %d: failed: the broker went away", name, actor_id)
            code = 1
    except RunChanged as exc:
        log.warning("%s %d: %s; restarting", name, actor_id, exc)
        code = RESTART_FOR_NEW_RUN
    except Exception as exc:
        code = report_failure(errors_fd, name, actor_id, exc)
    log.info("%s %d: %s", name, actor_id, worker.summary())  # scripts/load_test.py checks an actor's counts
    if code:
        os._exit(code)


def report_failure(errors_fd: int, name: str, actor_id: int, exc: Exception) -> int:
    """A worker failed: log it, and send one line up to the supervisor, which reports it if this
    worker keeps failing (a write of under PIPE_BUF bytes to a pipe is atomic, so workers' lines
    never interleave). The worker's exit code."""
    error = f"{type(exc).__name__}: {exc}"
    log.error("%s %d: failed: %s", name, actor_id, error)
    os.write(errors_fd, f"{actor_id}\t{error}"[:1000].replace("\n", " ").encode() + b"\n")
    return 1


def run_supervised(sup: Supervisor) -> None:
    """Run the supervisor until SIGTERM or Ctrl-C, then stop its workers."""

    def _stop(*_):
        sup.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sup.run()
