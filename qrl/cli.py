"""The `qrl` command: broker, actor, learner, and run (all three on one machine).

User errors (unknown env or algorithm, bad config key, port in use) are one
line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import click

from qrl.api import actor_sets, default_run_dir, inference_sets, learner_sets, names_and_run, resolve
from qrl.config import ConfigError, RunConfig, parse_overrides, to_dict


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
            from qrl.checkpoint import CheckpointError
            from qrl.demos import DemoError
            from qrl.envs import UnknownEnvironment
            from qrl.protocol.transport import AddressError, PortInUse

            try:
                return fn(*a, **kw)
            except (UnknownAlgorithm, UnknownEnvironment, ConfigError, PortInUse, FileNotFoundError, AddressError,
                    CheckpointError, DemoError) as exc:
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


keys_option = click.option("--keys", type=click.Path(file_okay=False), default=None,
                           help="Directory from `qrl keygen`: CURVE encryption and authentication on every socket.")

address_file_option = click.option(
    "--address-file", "broker_file", type=click.Path(dir_okay=False),
    help="Read the broker's address from this file (`qrl broker --address-file`), waiting for it to "
         "appear; instead of --broker. Lets a role start together with its broker.")

set_option = click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a config value, e.g. --set algo.lr=3e-4 --set run.num_envs=4.")


def _component_config(cls: type, section: str, sets: tuple[str, ...], **values):
    """BrokerConfig / ActorConfig from flags plus --set SECTION.KEY=VALUE overrides."""
    from qrl.config import build

    return build(cls, {**values, **parse_overrides(sets, {section: cls})[section]}, section)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """qrl: distributed reinforcement learning over ZeroMQ (broker, actors, learner)."""
    from qrl.lifetime import arm_from_env

    arm_from_env()  # started by `qrl run` or `make cluster`: do not outlive it


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=5555, show_default=True, type=click.IntRange(0, 65532),
              help="Service port; ingest and weights use the next three. 0 picks free ports.")
@click.option("--address-file", type=click.Path(dir_okay=False), help="Write the bound address and ports here (JSON).")
@click.option("--snapshot-dir", type=click.Path(file_okay=False),
              help="Snapshot the replay table here periodically and on stop; restore from it at start.")
@click.option("--snapshot-every", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between snapshots (what arrives after the last one is lost if the broker is killed).")
@keys_option
@click.option("--set", "sets", multiple=True, metavar="broker.KEY=VALUE",
              help="Override a broker setting, e.g. --set broker.ingest_hwm=4 (see BrokerConfig).")
@user_errors("broker")
def broker(host: str, port: int, address_file: str | None, snapshot_dir: str | None, snapshot_every: float,
           keys: str | None, sets: tuple[str, ...]) -> None:
    """Run the replay broker (the run's rendezvous point)."""
    _setup_logging()
    from qrl.brokers.server import BrokerConfig, run_broker
    from qrl.protocol.transport import check_bind_host

    check_bind_host(host)
    cfg = _component_config(BrokerConfig, "broker", sets, host=host, port=port, keys=keys, snapshot_dir=snapshot_dir,
                            snapshot_every_s=snapshot_every)
    run_broker(cfg, address_file)


@main.command()
@click.argument("key_dir", type=click.Path(file_okay=False))
def keygen(key_dir: str) -> None:
    """Write CURVE key pairs for `--keys KEY_DIR`: the broker's and one per role (learner, actor,
    observer), each authorized under authorized_clients/ROLE/ (add more keys there). Give each
    machine server.key and its role's pair only: an actor key cannot register runs or publish
    weights, an observer key can only read stats."""
    from qrl.protocol.transport import keygen as write_keys

    for path in write_keys(key_dir):
        click.echo(str(path))


@main.command()
@click.option("--n", "n", default=1, show_default=True, type=click.IntRange(1, 1024), help="Actor processes.")
@click.option("--broker", default="tcp://127.0.0.1:5555", show_default=True, help="The broker's service address.")
@click.option("--first-id", default="0", show_default=True,
              help="Actor id of the first process, or 'auto': a block of unused ids from the broker.")
@click.option("--total", type=int, help="Actors in the whole run across machines (default: --n).")
@address_file_option
@keys_option
@click.option("--inference", help="A central inference server's address (`qrl inference`): env-only actors "
                                   "that step their envs and get actions from it; they import no torch.")
@click.option("--inference-file", type=click.Path(dir_okay=False),
              help="Read the inference server's address from this file (`qrl inference --write-address`).")
@click.option("--set", "sets", multiple=True, metavar="actor.KEY=VALUE",
              help="Override an actor setting, e.g. --set actor.send_hwm=2 (see ActorConfig).")
@user_errors("actor")
def actor(n: int, broker: str, first_id: int, total: int | None, broker_file: str | None, keys: str | None,
          inference: str | None, inference_file: str | None, sets: tuple[str, ...]) -> None:
    """Run N actor processes under a supervisor that restarts any that die."""
    _setup_logging()
    from qrl.protocol.transport import check_address, read_address_file, use_keys

    if inference or inference_file:
        if keys:  # CURVE towards the inference server, with the actor role's key pair
            from qrl.protocol.transport import use_inference_keys

            use_inference_keys(keys)
        inference = read_address_file(inference_file) if inference_file else inference
        check_address(inference, "inference address")
        from qrl.acting.env_actor import run_env_actors  # no torch
        from qrl.acting.supervisor import ActorConfig

        first = 0 if first_id == "auto" else _int_option("--first-id", first_id)
        run_env_actors(_component_config(ActorConfig, "actor", sets, n=n, first_id=first, total=total,
                                         inference=inference))
        from qrl.lifetime import exit_now

        exit_now(0)
    from qrl.acting.actor import ActorConfig, run_actors  # torch: imported while a broker started with us binds

    use_keys(keys, server=False, role="actor")
    if broker_file:
        broker = read_address_file(broker_file)
    check_address(broker)
    first = None if first_id == "auto" else _int_option("--first-id", first_id)
    run_actors(_component_config(ActorConfig, "actor", sets, broker=broker, n=n, first_id=first, total=total))
    from qrl.lifetime import exit_now

    exit_now(0)  # workers are reaped and nothing is left to write


def _int_option(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"actor: {flag} must be an integer or 'auto', not {value!r}") from None


@main.command()
@click.option("--broker", default="tcp://127.0.0.1:5555", show_default=True, help="The broker's service address.")
@address_file_option
@click.option("--bind", default="tcp://127.0.0.1:5565", show_default=True,
              help="Where env actors connect (port 0: a free one).")
@click.option("--write-address", "address_out", type=click.Path(dir_okay=False),
              help="Write the bound address here (JSON), for `qrl actor --inference-file`.")
@click.option("--device", default="cpu", show_default=True, help="Where the policy runs.")
@click.option("--keys", type=click.Path(file_okay=False), default=None,
              help="Directory from `qrl keygen` (the actor role's keys): CURVE towards the broker, and on the "
                   "env actors' socket, which only actor keys may use.")
@click.option("--set", "sets", multiple=True, metavar="inference.KEY=VALUE",
              help="Override a setting, e.g. --set inference.batch_envs=64 (see InferenceConfig).")
@user_errors("inference")
def inference(broker: str, broker_file: str | None, bind: str, address_out: str | None, device: str,
              keys: str | None, sets: tuple[str, ...]) -> None:
    """Central inference for env-only actors: batches their observations through the policy, keeps
    their exploration and recurrent state, and pushes their segments to the broker."""
    # One BLAS thread, set before numpy loads OpenBLAS: on batches of tens of observations its
    # threads spin against the actors for the cores (measured on 2 cores, 8 actors: 1.38 ms of
    # server CPU per request with the default threads, 0.37 ms with one).
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    _setup_logging()
    from qrl.acting.inference import InferenceConfig, run_inference
    from qrl.protocol.transport import check_address, read_address_file, use_keys

    use_keys(keys, server=False, role="actor")  # towards the broker, as an actor
    if broker_file:
        broker = read_address_file(broker_file)
    check_address(broker)
    check_address(bind, "--bind", lowest_port=0)
    run_inference(_component_config(InferenceConfig, "inference", sets, broker=broker, bind=bind, device=device),
                  address_out, keys)
    from qrl.lifetime import exit_now

    exit_now(0)


def _learner_options(fn):
    for opt in reversed([
        click.option("--config", "config", type=click.Path(dir_okay=False),
                     help="A YAML preset (configs/*.yaml); flags and --set override it."),
        click.option("--algo", help="Algorithm name (default: the config file's, else dqn)."),
        click.option("--env", "env_id", help="Gymnasium id or package.module:Class (default: the config's, "
                                             "else CartPole-v1)."),
        click.option("--seed", type=int, help="Run seed (run.seed)."),
        click.option("--total-steps", type=int, help="Environment frame budget (run.total_steps); with --resume, "
                                                     "a larger one extends the run."),
        click.option("--max-seconds", type=float, help="Wall-clock limit of the run (run.max_seconds)."),
        click.option("--target-return", type=float, help="Stop when evaluation reaches it (default: env threshold)."),
        click.option("--run-dir", type=click.Path(file_okay=False), help="Where metrics and checkpoints go."),
        click.option("--no-progress", is_flag=True, help="Log progress lines instead of a live bar."),
        click.option("--tensorboard", is_flag=True, help="Also write TensorBoard event files to RUN_DIR/tb "
                                                         "(needs the tensorboard extra)."),
        keys_option,
        set_option,
    ]):
        fn = opt(fn)
    return fn


@main.command()
@_learner_options
@click.option("--broker", default="tcp://127.0.0.1:5555", show_default=True, help="The broker's service address.")
@address_file_option
@click.option("--device", default="auto", show_default=True, help="torch device: auto, cpu, cuda, cuda:1 ...")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --run-dir.")
@click.option("--resume-if-possible", is_flag=True,
              help="Continue from --run-dir's checkpoint if there is one, else start (for restart policies).")
@user_errors("learner")
def learner(config, algo, env_id, seed, total_steps, max_seconds, target_return, run_dir, no_progress, tensorboard,
            keys, sets, broker, broker_file, device, resume, resume_if_possible) -> None:
    """Run the learner: register the run, train from the broker's batches, publish weights."""
    _setup_logging()
    from qrl.protocol.transport import check_address, read_address_file, use_keys

    if not broker_file:
        check_address(broker)
    use_keys(keys, server=False, role="learner")
    if (resume or resume_if_possible) and not run_dir:
        raise UserError("learner: --resume needs --run-dir")
    if resume_if_possible:
        from qrl import checkpoint

        resume = (Path(run_dir) / checkpoint.FILENAME).exists()
    r = resolve(config, algo, env_id, sets, resume_dir=run_dir if resume else None, seed=seed,
                total_steps=total_steps, max_seconds=max_seconds, target_return=target_return)
    if broker_file:  # read after the settings are checked and torch is imported
        broker = read_address_file(broker_file)
    from qrl.learner import LearnerOptions, run_learner

    opts = LearnerOptions(algo=r.algo, env=r.env, broker=broker, run_dir=run_dir or default_run_dir(r.algo, r.env),
                          device=device, resume=resume, progress=not no_progress, tensorboard=tensorboard)
    run_learner(opts, r.run, r.algo_values)
    from qrl.lifetime import exit_now

    exit_now(0)  # checkpoint, summary and metrics are written and closed


@main.command()
@_learner_options
@click.option("--actors", type=click.IntRange(1, 1024), help="Actor processes (default: the config's, else 4).")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir: learner checkpoint and broker snapshot.")
@click.option("--inference", is_flag=True, help="Central inference: one `qrl inference` server acts for env-only "
                                                "actors (which import no torch).")
@click.option("--local", "in_process", is_flag=True,
              help="One process, no sockets: the actors take turns with the learner (to debug an algorithm).")
@user_errors("run")
def run(config, algo, env_id, seed, total_steps, max_seconds, target_return, run_dir, no_progress, tensorboard, keys,
        sets, actors, resume, inference, in_process) -> None:
    """Train with a local cluster: broker, actors and learner as separate processes on loopback.
    With --resume, the run directory's own settings: flags and --set may extend it (--total-steps,
    --max-seconds) but not change what it trains."""
    from qrl import algorithm
    from qrl.config import load_file

    if resume and not run_dir:
        raise UserError("run: --resume needs --run-dir")
    run_options = dict(seed=seed, total_steps=total_steps, max_seconds=max_seconds, target_return=target_return)
    if in_process:
        if inference or keys:
            raise UserError("run: --local runs everything in one process: not with --inference or --keys")
        _run_in_process(config, algo, env_id, sets, actors, run_dir, resume, no_progress, tensorboard, **run_options)

    # Checked here: what needs no torch. The learner, started at once with the broker and the
    # actors, checks the rest (algorithm settings, the environment) and ends the run with one line.
    file = load_file(config)
    if resume:
        from qrl import resume as resuming

        file, saved = resuming.resumed_file(run_dir, file, algo, env_id)
    run_overrides = parse_overrides([s for s in sets if s.strip().startswith("run.")], {"run": RunConfig})["run"]
    algo, env_id, run_cfg = names_and_run(file, algo, env_id, run_overrides, {}, **run_options)
    if resume:
        resuming.refuse_changes(saved, to_dict(run_cfg))
    algorithm.check_name(algo)
    from qrl.cluster import ClusterError, learner_args, run_local

    actors = actors or file.actors or 4
    passed_on = learner_args(learner_sets(sets), config=config, no_progress=no_progress, resume=resume,
                             tensorboard=tensorboard, **run_options)
    key_args = ("--keys", keys) if keys else ()
    try:
        code = run_local(algo, env_id, actors, Path(run_dir or default_run_dir(algo, env_id)),
                         [*passed_on, *key_args], key_args, actor_sets(sets, env_id, run_cfg.wrappers),
                         inference=inference, inference_args=inference_sets(sets, env_id, run_cfg.wrappers))
    except ClusterError as exc:
        raise click.ClickException(f"run: {exc}") from None
    sys.exit(code)


def _run_in_process(config, algo, env_id, sets, actors, run_dir, resume, no_progress, tensorboard,
                    **run_options) -> None:
    _setup_logging()
    r = resolve(config, algo, env_id, sets, resume_dir=run_dir if resume else None, **run_options)
    from qrl.api import train_in_process
    from qrl.lifetime import exit_now

    train_in_process(r, actors or r.actors or 4, run_dir or default_run_dir(r.algo, r.env), resume=resume,
                     progress=not no_progress, tensorboard=tensorboard)
    exit_now(0)


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--episodes", default=10, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--seed", default=0, show_default=True, type=int, help="Episode i is reset with seed + i.")
@click.option("--render", type=click.Choice(["terminal"]), help="Print every step (environments with text rendering).")
@click.option("--gif", type=click.Path(dir_okay=False), help="Save the first episode as an animated GIF here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--env-kwargs", help="Environment keyword arguments over the run's evaluation ones, as YAML: "
                                   "'{opponent: minimax, agent_first: false}'.")
