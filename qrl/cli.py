"""The `qrl` command: broker, actor, learner, and run (all three on one machine).

User errors (unknown env or algorithm, bad config key, port in use) are one
line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path

import click

from qrl.config import ConfigError, RunConfig, parse_overrides


class UserError(click.ClickException):
    exit_code = 2


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)


def user_errors(role: str):
    """Turn the errors a user can cause into one clear line naming the role."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*a, **kw):
            from qrl.algorithm import UnknownAlgorithm
            from qrl.envs import UnknownEnvironment
            from qrl.transport import PortInUse

            try:
                return fn(*a, **kw)
            except (UnknownAlgorithm, UnknownEnvironment, ConfigError, PortInUse, FileNotFoundError) as exc:
                raise UserError(f"{role}: {exc}") from None
            except (click.ClickException, SystemExit, KeyboardInterrupt):
                raise
            except Exception as exc:  # a crash: one line naming the role; the traceback only on request
                if os.environ.get("QRL_DEBUG"):
                    raise
                click.echo(f"{role}: failed: {type(exc).__name__}: {exc} (QRL_DEBUG=1 shows the traceback)",
                           err=True)
                sys.exit(1)

        return inner

    return wrap


def _resolve(algo: str, env: str, sets: tuple[str, ...], **run_options) -> tuple[RunConfig, dict]:
    """Check algorithm, env and overrides before anything starts; return the run config and algo overrides."""
    from qrl import algorithm, envs
    from qrl.config import build

    module = algorithm.load(algo)
    envs.check_env_id(env)
    overrides = parse_overrides(sets, {"run": RunConfig, "algo": module.Args})
    run_values = {**{k: v for k, v in run_options.items() if v is not None}, **overrides["run"]}
    run_cfg = build(RunConfig, run_values, "run")
    build(module.Args, overrides["algo"], "algo")  # type-check now, not in a child process
    return run_cfg, overrides["algo"]


keys_option = click.option("--keys", type=click.Path(file_okay=False), default=None,
                           help="Directory from `qrl keygen`: CURVE encryption and authentication on every socket.")

