"""`qrl run`: a local cluster of separate processes (broker, actor supervisor,
learner) on loopback, the same three commands a multi-machine run uses."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from qrl.lifetime import DONE, DONE_ENV, READY, child_env


class ClusterError(RuntimeError):
    pass


GIVE_UP_AFTER = 3
"""`qrl run` stops when an actor worker has failed this many times in a row at start."""


def _qrl(*args: str) -> list[str]:
    return [sys.executable, "-m", "qrl", *args]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return ""


def start_broker(run_dir: Path, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0,
                 extra: tuple[str, ...] = (), wait: bool = True):
    """Start `qrl broker`. With wait, wait until it has bound its sockets and return it and its
    address; without, return it at once (it writes RUN_DIR/broker.json once bound)."""
    address_file = run_dir / "broker.json"
    address_file.unlink(missing_ok=True)
    with (run_dir / "broker.log").open("w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(_qrl("broker", "--host", host, "--port", str(port), "--address-file",
                                     str(address_file), *extra), stdout=log, stderr=subprocess.STDOUT,
                                env=child_env())
    if not wait:
        return proc
    deadline = time.monotonic() + timeout_s
    while not address_file.exists():
        if proc.poll() is not None:
            raise ClusterError(f"broker exited with code {proc.returncode}: {_tail(run_dir / 'broker.log')}")
        if time.monotonic() > deadline:
            stop([proc])
            raise ClusterError(f"broker did not start within {timeout_s:.0f} s")
        time.sleep(0.05)
    return proc, json.loads(address_file.read_text())["address"]


def start_actors(run_dir: Path, broker: str | None, n: int, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start `qrl actor --n N`; broker None: extra names its --address-file."""
    with (run_dir / "actors.log").open("w") as log:
        return subprocess.Popen(_qrl("actor", "--n", str(n), *(("--broker", broker) if broker else ()), *extra),
                                stdout=log, stderr=subprocess.STDOUT, env=child_env())


def _grace_s() -> float:
    """How long stopping the cluster may take before what is left is killed."""
    return float(os.environ.get("QRL_STOP_GRACE_S", "30"))


def stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """Stop the processes in order, each after the one before has exited (SIGTERM, then SIGKILL
    once grace_s in total has passed): the learner first (it checkpoints), then the actors while the
    broker still runs (a stopping actor confirms its last segments with the broker, which takes
    milliseconds; with the broker gone it waits out its timeout), the broker last."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def learner_args(sets: tuple[str, ...] = (), *, config: str | Path | None = None, seed: int | None = None,
                 total_steps: int | None = None, max_seconds: float | None = None,
                 target_return: float | None = None, no_progress: bool = False,
                 resume: bool = False, tensorboard: bool = False) -> list[str]:
    """The `qrl learner` arguments that carry a run's options (what `qrl run` and `qrl.train` pass on)."""
    args = [f"--set={s}" for s in sets]
    for flag, value in (("--config", config), ("--seed", seed), ("--total-steps", total_steps),
                        ("--max-seconds", max_seconds), ("--target-return", target_return)):
        if value is not None:
            args += [flag, str(value)]
    for flag, on in (("--no-progress", no_progress), ("--resume", resume), ("--tensorboard", tensorboard)):
        if on:
            args.append(flag)
    return args


def actor_permissions(env: str, wrappers: list, section: str = "actor") -> tuple[str, ...]:
    """`--set` flags that let this cluster's actors (or inference server: section "inference") build
    what its own config names (an entry point, wrappers): a run spec from anyone else gets no such
    permission."""
    import json

    from qrl.envs import wrapper_name

    flags: list[str] = []
    if ":" in env:
        flags += ["--set", f"{section}.allow_envs={json.dumps([env])}"]
    if wrappers:
        flags += ["--set", f"{section}.allow_wrappers={json.dumps(sorted({wrapper_name(w) for w in wrappers}))}"]
    return tuple(flags)


class InferenceProcess:
    """`qrl inference` for a local cluster, restarted on the port it first bound when it dies (the
    env actors reconnect to the same address and resume); one that keeps dying at start ends the run."""

    def __init__(self, run_dir: Path, broker_file: Path, extra: tuple[str, ...] = ()):
        self.run_dir, self.broker_file, self.extra = run_dir, broker_file, extra
        self.address_file = run_dir / "inference.json"
        self.address_file.unlink(missing_ok=True)
        self.bind = "tcp://127.0.0.1:0"
        self.restarts = self.young_deaths = 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        self.started = time.monotonic()
        with (self.run_dir / "inference.log").open("a") as log:
            return subprocess.Popen(_qrl("inference", "--address-file", str(self.broker_file), "--bind", self.bind,
                                         "--write-address", str(self.address_file), *self.extra),
                                    stdout=log, stderr=subprocess.STDOUT, env=child_env())

    def check(self) -> None:
        """Restart it if it has exited."""
        if self.proc.poll() is None:
            return
        if self.address_file.exists():
            self.bind = json.loads(self.address_file.read_text())["address"]
        self.young_deaths = self.young_deaths + 1 if time.monotonic() - self.started < 10 else 0
        if self.young_deaths >= GIVE_UP_AFTER:
            raise ClusterError(f"inference exited with code {self.proc.returncode} {self.young_deaths} times in a row "
                               f"at start: {_tail(self.run_dir / 'inference.log', lines=1)}")
        print(f"qrl run: the inference server exited with code {self.proc.returncode}; restarting it", file=sys.stderr,
              flush=True)
        self.restarts += 1
        self.proc = self._start()