@user_errors("evaluate")
def evaluate(path, episodes, seed, render, gif, as_json, env_kwargs) -> None:
    """Deterministic evaluation of a run directory or checkpoint: mean and std of the return."""
    import json

    import yaml

    from qrl.evaluation import evaluate as run_evaluation

    kwargs = yaml.safe_load(env_kwargs) if env_kwargs else {}
    if not isinstance(kwargs, dict):
        raise UserError(f"evaluate: --env-kwargs must be a YAML mapping such as '{{opponent: minimax}}', "
                        f"not {env_kwargs!r}")
    result = run_evaluation(path, episodes=episodes, seed=seed, render=render, gif=gif,
                            out=lambda text: click.echo(text), env_kwargs=kwargs)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{result['algo']} on {result['env']}: mean return {result['mean']:.3f} +/- {result['std']:.3f} "
                   f"over {episodes} episodes" + (f"; GIF in {gif}" if gif else ""))


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--dataset-id", required=True, help="The Minari dataset id to write, e.g. cartpole/qrl-dqn-v0.")
@click.option("--episodes", default=10, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--seed", default=0, show_default=True, type=int, help="Episode i is reset with seed + i.")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Where Minari datasets live (default: $MINARI_DATASETS_PATH, else ~/.minari/datasets).")
@click.option("--stochastic", is_flag=True,
              help="Sample the policy's actions (as it explores) instead of taking its greedy ones.")
