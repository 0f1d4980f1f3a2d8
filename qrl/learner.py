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
import itertools
import json
import logging
import secrets
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from qrl import algorithm, checkpoint, eager, envs, lifetime, transport, wire
from qrl.evaluation import run_episodes
from qrl.brokers.tables import TableConfig
from qrl.config import RunConfig, build, to_dict, to_yaml
from qrl.messages import MAX_ACTORS_CONSUMED
from qrl.metrics import MetricsWriter, ProgressView
from qrl.normalize import Normalizer

log = logging.getLogger("qrl.learner")

LOST_AFTER_S = 2.0
"""A sample request older than this that the broker does not hold, on two stats checks in a row,
was lost with a dropped connection (broker paused past the heartbeat timeout, connection cut):
it is sent again. Requests sent before a disconnection that the sample socket's monitor reported
are looked for at once (see LearnerRun.resend_lost_samples)."""


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


class LearnerRun:
    def __init__(self, opts: LearnerOptions, run_cfg: RunConfig, algo_values: dict[str, Any]):
        self.opts = opts
        self.run_dir = Path(opts.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        envs.check_env_id(opts.env)
        self.agent = algorithm.load(opts.algo)
        saved = checkpoint.load(self.run_dir, require=("learner", "config", "counters")) if opts.resume else None
        if saved is not None:  # a resumed run keeps the config it started with
            config = json.loads(saved["config"])
            run_cfg = build(RunConfig, config["run"], "run")
            algo_values = config["args"]
        self.cfg = run_cfg
        torch.set_num_threads(run_cfg.learner_threads)
        eager.skip_compiler_import()  # before the algorithm builds its optimizers
        self.args = build(self.agent.Args, algo_values, "algo")
        self.agent.table_config(self.args).validate(self.args.batch_size)
        if opts.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(opts.device)
        self.obs_space, self.action_space = envs.spaces(opts.env, run_cfg.env_kwargs, run_cfg.wrappers)
        self.learner = self.agent.Learner(self.obs_space, self.action_space, self.args, self.device)
        self.normalizer = None
        if run_cfg.normalize_obs or run_cfg.normalize_reward:
            self.normalizer = Normalizer(self.obs_space.shape, run_cfg.normalize_obs, run_cfg.normalize_reward)
        self.eval_net = self.agent.make_policy(self.obs_space, self.action_space, self.args)
        self.item_schema = algorithm.item_schema(self.agent, self.eval_net, self.obs_space, self.action_space,
                                                 self.args, run_cfg.num_envs, run_cfg.segment_length)
        self.target_return = run_cfg.target_return
        if self.target_return is None:
            self.target_return = envs.spec(opts.env).reward_threshold

        # Counters that a checkpoint carries across restarts.
        self.run_id = uuid.uuid4().hex[:12]
        # The run's secret: the broker takes weights, and a second register of this run, only with
        # it. Kept in the checkpoint, so a restarted learner holds the run again.
        self.token = secrets.token_hex(16)
        self.version = 0
        self.frames_before = 0  # env frames counted by earlier incarnations of this run
        self.elapsed_before = 0.0
        self.best_eval = -float("inf")
        if saved is not None:
            self.learner.load_state_dict(saved["learner"])
            if self.normalizer is not None and "normalizer" in saved:
                self.normalizer.load_state(saved["normalizer"])
            c = saved["counters"]
            self.run_id, self.version = c["run_id"], c["version"] + 1
            self.token = c.get("token", self.token)
            self.frames_before, self.elapsed_before = c["frames"], c["elapsed_s"]
            self.best_eval = c["best_eval"]
            log.info("learner: resumed run %s at update %d, weights version %d", self.run_id,
                     self.learner.updates, self.version)
        self.config_json = json.dumps({"algo": opts.algo, "env": opts.env, "run": to_dict(self.cfg),
                                       "args": dataclasses.asdict(self.args)}, indent=2)
        (self.run_dir / "config.json").write_text(self.config_json)
        # The same, as a preset: `qrl run --config RUN_DIR/config.yaml` reruns it.
        (self.run_dir / "config.yaml").write_text(to_yaml(opts.algo, opts.env, self.cfg, self.args))
        self.stopping = False
        self.stop_reason = ""
        # Synchronous actors: incarnation -> its last segment this learner is done with (trained
        # on, or dropped by the broker), most recent last; sent with the weights (RunConfig.sync_lead).
        self.consumed: collections.OrderedDict[str, int] = collections.OrderedDict()

    # -- broker plumbing --------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        c = self.cfg
        return {"run_id": self.run_id, "algo": self.opts.algo, "env": self.opts.env,
                "env_kwargs": c.env_kwargs, "wrappers": c.wrappers,
                "args": dataclasses.asdict(self.args),
                "run": {"num_envs": c.num_envs, "segment_length": c.segment_length, "seed": c.seed,
                        "sync_actors": c.sync_actors, "sync_lead": c.sync_lead}}

    def connect(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self.client = transport.Client(ctx, self.opts.broker, "learner")
        self.pub = self.sampler = None
        self._sample_reqs = itertools.count(1)
        self.samples_resent = 0
        self.last_publish = time.monotonic()
        self.register()

    def table_config(self) -> TableConfig:
        """The algorithm's table; one that states no policy-lag bound gets the run's (flow control:
        the broker drops segments made by older weights than that)."""
        table = self.agent.table_config(self.args)
        if table.max_policy_lag is None:
            table = dataclasses.replace(table, max_policy_lag=self.cfg.max_policy_lag)
        return table

    def register(self) -> None:
        """Register the run (spec, table, current weights) and open fresh publish and sample sockets.
        Called again when the broker no longer knows the run (it restarted)."""
        reply = self.client.request(
            "register",
            {"spec": self.spec(), "table": self.table_config().as_meta(), "schema": self.item_schema.as_meta(),
             "weights_version": self.version, "token": self.token},
            self.weights(), wait_s=None, report=log.warning, should_stop=lambda: self.stopping,
        )
        if reply.type != "ok":
            raise RuntimeError(f"broker refused the run: {reply.meta.get('reason')}")
        host, _ = transport.split_address(self.opts.broker)
        if self.sampler is not None:
            self.sampler.disable_monitor()
            self.sampler_events.close(linger=0)
        for sock in (self.pub, self.sampler):
            if sock is not None:
                sock.close(linger=0)
        self.pub = transport.socket(self.ctx, zmq.PUB, linger_ms=1000)
        self.pub.connect(f"tcp://{host}:{reply.meta['ports']['weights_in']}")
        # Requests in flight to a broker that restarted are gone: a new socket starts a new window.
        # A fixed routing id: when a heartbeat timeout (broker paused) or a cut makes libzmq
        # reconnect this socket, the broker (ROUTER_HANDOVER) sends the batches for the requests
        # it holds to the new connection instead of dropping them.
        self.sampler = transport.socket(self.ctx, zmq.DEALER)
        self.sampler_id = f"sampler-{uuid.uuid4().hex}"
        self.sampler.setsockopt(zmq.ROUTING_ID, self.sampler_id.encode())
        # Disconnections of the sample socket, so requests sent on a connection that died are
        # looked for at the next stats check instead of after LOST_AFTER_S.
        self.sampler_events = self.sampler.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.sampler.connect(self.opts.broker)
        self.outstanding: dict[int, float] = {}  # sample request id -> when it was sent
        self.suspect_lost: set[int] = set()
        self.disconnected_at = -1.0
        for _ in range(self.cfg.samples_in_flight):
            self.request_sample(self.args.batch_size)

    def request_sample(self, batch_size: int) -> None:
        # Algorithms with prioritized replay anneal the importance-sampling exponent (beta).
        options = self.agent.sample_options(self.args, self.learner.updates)
        req = next(self._sample_reqs)
        transport.send(self.sampler, "sample", {"batch_size": batch_size, "req": req, **options})
        self.outstanding[req] = time.monotonic()

    def answered(self, reply: wire.Message) -> bool:
        """Take a batch or refusal off the books; False for one whose request was already sent
        again (its replacement keeps the window full, so it asks for no new sample)."""
        return self.outstanding.pop(reply.meta.get("req"), None) is not None

    def resend_lost_samples(self, held_by_broker: list[int]) -> None:
        """Send again the sample requests the broker has not got. A request sent before the sample
        socket last lost its connection is lost if the broker does not hold it; any other only
        when it is older than LOST_AFTER_S and missing on two checks in a row, so a batch still
        on its way is not taken for a lost request (one that arrives late anyway is used and not
        replaced, see answered)."""
        now = time.monotonic()
        while self.sampler_events.poll(0):
            self.sampler_events.recv_multipart()  # a monitor event: [event id + value, endpoint]
            self.disconnected_at = now
        if self.sampler.poll(0, zmq.POLLIN):  # replies wait to be read: nothing is stalled
            self.suspect_lost.clear()
            return
        held = set(held_by_broker)
        missing = {r for r, t in self.outstanding.items()
                   if r not in held and (t < self.disconnected_at or now - t > LOST_AFTER_S)}
        on_dead_connection = {r for r in missing if self.outstanding[r] < self.disconnected_at}
        lost = (missing & self.suspect_lost) | on_dead_connection
        self.suspect_lost = missing - lost
        if not lost:
            return
        log.warning("learner: %d sample request(s) lost on the way to the broker (connection dropped); sent again",
                    len(lost))
        for r in lost:
            del self.outstanding[r]
            self.request_sample(self.args.batch_size)
        self.samples_resent += len(lost)

    def weights(self) -> dict[str, np.ndarray]:
        """What actors load: the policy's arrays, plus the observation statistics when normalizing."""
        return {**self.learner.policy_state(), **(self.normalizer.arrays() if self.normalizer else {})}

    def publish(self) -> None:
        self.version += 1
        self.last_publish = time.monotonic()
        meta = {"version": self.version, "run_id": self.run_id, "token": self.token}
        if self.cfg.sync_actors and self.cfg.sync_lead > 0:
            meta["consumed"] = dict(self.consumed)
        transport.send(self.pub, "weights", meta, self.weights())

    def trained_on(self, consumed: dict[str, int]) -> None:
        """Note the segments of the batch just trained on (and those the broker dropped)."""
        for incarnation, seq in consumed.items():
            self.consumed[incarnation] = max(seq, self.consumed.pop(incarnation, -1))
        while len(self.consumed) > MAX_ACTORS_CONSUMED:
            self.consumed.popitem(last=False)

    def broker_stats(self) -> dict[str, Any]:
        reply = self.client.request("get_stats", {"sampler": self.sampler_id}, wait_s=None, report=log.warning,
                                    should_stop=lambda: self.stopping)
        return reply.meta

    # -- the loop ---------------------------------------------------------------------------------

    def evaluate(self) -> tuple[float, float]:
        self.eval_net.load_state_dict({k: torch.from_numpy(v) for k, v in self.learner.policy_state().items()})
        mean, std, _ = run_episodes(self.agent, self.args, self.eval_net, self.opts.env, self.cfg.eval_episodes,
                                    seed=self.cfg.seed + 7, env_kwargs=self.cfg.env_kwargs,
                                    wrappers=self.cfg.wrappers,
                                    normalize_obs=self.normalizer.normalize_obs if self.normalizer else None)
        return mean, std

    def save(self, frames: int, elapsed: float) -> Path:
        return checkpoint.save(self.run_dir, {
            "learner": self.learner.state_dict(),
            "normalizer": self.normalizer.state() if self.normalizer else {},
            "counters": {"run_id": self.run_id, "token": self.token, "version": self.version, "frames": frames,
                         "elapsed_s": elapsed, "best_eval": self.best_eval},
            "config": self.config_json,
        })

    def run(self) -> dict[str, Any]:
        ctx = zmq.Context()
        metrics = MetricsWriter(self.run_dir, tensorboard=self.opts.tensorboard)
        try:
            self.connect(ctx)
            metrics.write("phase", name="registered")  # start-up phases: scripts/bench_overhead.py
            return self._loop(metrics)
        finally:
            metrics.close()
            ctx.destroy(linger=200)  # the last weights go out at once on loopback; a gone broker gets none

    def _loop(self, metrics: MetricsWriter) -> dict[str, Any]:
        c = self.cfg
        batch_size = self.args.batch_size
        start = time.monotonic()
        elapsed = lambda: self.elapsed_before + time.monotonic() - start
        frames = self.frames_before
        refusals = 0
        broker_frames = 0  # the broker's frame counter at the last stats; it restarts with the broker
        broker_id = None
        stats: dict[str, Any] = {}
        wait_s = 0.0
        last_stats = last_eval = last_ckpt = time.monotonic()
        last_updates, last_frames, rate_t = self.learner.updates, frames, time.monotonic()
        updates_per_s = frames_per_s = consumed_per_s = 0.0
        last_consumed = 0
        last_eval_value: float | None = None
        last_eval_frames = frames
        train_metrics: dict[str, float] = {}
        reached: tuple[float, float] | None = None
        first_segment = None
        with ProgressView(c.total_steps, self.opts.progress) as view:
            while not self.stopping:
                t0 = time.monotonic()
                raw = transport.recv_frames(self.sampler, 100)
                wait_s += time.monotonic() - t0
                if raw is not None:
                    reply = wire.decode(raw)
                    if reply.type == "ok":  # an update_priorities acknowledgement, not a batch
                        continue
                    if self.answered(reply):
                        self.request_sample(batch_size)
                    if reply.type == "batch":
                        refusals = 0
                        batch = self.normalizer.process_batch(reply.arrays) if self.normalizer else reply.arrays
                        train_metrics = self.learner.update(batch)
                        self.trained_on(reply.meta.get("consumed") or {})
                        if self.learner.updates == 1:
                            metrics.write("phase", name="first_update")
                        priorities = train_metrics.pop("_priorities", None)
                        if priorities is not None:  # prioritized replay: new priorities by item id
                            transport.send(self.sampler, "update_priorities", {},
                                           {"ids": np.ascontiguousarray(reply.arrays["_id"]),
                                            "priorities": np.asarray(priorities, dtype=np.float64)})
                        if self.learner.updates % c.publish_every == 0:
                            self.publish()
                    elif reply.type == "error":  # e.g. a restarted broker without our table
                        refusals += 1
                        if refusals > 10:
                            raise RuntimeError(f"broker refused sample requests: {reply.meta.get('reason')}")
                        log.warning("learner: broker refused a sample request: %s", reply.meta.get("reason"))
                        last_stats = 0.0  # check at once whether the broker still knows the run
                now = time.monotonic()
                if now - last_stats >= 1.0:
                    try:
                        stats = self.broker_stats()
                    except transport.BrokerUnavailable:  # raised only once we are stopping
                        break
                    restarted = broker_id is not None and stats.get("broker_id") != broker_id
                    broker_id = stats.get("broker_id")
                    if restarted or stats.get("run_id") != self.run_id:
                        # Sample requests in flight to the old broker are gone; a broker restored
                        # from a snapshot still knows the run (and keeps its table on register).
                        log.warning("learner: the broker %s; registering again", "restarted" if restarted
                                    else f"does not know run {self.run_id}")
                        self.register()
                        broker_frames = stats["frames"]  # its counter went back to its snapshot's
                        continue
                    frames += max(0, stats["frames"] - broker_frames)
                    broker_frames = stats["frames"]
                    if first_segment is None and stats.get("first_segment_time"):
                        first_segment = stats["first_segment_time"]
                        metrics.write("phase", name="first_segment", at=first_segment)
                    # Liveness after a pause or a cut connection: requests the broker never got are
                    # sent again, and weights it never got (a PUB drops what it cannot deliver) are
                    # published again, or synchronous actors would wait for them forever.
                    if "sampler_pending" in stats:  # without it every held request would look lost
                        self.resend_lost_samples(stats["sampler_pending"])
                    if stats.get("weights_version", self.version) < self.version and now - self.last_publish > 1.0:
                        log.warning("learner: the broker missed weights version %d; publishing again", self.version)
                        self.publish()
                    dt = now - rate_t
                    updates_per_s = (self.learner.updates - last_updates) / dt
                    frames_per_s = (frames - last_frames) / dt
                    consumed = stats.get("frames_consumed", 0)
                    consumed_per_s = max(0, consumed - last_consumed) / dt
                    last_updates, last_frames, last_consumed, rate_t = self.learner.updates, frames, consumed, now
                    last_stats = now
                    metrics.write("train", frames=frames, updates=self.learner.updates, elapsed_s=elapsed(),
                                  frames_per_s=frames_per_s, updates_per_s=updates_per_s,
                                  mean_return_100=stats.get("mean_return_100"), replay_size=stats.get("replay_size"),
                                  policy_lag=stats.get("policy_lag_100"), actors=stats.get("actors"),
                                  frames_consumed=stats.get("frames_consumed"), consumed_per_s=consumed_per_s,
                                  frames_dropped=stats.get("frames_dropped"),
                                  weights_version=self.version, wait_fraction=wait_s / max(elapsed(), 1e-9),
                                  samples_resent=self.samples_resent,
                                  **train_metrics)
                eval_due = (c.eval_every_frames and frames - last_eval_frames >= c.eval_every_frames) or (
                    c.eval_every_s is not None and now - last_eval >= c.eval_every_s)
                if eval_due and self.learner.updates > 0:
                    last_eval_frames = frames
                    mean, std = self.evaluate()
                    last_eval, last_eval_value = time.monotonic(), mean
                    self.best_eval = max(self.best_eval, mean)
                    metrics.write("eval", frames=frames, updates=self.learner.updates, elapsed_s=elapsed(),
                                  mean_return=mean, std_return=std, episodes=c.eval_episodes)
                    if self.target_return is not None and mean >= self.target_return:
                        self.stop_reason = f"evaluation reached {mean:.2f} >= {self.target_return}"
                        reached = (mean, std)  # of the weights we stop with: no second evaluation
                        break
                if now - last_ckpt >= c.checkpoint_every_s:
                    self.save(frames, elapsed())
                    last_ckpt = now
                if frames >= c.total_steps:
                    self.stop_reason = f"frame budget of {c.total_steps} reached"
                    break
                if c.max_seconds is not None and elapsed() >= c.max_seconds:
                    self.stop_reason = f"time limit of {c.max_seconds} s reached"
                    break
                r100, lag = stats.get("mean_return_100"), stats.get("policy_lag_100")  # lag: weight versions
                view.update(frames, (
                    f"{frames_per_s:,.0f} fps | trained on {consumed_per_s:,.0f} fps | {updates_per_s:,.0f} upd/s | "
                    f"return(100) {'-' if r100 is None else f'{r100:.1f}'} | "
                    f"eval {'-' if last_eval_value is None else f'{last_eval_value:.1f}'} | "
                    f"replay {stats.get('replay_size', 0):,} | "
                    f"lag {'-' if lag is None else f'{lag:.1f}'} | "
                    f"actors {stats.get('actors', 0)}"
                ))
        if self.stopping and not self.stop_reason:
            self.stop_reason = "stopped by signal"
        lifetime.announce_done()  # `qrl run` stops the actors now, while we checkpoint
        self.publish()
        # Evaluation is deterministic (fixed seeds, greedy actions): when it just reached the target,
        # evaluating the same weights again would give the same numbers one evaluation later.
        final_mean, final_std = reached if reached is not None else self.evaluate()
        self.best_eval = max(self.best_eval, final_mean)
        path = self.save(frames, elapsed())
        metrics.write("eval", frames=frames, updates=self.learner.updates, elapsed_s=elapsed(),
                      mean_return=final_mean, std_return=final_std, episodes=c.eval_episodes, final=True)
        summary = {
            "run_id": self.run_id, "algo": self.opts.algo, "env": self.opts.env, "stop_reason": self.stop_reason,
            "frames": frames, "updates": self.learner.updates, "elapsed_s": round(elapsed(), 2),
            "final_eval_mean": final_mean, "final_eval_std": final_std, "best_eval": self.best_eval,
            "target_return": self.target_return, "wait_fraction": round(wait_s / max(elapsed(), 1e-9), 4),
            "weights_version": self.version, "checkpoint": str(path),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def run_learner(opts: LearnerOptions, run_cfg: RunConfig, algo_values: dict[str, Any]) -> dict[str, Any]:
    run = LearnerRun(opts, run_cfg, algo_values)

    def _stop(*_):
        run.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    summary = run.run()
    print(f"learner: {summary['stop_reason']}; final evaluation {summary['final_eval_mean']:.2f} "
          f"+/- {summary['final_eval_std']:.2f} over {run.cfg.eval_episodes} episodes after "
          f"{summary['frames']:,} frames and {summary['elapsed_s']:.1f} s; checkpoint {summary['checkpoint']}",
          flush=True)
    return summary
