"""The learner: owns the model, the optimizer and the run.

It registers the run spec (with version-0 weights) at the broker, keeps
several sample requests in flight, runs the algorithm's update on each batch,
publishes weights every K updates with an increasing version, evaluates a
deterministic policy on its own envs, writes metrics and checkpoints, and
stops at the frame budget, the target return or a wall-clock limit.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import secrets
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import zmq

from qrl import algorithm, callbacks, checkpoint, eager, envs, lifetime, resume
from qrl.protocol import transport, wire
from qrl.evaluation import run_episodes
from qrl.guard import NonFinite, UpdateGuard, finite_arrays
from qrl.brokers.tables import DEMO_PREFIX, IMPORTANCE_WEIGHT, ITEM_ID, ItemSchema, TableConfig, segment_items_default
from qrl.config import ConfigError, RunConfig, build, to_dict, to_yaml
from qrl.protocol.messages import MAX_ACTORS_CONSUMED
from qrl.metrics import MetricsWriter, ProgressView
from qrl.normalize import Normalizer
from qrl.sampling import SampleClient

log = logging.getLogger("qrl.learner")


@dataclass(frozen=True)
class LearnerOptions:
    algo: str
    env: str
    broker: str = "tcp://127.0.0.1:5555"
    run_dir: str = "runs/latest"
    device: str = "auto"
    resume: bool = False
    progress: bool = True
    tensorboard: bool = False


class LearnerProcess:
    def __init__(self, opts: LearnerOptions, run_cfg: RunConfig, algo_values: dict[str, Any]):
        self.opts = opts
        self.run_dir = Path(opts.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        envs.check_env_id(opts.env)
        self.agent = algorithm.load(opts.algo)
        saved = checkpoint.load(self.run_dir, require=("learner", "config", "counters")) if opts.resume else None
        self.cfg = run_cfg
        torch.set_num_threads(run_cfg.learner_threads)
        eager.skip_compiler_import()  # before the algorithm builds its optimizers
        self.args = build(self.agent.Args, algo_values, "algo")
        if saved is not None:  # a resumed run keeps its own settings but for how long it runs and is watched
            resume.refuse_changes(json.loads(saved["config"]), to_dict(run_cfg), dataclasses.asdict(self.args))
        self.agent.table_config(self.args).validate(self.args.batch_size)
        if opts.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(opts.device)
        self.obs_space, self.action_space = envs.spaces(opts.env, run_cfg.env_kwargs, run_cfg.wrappers)
        torch.manual_seed(run_cfg.seed)  # a run's initial weights follow from its seed (as in CleanRL and SB3)
        self.learner = self.agent.Learner(self.obs_space, self.action_space, self.args, self.device)
        self.guard = UpdateGuard(self.learner)  # a non-finite gradient skips its step (qrl/guard.py)
        self.normalizer = None
        if run_cfg.normalize_obs or run_cfg.normalize_reward:
            self.normalizer = Normalizer(self.obs_space.shape, run_cfg.normalize_obs, run_cfg.normalize_reward)
        self.eval_net = self.agent.make_policy(self.obs_space, self.action_space, self.args)
        # Links between a stream's segments: replay tables (a queue's items leave in order, brokers/frame_ring.py).
        links = self.agent.table_config(self.args).sampler != "fifo"
        self.item_schema = algorithm.item_schema(self.agent, self.eval_net, self.obs_space, self.action_space,
                                                 self.args, run_cfg.num_envs, run_cfg.segment_length,
                                                 run_cfg.store_frames, links, run_cfg.value_limit)
        self.demo_items, self.demo_schema = self.load_demos()
        self.target_return = run_cfg.target_return
        if self.target_return is None:
            self.target_return = envs.spec(opts.env).reward_threshold

        # Counters that a checkpoint carries across restarts.
        self.run_id = uuid.uuid4().hex[:12]
        # The run's secret: the broker takes weights, and a second register of this run, only with
        # it. Kept in the checkpoint, so a restarted learner holds the run again.
        self.token = secrets.token_hex(16)
        self.weights_version = 0
        self.frames_before = 0  # env frames counted by earlier incarnations of this run
        self.elapsed_before = 0.0
        self.best_eval = -float("inf")
        if saved is not None:
            self.restore(saved)
        self.config_json = json.dumps({"algo": opts.algo, "env": opts.env, "run": to_dict(self.cfg),
                                       "args": dataclasses.asdict(self.args)}, indent=2)
        (self.run_dir / "config.json").write_text(self.config_json)
        # The same, as a preset: `qrl run --config RUN_DIR/config.yaml` reruns it.
        (self.run_dir / "config.yaml").write_text(to_yaml(opts.algo, opts.env, self.cfg, self.args))
        self.stopping = False
        self.stop_reason = ""
        callbacks.take_stop_request(self.run_dir)  # one left from before this run started is not for it
        self.on_tick: Callable[[], None] | None = None  # the Python API's callbacks, in-process runs
        # Synchronous actors: incarnation -> its last segment this learner is done with (trained
        # on, or dropped by the broker), most recent last; sent with the weights (RunConfig.sync_lead).
        self.consumed: collections.OrderedDict[str, int] = collections.OrderedDict()

    def load_demos(self) -> tuple[dict[str, np.ndarray] | None, ItemSchema | None]:
        """run.demos as the demonstration table's items and their schema (value limits as the agent
        table's), read before anything starts: a dataset that cannot be used is one line (DemoError)."""
        use, source = self.agent.demonstrations, self.cfg.demos
        if source is None:
            if use is not None and use.required:
                raise ConfigError(f"{self.opts.algo} learns from demonstrations: set run.demos to a Minari dataset "
                                  "(a path or a local id; `qrl record` writes one)")
            return None, None
        if use is None:
            raise ConfigError(f"run.demos: {self.opts.algo} does not learn from demonstrations")
        from qrl import demos

        dataset = demos.load(source, self.obs_space, self.action_space, self.cfg.demo_episodes)
        items = self.agent.demo_items(dataset, self.args)
        schema = ItemSchema.of(items)
        schema = dataclasses.replace(schema, limits=algorithm.field_limits(
            schema, self.obs_space, self.action_space, self.cfg.value_limit))
        log.info("learner: %d demonstration items from %d episodes of %s (mean return %.2f)",
                 len(next(iter(items.values()))),
                 len(dataset.returns), source, float(np.mean(dataset.returns)))
        return items, schema

    def batch_sizes(self) -> tuple[int, int]:
        """(agent items, demonstration items) per sample request."""
        if self.demo_items is None:
            return self.args.batch_size, 0
        return self.agent.demonstrations.batch(self.args)

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue a checkpointed run: the learner's state and the counters."""
        self.learner.load_state_dict(saved["learner"])
        if self.normalizer is not None and "normalizer" in saved:
            self.normalizer.load_state(saved["normalizer"])
        c = saved["counters"]
        self.run_id, self.weights_version = c["run_id"], c["version"] + 1
        self.token = c.get("token", self.token)
        self.frames_before, self.elapsed_before = c["frames"], c["elapsed_s"]
        self.best_eval = c["best_eval"]
        resume.check_budget_left(self.run_dir, self.frames_before, self.elapsed_before, self.cfg.total_steps,
                                 self.cfg.max_seconds)
        log.info("learner: resumed run %s at update %d, weights version %d", self.run_id,
                 self.learner.updates, self.weights_version)

    # -- broker plumbing --------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        c = self.cfg
        return {"run_id": self.run_id, "algo": self.opts.algo, "env": self.opts.env,
                "env_kwargs": c.env_kwargs, "wrappers": c.wrappers,
                "args": dataclasses.asdict(self.args),
                "run": {"num_envs": c.num_envs, "segment_length": c.segment_length, "seed": c.seed,
                        "sync_actors": c.sync_actors, "sync_lead": c.sync_lead,
                        "frame_fields": list(self.frame_fields), "frame_links": self.frame_links,
                        "clip_rewards": c.clip_rewards, "episodic_life": c.episodic_life,
                        "value_limit": c.value_limit}}

    @property
    def frame_fields(self) -> tuple[str, ...]:
        """The item fields actors send as frame references (none unless the table stores frames)."""
        frames = self.item_schema.frames
        return frames.fields if frames is not None else ()

    @property
    def frame_links(self) -> bool:
        """Whether references may point into a stream's previous segment (replay tables: a queue's
        items must leave in order, brokers/frame_ring.py)."""
        return bool(self.frame_fields) and self.table_config().sampler != "fifo"

    def connect(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self.client = transport.Client(ctx, self.opts.broker, "learner")
        self.pub: zmq.Socket | None = None
        self.sampler: SampleClient | None = None
        self.last_publish = time.monotonic()
        self.register()

    def table_config(self) -> TableConfig:
        """The algorithm's table; one that states no policy-lag bound gets the run's (flow control:
        the broker drops segments made by older weights than that)."""
        table = self.agent.table_config(self.args)
        if table.max_policy_lag is None:
            table = dataclasses.replace(table, max_policy_lag=self.cfg.max_policy_lag)
        if table.max_segment_items is None:  # a few of its actors' segments, or 1/16 of a replay table
            segment = self.cfg.num_envs * self.cfg.segment_length // self.item_schema.frames_per_item
            most = max(algorithm.SEGMENTS_AT_ONCE * segment, segment_items_default(table.capacity, table.sampler))
            table = dataclasses.replace(table, max_segment_items=min(table.capacity, most))
        return table

    def register(self) -> None:
        """Register the run (spec, table, current weights) and open fresh publish and sample sockets.
        Called again when the broker no longer knows the run (it restarted)."""
        reply = self.request_run()
        if reply.type != "ok":
            raise RuntimeError(f"broker refused the run: {reply.meta.get('reason')}: {reply.meta.get('detail')}")
        self.registered_frames = reply.meta.get("frames")  # the broker's count its frame limit starts from
        self.send_demos()
        host, _ = transport.split_address(self.opts.broker)
        if self.sampler is not None:
            self.sampler.close()
        if self.pub is not None:
            self.pub.close(linger=0)
        self.pub = transport.socket(self.ctx, zmq.PUB, linger_ms=1000)
        self.pub.connect(f"tcp://{host}:{reply.meta['ports']['weights_in']}")
        # Requests in flight to a broker that restarted are gone: a new socket starts a new window.
        agent_batch, demo_batch = self.batch_sizes()
        demo_option = {"demo_batch": demo_batch} if demo_batch else {}
        self.sampler = SampleClient(self.ctx, self.opts.broker, agent_batch, self.cfg.samples_in_flight,
                                    lambda: {**self.agent.sample_options(self.args, self.learner.updates),
                                             **demo_option}, self.token)

    def send_demos(self) -> None:
        """The demonstration table, in parts of at most DEMO_PART_BYTES, to the broker (after each
        register: a broker keeps it only while it runs)."""
        if self.demo_items is None:
            return
        total = len(next(iter(self.demo_items.values())))
        per_part = max(1, DEMO_PART_BYTES // max(1, self.demo_schema.served_bytes()))
        for offset in range(0, total, per_part):
            meta = {"token": self.token, "offset": offset, "total": total,
                    **({"schema": self.demo_schema.as_meta()} if offset == 0 else {})}
            part = {k: np.ascontiguousarray(v[offset:offset + per_part]) for k, v in self.demo_items.items()}
            reply = self.client.request("demos", meta, part, wait_s=None, report=log.warning,
                                        should_stop=lambda: self.stopping)
            if reply.type != "ok":
                raise RuntimeError(f"broker refused the demonstrations: {reply.meta.get('reason')}: "
                                   f"{reply.meta.get('detail')}")

    def request_run(self) -> wire.Message:
        """The broker's answer to `register`; while another run's learner holds the broker (run_held),
        asked again every second, saying so every RUN_HELD_REPORT_S."""
        started = last_report = time.monotonic()
        while True:
            reply = self.client.request(
                "register",
                {"spec": self.spec(), "table": self.table_config().as_meta(), "schema": self.item_schema.as_meta(),
                 "weights_version": self.weights_version, "token": self.token,
                 "frames_left": max(0, self.cfg.total_steps - self.frames_so_far())},
                self.weights(), wait_s=None, report=log.warning, should_stop=lambda: self.stopping,
            )
            if reply.type != "error" or reply.meta.get("reason") != "run_held" or self.stopping:
                return reply
            now = time.monotonic()
            if now - last_report >= RUN_HELD_REPORT_S or last_report == started:
                log.warning("learner: waiting %.0f s so far: %s", now - started, reply.meta.get("detail"))
                last_report = now
            time.sleep(1.0)

    def finite_weights(self) -> dict[str, np.ndarray]:
        """The weights to publish; NonFinite if any is NaN or infinite (never sent: the broker would
        refuse them, and actors would act on them)."""
        weights = self.weights()
        if not finite_arrays(weights):
            raise NonFinite(f"the weights hold NaN or infinite values after update {self.learner.updates}; "
                            "not publishing them")
        return weights

    def weights(self) -> dict[str, np.ndarray]:
        """What actors load: the policy's arrays, plus the observation statistics when normalizing."""
        return {**self.learner.policy_state(), **(self.normalizer.arrays() if self.normalizer else {})}

    def publish(self) -> None:
        weights = self.finite_weights()
        self.weights_version += 1
        self.last_publish = time.monotonic()
        meta = {"version": self.weights_version, "run_id": self.run_id, "token": self.token}
        if self.cfg.sync_actors and self.cfg.sync_lead > 0:
            meta["consumed"] = dict(self.consumed)
        transport.send(self.pub, "weights", meta, weights)

    def trained_on(self, consumed: dict[str, int]) -> None:
        """Note the segments of the batch just trained on (and those the broker dropped)."""
        for incarnation, seq in consumed.items():
            self.consumed[incarnation] = max(seq, self.consumed.pop(incarnation, -1))
        while len(self.consumed) > MAX_ACTORS_CONSUMED:
            self.consumed.popitem(last=False)

    def release(self) -> None:
        """Done with the run: another run may register at the broker at once (else after its lease)."""
        try:
            self.client.request("release", {"token": self.token}, wait_s=2.0)
        except transport.BrokerUnavailable:
            log.info("learner: the broker did not answer release; the run's lease lapses on its own")

    def broker_stats(self) -> dict[str, Any]:
        reply = self.client.request("get_stats", {}, wait_s=None, report=log.warning,
                                    should_stop=lambda: self.stopping)
        return reply.meta

    # -- the loop ---------------------------------------------------------------------------------

    def evaluate(self) -> tuple[float, float]:
        self.eval_net.load_state_dict({k: torch.from_numpy(v) for k, v in self.learner.policy_state().items()})
        mean, std, _ = run_episodes(self.agent, self.args, self.eval_net, self.opts.env, self.cfg.eval_episodes,
                                    seed=self.cfg.seed + 7, env_kwargs=self.cfg.eval_kwargs,
                                    wrappers=self.cfg.wrappers,
                                    normalize_obs=self.normalizer.normalize_obs if self.normalizer else None)
        return mean, std

    def save(self, frames: int, elapsed: float) -> Path:
        path = self._save(frames, elapsed)
        self.metrics.write("checkpoint", frames=frames, updates=self.learner.updates, elapsed_s=elapsed, path=str(path))
        return path

    def _save(self, frames: int, elapsed: float) -> Path:
        return checkpoint.save(self.run_dir, {
            "learner": self.learner.state_dict(),
            "normalizer": self.normalizer.state() if self.normalizer else {},
            "counters": {"run_id": self.run_id, "token": self.token, "version": self.weights_version, "frames": frames,
                         "elapsed_s": elapsed, "best_eval": self.best_eval},
            "config": self.config_json,
        })

    def run(self) -> dict[str, Any]:
        self.metrics = MetricsWriter(self.run_dir, tensorboard=self.opts.tensorboard)
        try:
            self.open()
            self.metrics.write("phase", name="registered")  # start-up phases: scripts/bench_overhead.py
            self.live = LiveCounters(frames=self.frames_before, last_eval_frames=self.frames_before)
            self.start_counting()
            self.live.mark_rates(self.learner.updates, consumed=0)
            self._loop()
            return self._finish()
        finally:
            self.metrics.close()
            self.close()

    def open(self) -> None:
        """Reach the broker and register the run."""
        self.connect(zmq.Context())

    def frames_so_far(self) -> int:
        live = getattr(self, "live", None)  # none before the first register
        return live.frames if live is not None else self.frames_before

    def start_counting(self) -> None:
        """Count frames from the broker's counter as it is now: a broker restored from a snapshot
        starts from the snapshot's count, frames that this run's checkpoint already holds."""
        stats = self.broker_stats()
        # From the count at the register, not now: frames accepted in between (actors already running on a
        # restored broker) count toward the budget, or the broker's frame limit is reached before the learner's.
        frames = getattr(self, "registered_frames", None)
        self.live.broker_id = stats.get("broker_id")
        self.live.broker_frames = frames if isinstance(frames, int) else stats.get("frames", 0)

    def close(self) -> None:
        self.ctx.destroy(linger=200)  # the last weights go out at once on loopback; a gone broker gets none

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.live.started

    def _loop(self) -> None:
        """Train on batches as they come, with the periodic tasks between them, until a stop rule
        holds or a signal asks to stop."""
        c = self.cfg
        self.broker_sync = Periodic(1.0, self.sync_with_broker)
        tasks = [self.broker_sync, Periodic(c.checkpoint_every_s, self.checkpoint),
                 Periodic(0.5, self.check_stop_request), *([Periodic(0.2, self.on_tick)] if self.on_tick else [])]
        with ProgressView(c.total_steps, self.opts.progress) as view:
            while not self.stopping:
                self.train_on_next_batch()
                now = time.monotonic()
                for task in tasks:
                    task.maybe_run(now)
                if self.evaluation_due(now):
                    self.evaluate_and_record()
                self.stop_reason = self.stop_reason or self.stop_rule()
                if self.stop_reason:
                    break
                view.update(self.live.frames, self.live.status_line())
        if self.stopping and not self.stop_reason:
            self.stop_reason = "stopped by signal"

    def train_on_next_batch(self) -> None:
        """Wait (briefly) for the next answer on the sampling socket: train on a batch, note a
        refusal, or recover from a sample_status what a dropped connection lost."""
        t0 = time.monotonic()
        reply = self.sampler.receive(100)
        self.live.wait_s += time.monotonic() - t0
        if reply is None:
            return
        if reply.type == "error":  # e.g. a restarted broker without our table
            self.live.refusals += 1
            why = f"{reply.meta.get('reason')}: {reply.meta.get('detail')}"
            if self.live.refusals > 10:
                raise RuntimeError(f"broker refused sample requests: {why}")
            log.warning("learner: broker refused a sample request: %s", why)
            self.broker_sync.due_now()  # check at once whether the broker still knows the run
            return
        if reply.type == "batch" and (foreign := self.foreign_batch(reply)):
            self.live.foreign_batches += 1  # defense in depth: never train on another run's items
            log.warning("learner: dropped %s (%d so far); checking the broker", foreign, self.live.foreign_batches)
            self.broker_sync.due_now()
            return
        if reply.type == "batch":
            self.live.refusals = 0
            self.count_frames(reply.meta.get("broker_id"), reply.meta.get("frames"))
            self.train_on(reply.arrays, reply.meta.get("consumed") or {})
        elif reply.type == "sample_status":
            self.count_frames(reply.meta.get("broker_id"), reply.meta.get("frames"))
            self.recover_lost_messages(reply.meta)

    def foreign_batch(self, reply: wire.Message) -> str:
        """What is wrong with a batch that is not of this run and item schema ('' when it is)."""
        if reply.meta.get("run_id") != self.run_id:
            return f"a batch of run {str(reply.meta.get('run_id'))[:64]}"
        arrays, refs = reply.arrays, self.item_schema.references
        demo_fields = {name for name in arrays if name.startswith(DEMO_PREFIX)}
        agent_fields = set(arrays) - {ITEM_ID, IMPORTANCE_WEIGHT} - demo_fields
        if agent_fields and agent_fields != {name for name, _, _ in self.item_schema.fields}:
            return "a batch with other fields than the run's items"
        if demo_fields and (self.demo_schema is None or demo_fields != {
                DEMO_PREFIX + name for name, _, _ in self.demo_schema.fields}):
            return "a batch with other demonstration fields than the run's"
        if not agent_fields and not demo_fields:
            return "an empty batch"
        for name, dtype, shape in self.item_schema.fields if agent_fields else ():  # (references: gathered frames)
            if name not in refs and (arrays[name].dtype.str != dtype or arrays[name].shape[1:] != shape):
                return f"a batch whose {name} is not {dtype}{list(shape)}"
        for name, dtype, shape in self.demo_schema.fields if demo_fields else ():
            got = arrays[DEMO_PREFIX + name]
            if got.dtype.str != dtype or got.shape[1:] != shape:
                return f"a batch whose demonstration {name} is not {dtype}{list(shape)}"
        return ""

    def train_on(self, arrays: dict[str, np.ndarray], consumed: dict[str, int]) -> None:
        """One update on a batch's arrays; its priorities back to the table, weights out when due."""
        if self.normalizer:
            arrays = self.normalizer.process_batch(arrays)
        batch = algorithm.to_batch(arrays, self.device)
        update = self.learner.update(batch)
        self.live.train_metrics = update.metrics
        self.trained_on(consumed)
        if self.guard.after_update(update.metrics, self.learner.updates):
            self.live.skipped_updates += 1
            return  # nothing learned: no priorities from it, no weights for it
        if self.learner.updates == 1:
            self.metrics.write("phase", name="first_update")
        if update.priorities is not None:
            self.sampler.send_priorities(batch.ids, update.priorities)
        if self.learner.updates % self.cfg.publish_every == 0:
            self.publish()

    def sync_with_broker(self) -> None:
        """Once a second (and at once when a batch or sample_status came from another broker): the
        broker's stats. Registers again with a broker that lost the run, logs the rates."""
        try:
            stats = self.broker_stats()
        except transport.BrokerUnavailable:  # raised only once we are stopping
            self.stopping = True
            return
        live = self.live
        restarted = live.broker_id is not None and stats.get("broker_id") != live.broker_id
        live.broker_id = stats.get("broker_id")
        if restarted or stats.get("run_id") != self.run_id:
            # Sample requests in flight to the old broker are gone; a broker restored from a
            # snapshot still knows the run (and keeps its table on register).
            log.warning("learner: the broker %s; registering again", "restarted" if restarted
                        else f"does not know run {self.run_id}")
            self.register()
            live.broker_frames = stats["frames"]  # its counter went back to its snapshot's
            return
        self.count_frames(live.broker_id, stats["frames"])
        if live.first_segment is None and stats.get("first_segment_time"):
            live.first_segment = stats["first_segment_time"]
            self.metrics.write("phase", name="first_segment", at=live.first_segment)
        live.stats = stats
        live.measure_rates(self.learner.updates, stats.get("frames_consumed", 0))
        self.metrics.write("train", **live.train_record(self.learner.updates, self.elapsed(), self.weights_version))

    def count_frames(self, broker_id: str | None, broker_frames: int | None) -> None:
        """Add the frames the broker accepted since it last told us (its counter, with each batch
        and each stats reply), as long as it is the broker we registered with; a batch from
        another (restarted) one makes the next broker sync come at once."""
        live = self.live
        if broker_frames is None or broker_id != live.broker_id:
            if live.broker_id is not None and broker_id is not None:
                self.broker_sync.due_now()
            return
        live.count_broker_frames(broker_frames)

    def recover_lost_messages(self, status: dict[str, Any]) -> None:
        """Liveness after a pause or a cut connection (from a sample_status): requests the broker
        never got are sent again, and weights it never got (a PUB drops what it cannot deliver)
        are published again, or synchronous actors would wait for them forever."""
        self.live.resent += self.sampler.resend_lost(status)
        missed = status.get("weights_version", self.weights_version) < self.weights_version
        if missed and time.monotonic() - self.last_publish > 1.0:
            log.warning("learner: the broker missed weights version %d; publishing again", self.weights_version)
            self.publish()

    def checkpoint(self) -> None:
        self.save(self.live.frames, self.elapsed())

    def check_stop_request(self) -> None:
        """RUN_DIR/stop (a callback's, or a user's): end the run as at its budget."""
        reason = callbacks.take_stop_request(self.run_dir)
        if reason is not None:
            self.stop_reason = self.stop_reason or f"stopped: {reason}"

    def evaluation_due(self, now: float) -> bool:
        c, live = self.cfg, self.live
        due = (c.eval_every_frames and live.frames - live.last_eval_frames >= c.eval_every_frames) or (
            c.eval_every_s is not None and now - live.last_eval >= c.eval_every_s)
        return bool(due) and self.learner.updates > 0

    def evaluate_and_record(self) -> None:
        live = self.live
        live.last_eval_frames = live.frames
        mean, std = self.evaluate()
        live.last_eval, live.last_eval_value = time.monotonic(), mean
        self.best_eval = max(self.best_eval, mean)
        self.metrics.write("eval", frames=live.frames, updates=self.learner.updates, elapsed_s=self.elapsed(),
                           mean_return=mean, std_return=std, episodes=self.cfg.eval_episodes)
        if self.target_return is not None and mean >= self.target_return:
            self.stop_reason = f"evaluation reached {mean:.2f} >= {self.target_return}"
            live.reached = (mean, std)  # of the weights we stop with: no second evaluation

    def stop_rule(self) -> str:
        """Why the run stops now ("" to go on): the frame budget or the time limit. (The target
        return stops it from evaluate_and_record, a signal from the handler.)"""
        c = self.cfg
        if self.live.frames >= c.total_steps:
            return f"frame budget of {c.total_steps} reached"
        if c.max_seconds is not None and self.elapsed() >= c.max_seconds:
            return f"time limit of {c.max_seconds} s reached"
        return ""

    def _finish(self) -> dict[str, Any]:
        """Last weights, final evaluation, checkpoint and summary."""
        c, live = self.cfg, self.live
        if not self.stopping:  # the broker's last counters (a short run can end before the first sync)
            self.sync_with_broker()
        lifetime.announce_done()  # `qrl run` stops the actors now, while we checkpoint
        self.publish()
        self.release()
        # Evaluation is deterministic (fixed seeds, greedy actions): when it just reached the target,
        # evaluating the same weights again would give the same numbers one evaluation later.
        final_mean, final_std = live.reached if live.reached is not None else self.evaluate()
        self.best_eval = max(self.best_eval, final_mean)
        elapsed = self.elapsed()
        path = self.save(live.frames, elapsed)
        self.metrics.write("eval", frames=live.frames, updates=self.learner.updates, elapsed_s=elapsed,
                           mean_return=final_mean, std_return=final_std, episodes=c.eval_episodes, final=True)
        summary = {
            "run_id": self.run_id, "algo": self.opts.algo, "env": self.opts.env, "stop_reason": self.stop_reason,
            "frames": live.frames, "updates": self.learner.updates, "elapsed_s": round(elapsed, 2),
            "final_eval_mean": final_mean, "final_eval_std": final_std, "best_eval": self.best_eval,
            "target_return": self.target_return, "wait_fraction": round(live.wait_s / max(elapsed, 1e-9), 4),
            "stale_fraction": round(live.stale_fraction(), 4),
            "weights_version": self.weights_version, "checkpoint": str(path),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


class Periodic:
    """A task run every interval_s seconds between batches (Sample Factory's periodic)."""

    def __init__(self, interval_s: float, task: Callable[[], None]):
        self.interval_s, self.task = interval_s, task
        self.last = time.monotonic()

    def due_now(self) -> None:
        self.last = -float("inf")

    def maybe_run(self, now: float) -> None:
        if now - self.last >= self.interval_s:
            self.last = now
            self.task()


DEMO_PART_BYTES = 16 << 20
"""The demonstration table travels to the broker in messages of about this size."""
RUN_HELD_REPORT_S = 10.0
"""How often a learner waiting for another run's learner to let go of the broker says so."""
RATE_WINDOW_S = 20.0
"""The live line's and the metrics' rates are averages over this long."""


@dataclass
class LiveCounters:
    """What the learner's loop counts while it runs (a checkpoint keeps only frames and time)."""

    frames: int  # env frames of the run, across restarts of this learner
    last_eval_frames: int
    started: float = dataclasses.field(default_factory=time.monotonic)
    wait_s: float = 0.0  # waiting for batches
    refusals: int = 0  # sample requests refused in a row
    resent: int = 0  # sample requests lost with a dropped connection and sent again
    skipped_updates: int = 0  # updates whose gradient was not finite: skipped (qrl/guard.py)
    foreign_batches: int = 0  # batches not of this run or item schema: dropped
    broker_id: str | None = None
    broker_frames: int = 0  # the highest frame counter the broker reported; it restarts with the broker
    first_segment: float | None = None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # the broker's, last seen
    train_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # of the last update
    last_eval: float = dataclasses.field(default_factory=time.monotonic)
    last_eval_value: float | None = None
    reached: tuple[float, float] | None = None  # (mean, std) of the evaluation that reached the target
    updates_per_s: float = 0.0
    frames_per_s: float = 0.0
    consumed_per_s: float = 0.0
    rate_marks: collections.deque = dataclasses.field(default_factory=collections.deque)
    """(time, updates, frames, frames consumed) of the syncs of the last RATE_WINDOW_S seconds."""

    def count_broker_frames(self, broker_frames: int) -> None:
        """The broker's frame counter, as a batch, a sample_status or the stats reported it. The
        three come on different sockets and at different times, so an older (lower) report can
        follow a newer one: only an advance counts, or the frames in between would count twice."""
        if broker_frames > self.broker_frames:
            self.frames += broker_frames - self.broker_frames
            self.broker_frames = broker_frames

    def mark_rates(self, updates: int, consumed: int) -> None:
        """Where the next rates are measured from."""
        self.rate_marks.clear()
        self.rate_marks.append((time.monotonic(), updates, self.frames, consumed))

    def measure_rates(self, updates: int, consumed: int) -> None:
        """Rates over the last RATE_WINDOW_S seconds: frames arrive a segment at a time (1024 at
        once for 8 envs x 128 steps), so a one-second window shows 0 fps between segments."""
        now = time.monotonic()
        while len(self.rate_marks) > 1 and now - self.rate_marks[1][0] >= RATE_WINDOW_S:
            self.rate_marks.popleft()
        then, updates_then, frames_then, consumed_then = self.rate_marks[0]
        dt = max(now - then, 1e-9)
        self.updates_per_s = (updates - updates_then) / dt
        self.frames_per_s = (self.frames - frames_then) / dt
        self.consumed_per_s = max(0, consumed - consumed_then) / dt
        self.rate_marks.append((now, updates, self.frames, consumed))

    def train_record(self, updates: int, elapsed: float, version: int) -> dict[str, Any]:
        s = self.stats
        return dict(frames=self.frames, updates=updates, elapsed_s=elapsed, frames_per_s=self.frames_per_s,
                    updates_per_s=self.updates_per_s, mean_return_100=s.get("mean_return_100"),
                    episodes=s.get("episodes"), replay_size=s.get("replay_size"), policy_lag=s.get("policy_lag_100"),
                    actors=s.get("actors"),
                    frames_consumed=s.get("frames_consumed"), consumed_per_s=self.consumed_per_s,
                    frames_dropped=s.get("frames_dropped"), weights_version=version,
                    wait_fraction=self.wait_s / max(elapsed, 1e-9), samples_resent=self.resent,
                    foreign_batches=self.foreign_batches, skipped_updates=self.skipped_updates, **self.train_metrics)

    def stale_fraction(self) -> float:
        """Of the frames actors sent, the fraction dropped unused (too stale, or overflowing a queue)."""
        s = self.stats
        dropped = s.get("frames_dropped") or 0
        return dropped / max(1, (s.get("frames") or 0) + (s.get("dropped_stale_frames") or 0))

    def live_frames_per_s(self) -> float:
        """The frame rate since the rate window began, up to now: frames also arrive with batches
        between the once-a-second syncs, and a rate from the last sync alone read 0 while they rose."""
        then, _, frames_then, _ = self.rate_marks[0]
        return (self.frames - frames_then) / max(time.monotonic() - then, 1e-9)

    def status_line(self) -> str:
        s = self.stats
        r100, lag = s.get("mean_return_100"), s.get("policy_lag_100")  # lag: weight versions
        shown = lambda v: "-" if v is None else f"{v:.1f}"
        return (f"{self.live_frames_per_s():,.0f} fps | trained on {self.consumed_per_s:,.0f} fps | "
                f"stale {100 * self.stale_fraction():.0f}% | {self.updates_per_s:,.0f} upd/s | "
                f"return(100) {shown(r100)} | eval {shown(self.last_eval_value)} | "
                f"replay {s.get('replay_size', 0):,} | lag {shown(lag)} | actors {s.get('actors', 0)}"
                + (f" | skipped {self.skipped_updates:,} non-finite updates" if self.skipped_updates else ""))


def run_learner(opts: LearnerOptions, run_cfg: RunConfig, algo_values: dict[str, Any]) -> dict[str, Any]:
    return serve(LearnerProcess(opts, run_cfg, algo_values))


def serve(run: LearnerProcess) -> dict[str, Any]:
    """Run to the end (SIGTERM and SIGINT stop it cleanly: last weights, checkpoint, summary)."""

    def _stop(*_):
        run.stopping = True

    if threading.current_thread() is threading.main_thread():  # (qrl.train may run in any thread)
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    lifetime.announce_ready()  # its settings are accepted: `qrl run` announces the run
    summary = run.run()
    print(f"learner: {summary['stop_reason']}; final evaluation {summary['final_eval_mean']:.2f} "
          f"+/- {summary['final_eval_std']:.2f} over {run.cfg.eval_episodes} episodes after "
          f"{summary['frames']:,} frames and {summary['elapsed_s']:.1f} s; checkpoint {summary['checkpoint']}"
          + _stale_note(summary["stale_fraction"]), flush=True)
    return summary


def _stale_note(fraction: float) -> str:
    """Said at the end when many frames were collected for nothing (the live line shows it too)."""
    if fraction < 0.05:
        return ""
    return (f"; {100 * fraction:.0f}% of the frames sent were dropped unused as stale (fewer actors, or a larger "
            f"max_policy_lag, waste less)")