set_option = click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a config value, e.g. --set algo.lr=3e-4 --set run.num_envs=4.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """qrl: distributed reinforcement learning over ZeroMQ (broker, actors, learner)."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=5555, show_default=True, type=int,
              help="Service port; ingest and weights use the next three. 0 picks free ports.")
@click.option("--address-file", type=click.Path(dir_okay=False), help="Write the bound address and ports here (JSON).")
@click.option("--snapshot-dir", type=click.Path(file_okay=False),
              help="Snapshot the replay table here periodically and on stop; restore from it at start.")
@click.option("--snapshot-every", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between snapshots (what arrives after the last one is lost if the broker is killed).")
@keys_option
@user_errors("broker")
def broker(host: str, port: int, address_file: str | None, snapshot_dir: str | None, snapshot_every: float,
           keys: str | None) -> None:
    """Run the replay broker (the run's rendezvous point)."""
    _setup_logging()
    from qrl.brokers.server import BrokerConfig, run_broker

    run_broker(BrokerConfig(host=host, port=port, keys=keys, snapshot_dir=snapshot_dir,
                            snapshot_every_s=snapshot_every), address_file)


@main.command()
@click.argument("key_dir", type=click.Path(file_okay=False))
def keygen(key_dir: str) -> None:
    """Write CURVE key pairs for `--keys KEY_DIR`: the broker's, one client's, and the
    authorized_clients/ directory the broker checks (add more clients' *.key files there)."""
    from qrl.transport import keygen as write_keys

    for path in write_keys(key_dir):
        click.echo(str(path))


@main.command()
@click.option("--n", "n", default=1, show_default=True, type=click.IntRange(1, 1024), help="Actor processes.")
@click.option("--broker", default="tcp://127.0.0.1:5555", show_default=True, help="The broker's service address.")
@click.option("--first-id", default=0, show_default=True, type=int, help="Actor id of the first process.")
@click.option("--total", type=int, help="Actors in the whole run across machines (default: --n).")
@keys_option
@user_errors("actor")
def actor(n: int, broker: str, first_id: int, total: int | None, keys: str | None) -> None:
    """Run N actor processes under a supervisor that restarts any that die."""
    _setup_logging()
    from qrl.actor import ActorConfig, run_actors
    from qrl.transport import split_address, use_keys

    use_keys(keys, server=False)

    try:
        split_address(broker)
    except ValueError as exc:
        raise UserError(f"actor: {exc}") from None
    run_actors(ActorConfig(broker=broker, n=n, first_id=first_id, total=total))


def _learner_options(fn):
    for opt in reversed([
        click.option("--algo", default="dqn", show_default=True, help="Algorithm name."),
        click.option("--env", "env_id", default="CartPole-v1", show_default=True, help="Gymnasium environment id."),
        click.option("--seed", type=int, help="Run seed (run.seed)."),
        click.option("--total-steps", type=int, help="Environment frame budget (run.total_steps)."),
        click.option("--target-return", type=float, help="Stop when evaluation reaches it (default: env threshold)."),
        click.option("--run-dir", type=click.Path(file_okay=False), help="Where metrics and checkpoints go."),
        click.option("--no-progress", is_flag=True, help="Log progress lines instead of a live bar."),
        keys_option,
        set_option,
    ]):
        fn = opt(fn)
    return fn


def _default_run_dir(algo: str, env_id: str) -> str:
    return str(Path("runs") / f"{algo}-{env_id}-{time.strftime('%Y%m%d-%H%M%S')}")


@main.command()
@_learner_options
@click.option("--broker", default="tcp://127.0.0.1:5555", show_default=True, help="The broker's service address.")
@click.option("--device", default="auto", show_default=True, help="torch device: auto, cpu, cuda, cuda:1 ...")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --run-dir.")
@user_errors("learner")
def learner(algo, env_id, seed, total_steps, target_return, run_dir, no_progress, keys, sets, broker, device,
            resume) -> None:
    """Run the learner: register the run, train from the broker's batches, publish weights."""
    _setup_logging()
    from qrl.transport import use_keys

    use_keys(keys, server=False)
    run_cfg, algo_values = _resolve(algo, env_id, sets, seed=seed, total_steps=total_steps,
                                    target_return=target_return)
    from qrl.learner import LearnerOptions, run_learner

    if resume and not run_dir:
        raise UserError("learner: --resume needs --run-dir")
    opts = LearnerOptions(algo=algo, env=env_id, broker=broker, run_dir=run_dir or _default_run_dir(algo, env_id),
                          device=device, resume=resume, progress=not no_progress)
    run_learner(opts, run_cfg, algo_values)


@main.command()
@_learner_options
@click.option("--actors", default=4, show_default=True, type=click.IntRange(1, 1024), help="Actor processes.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir: learner checkpoint and broker snapshot.")
@user_errors("run")
def run(algo, env_id, seed, total_steps, target_return, run_dir, no_progress, keys, sets, actors, resume) -> None:
    """Train with a local cluster: broker, actors and learner as separate processes on loopback."""
    _resolve(algo, env_id, sets, seed=seed, total_steps=total_steps, target_return=target_return)
    if resume and not run_dir:
        raise UserError("run: --resume needs --run-dir")
    from qrl.cluster import ClusterError, run_local

    learner_args = [f"--set={s}" for s in sets]
    for flag, value in (("--seed", seed), ("--total-steps", total_steps), ("--target-return", target_return)):
        if value is not None:
            learner_args += [flag, str(value)]
    if no_progress:
        learner_args.append("--no-progress")
    if resume:
        learner_args.append("--resume")
    key_args = ("--keys", keys) if keys else ()
    try:
        code = run_local(algo, env_id, actors, Path(run_dir or _default_run_dir(algo, env_id)),
                         [*learner_args, *key_args], key_args)
    except ClusterError as exc:
        raise click.ClickException(f"run: {exc}") from None
    sys.exit(code)