@user_errors("record")
def record(path, dataset_id, episodes, seed, data_dir, stochastic) -> None:
    """Record a run's policy (deterministic episodes) as a Minari dataset of demonstrations."""
    from qrl.demos import record as record_dataset

    where, returns = record_dataset(path, dataset_id, episodes, seed, data_dir, stochastic=stochastic)
    mean = sum(returns) / len(returns)
    click.echo(f"recorded {episodes} episodes (mean return {mean:.3f}) as {dataset_id} in {where}")


@main.command()
@click.argument("target", required=False)
@click.option("--broker", help="The broker's service address (instead of TARGET).")
@click.option("--json", "as_json", is_flag=True, help="Print the broker's stats as JSON (for scripts).")
@click.option("--timeout", default=5.0, show_default=True, type=float, help="Seconds to wait for the broker.")
@keys_option
@user_errors("status")
def status(target, broker, as_json, timeout, keys) -> None:
    """The broker's view of the cluster: counters, replay, policy lag, and every actor.

    TARGET is a run directory (its broker.json gives the address and keys) or a broker address;
    without one, the live run under runs/, else tcp://127.0.0.1:5555."""
    import json

    from qrl import status as status_view

    try:
        where = status_view.find_target(target, broker, keys)
    except status_view.StatusError as exc:
        raise UserError(f"status: {exc}") from None
    stats = _broker_stats(where.address, where.keys, timeout)
    stats.pop("req", None)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        status_view.render(stats)