def _start_experience(run_dir: Path, address_file: Path, actors: int, procs: list[subprocess.Popen],
                      key_args: tuple[str, ...], actor_args: tuple[str, ...], inference: bool,
                      inference_args: tuple[str, ...]) -> tuple[subprocess.Popen, subprocess.Popen,
                                                                InferenceProcess | None]:
    """Start the broker, the inference server (central inference) and the actors; each is added
    to procs in the order they are to be stopped."""
    broker = start_broker(run_dir, wait=False, extra=("--snapshot-dir", str(run_dir / "broker"), *key_args))
    procs.append(broker)
    server = None
    if inference:  # central inference: env-only actors get their actions from one server
        # The server spreads exploration (Ape-X epsilons) over this many actors, as local actors do.
        server = InferenceProcess(run_dir, address_file, ("--set", f"inference.total={actors}", *key_args,
                                                          *inference_args))
        procs.insert(0, server.proc)  # stopped after the actors, before the broker
        where = ("--inference-file", str(server.address_file), *key_args)
    else:
        where = ("--address-file", str(address_file), *key_args)
    # Actors that fail at start again and again (a broken env, a bad setting) end the run
    # with their last error instead of crash-looping unseen.
    actor_proc = start_actors(run_dir, None, actors, extra=(
        *where, "--set", f"actor.give_up_after={GIVE_UP_AFTER}", *actor_args))
    procs.insert(0, actor_proc)
    return broker, actor_proc, server


def _watch(learner: subprocess.Popen, broker: subprocess.Popen, actor_proc: subprocess.Popen,
           server: InferenceProcess | None, procs: list[subprocess.Popen], run_dir: Path, done_read: int,
           actors: int, on_tick: Callable[[], None] | None = None) -> None:
    """Until the learner exits: announce the broker's address, restart a dead inference server,
    end the run when the broker or the actors die, and stop the experience side once the learner
    says it is done training."""
    address_file = run_dir / "broker.json"
    announced = ready = False
    while learner.poll() is None:
        if on_tick is not None:
            on_tick()
        if not announced and ready and address_file.exists():
            announced = True
            print(f"qrl run: broker at {json.loads(address_file.read_text())['address']}, {actors} actor "
                  f"processes, logs in {run_dir}", flush=True)
        if server is not None:
            before = server.proc
            server.check()
            procs[procs.index(before)] = server.proc
        for p, name in ((broker, "broker"), (actor_proc, "actors")):
            if p.poll() is not None:  # its last log line is its one-line error
                raise ClusterError(f"{name} exited with code {p.returncode}: "
                                   f"{_tail(run_dir / (name + '.log'), lines=1)}")
        if not select.select([done_read], [], [], 0.05 if not announced else 0.2)[0]:
            continue
        said = os.read(done_read, 64)
        ready = ready or READY in said
        if DONE in said or not said:  # done training, or exited
            # No more experience is needed: the actors stop (confirming their last segments
            # with the broker), then the broker, all while the learner checkpoints.
            stop([actor_proc, *([server.proc] if server else []), broker], grace_s=_grace_s())
            learner.wait()


def run_local(algo: str, env: str, actors: int, run_dir: Path, learner_args: list[str],
              key_args: tuple[str, ...] = (), actor_args: tuple[str, ...] = (), inference: bool = False,
              inference_args: tuple[str, ...] = (), on_tick: Callable[[], None] | None = None) -> int:
    """Run a whole training job; return the learner's exit code. on_tick: called a few times a
    second while the learner runs (the Python API's callbacks).

    Broker, actors and learner start at once: each imports what it needs (torch: about a second)
    at the same time, and the actors and the learner read the broker's address from its address
    file once it has bound. The learner checks the algorithm settings and the environment; when it
    refuses them (exit code 2, its one-line error on our stderr) the cluster stops, and a run
    directory this call created is removed again.

    The broker snapshots its replay table into RUN_DIR/broker, so `qrl run --resume` on the same
    run directory restarts the cluster with the learner's checkpoint and the broker's experience."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    address_file = run_dir / "broker.json"
    address_file.unlink(missing_ok=True)
    procs: list[subprocess.Popen] = []

    def _terminated(signum, frame):  # SIGTERM (a scheduler, `kill`): stop the cluster like Ctrl-C does
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()  # qrl.training runs us in a thread
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    code = None
    try:
        broker, actor_proc, server = _start_experience(run_dir, address_file, actors, procs, key_args, actor_args,
                                                       inference, inference_args)
        done_read, done_write = os.pipe()  # the learner says when it stops training (lifetime.announce_done)
        learner = subprocess.Popen(_qrl("learner", "--algo", algo, "--env", env, "--address-file", str(address_file),
                                        "--run-dir", str(run_dir), *learner_args),
                                   env=child_env({**os.environ, DONE_ENV: str(done_write)}), pass_fds=(done_write,))
        os.close(done_write)
        procs.insert(0, learner)  # stopped first, then actors, then the broker
        try:
            _watch(learner, broker, actor_proc, server, procs, run_dir, done_read, actors, on_tick)
        finally:
            os.close(done_read)
        code = learner.returncode
        return code
    except KeyboardInterrupt:
        # Ctrl-C reached every process in the group (SIGTERM only us): stop() signals each child,
        # giving the learner time to checkpoint.
        print("qrl run: interrupted, stopping the cluster", file=sys.stderr, flush=True)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        stop(procs, grace_s=_grace_s())
        if code == 2 and created:  # the learner refused the settings: the run never began
            shutil.rmtree(run_dir, ignore_errors=True)