def _broker_stats(address: str, keys: str | None, timeout: float) -> dict:
    import zmq

    from qrl.protocol.transport import BrokerUnavailable, Client, check_address, refuses_plain_clients, use_keys

    use_keys(keys, server=False, role=("observer", "learner", "actor"))  # any role may read stats
    check_address(address)
    ctx = zmq.Context()
    try:
        client = Client(ctx, address, "status", timeout_s=timeout)
        try:
            return client.request("get_stats", wait_s=timeout).meta
        except BrokerUnavailable:
            if not keys and refuses_plain_clients(ctx, address):
                raise UserError(f"status: the broker at {address} turned away a client without keys: it uses keys "
                                f"(CURVE), give --keys KEY_DIR (the directory from `qrl keygen`)") from None
            raise UserError(f"status: no broker answered at {address} within {timeout:g} s") from None
        finally:
            client.close()
    finally:
        ctx.destroy(linger=0)


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--onnx", "onnx_file", required=True, type=click.Path(dir_okay=False),
              help="Write an ONNX model of the deterministic policy here (input obs [batch, ...], output action).")
@user_errors("export")
def export(path, onnx_file) -> None:
    """Export the policy of a run directory or checkpoint (feed-forward policies; needs the export extra)."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError:
        raise UserError("export: ONNX export needs onnx: pip install 'qrl[export]'") from None
    from qrl.policy import load

    try:
        click.echo(f"wrote {load(path).export_onnx(onnx_file)}")
    except ValueError as exc:
        raise UserError(f"export: {exc}") from None


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", default="learning_curves.png", show_default=True, type=click.Path(dir_okay=False))
@user_errors("plot")
def plot(run_dirs, output) -> None:
    """Learning curves of one or more runs (evaluation and return(100) against env frames and wall time) as a PNG."""
    from qrl.plotting import plot_runs

    click.echo(f"wrote {plot_runs(run_dirs, output)}")
