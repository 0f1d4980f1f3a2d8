"""The in-process runner: `qrl run --local` and `qrl.train(..., local=True)`.

The same run as `qrl run` (the same Agent, presets, item builder, table and learner loop) in one
process with no sockets, as simple_distributed_rl's Runner.train() beside its train_mp(): actors
fill segments in turn, the segments go into the broker's own table class, and the learner's loop
(qrl/learner.py, the same steps: train, evaluate, checkpoint, stop rule) trains on its batches.
A user can step through an algorithm in a debugger from act() to update().

What differs from the processes, on purpose: acting and learning take turns instead of running
side by side. The table's rate limiter decides the turns: an actor fills a segment while the
table takes inserts, the learner trains while it serves batches (for an unlimited replay ratio:
one segment, then one batch). So a local run is a sequential run of the same algorithm, not a
timing model of the distributed one, and synchronous-actor settings (run.sync_actors) have
nothing to do here: every segment is made with the newest weights.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import numpy as np

from qrl import envs, normalize
from qrl.acting.actor import Acting, actor_seed, load_arrays
from qrl.brokers.tables import (FRAMES, INITIAL_PRIORITY, ReplayTable, SchemaError, demonstration_table, make_table,
                               sample_demonstrations)
from qrl.config import RunConfig
from qrl.learner import LearnerOptions, LearnerProcess, serve
from qrl.acting.segments import SegmentWriter


class TableSampler:
    """The learner's sampling client (qrl/sampling.py) for a table in the same process."""

    def __init__(self, table: ReplayTable):
        self.table = table
        self.priorities_set = 0  # as the broker's stats count priority_updates

    def send_priorities(self, ids: np.ndarray, priorities: np.ndarray) -> None:
        self.priorities_set += self.table.update_priorities(ids, priorities)


class LocalRun(LearnerProcess):
    """A learner run whose broker is a table and whose actors are Acting loops in this process."""

    def __init__(self, opts: LearnerOptions, run_cfg: RunConfig, algo_values: dict[str, Any], actors: int):
        super().__init__(opts, run_cfg, algo_values)
        self.num_actors = actors
        self.next_actor = 0
        self.actors: list[Acting] = []  # built by open()
        self.episode_returns: collections.deque[float] = collections.deque(maxlen=100)

    def open(self) -> None:
        self.table = make_table(self.table_config(), self.cfg.seed, self.item_schema)
        self.demo_table = None
        if self.demo_items is not None:  # as the broker keeps them (its `demos` request)
            total = len(next(iter(self.demo_items.values())))
            self.demo_table = demonstration_table(self.demo_schema, total, self.cfg.seed + 1)
            self.demo_table.insert(self.demo_items)
        self.sampler = TableSampler(self.table)
        run = self.spec()["run"]
        self.policy = self.agent.make_policy(self.obs_space, self.action_space, self.args)
        self.policy.eval()
        self.actor_normalizer = normalize.ActorNormalizer()
        self.actors = [self._actor(i, run) for i in range(self.num_actors)]
        self.publish_locally()

    def _actor(self, actor_id: int, run: dict[str, Any]) -> Acting:
        """Actor i as an actor process would build it: its seed, exploration and segment writer
        (one policy network serves them all, as on a central inference server)."""
        c = self.cfg
        seed = actor_seed(run, actor_id)
        env = envs.make_vector_env(self.opts.env, c.num_envs, c.env_kwargs, c.wrappers)
        core = self.agent.make_core(self.args, actor_id, self.num_actors, c.num_envs, seed)
        writer = SegmentWriter(self.agent, self.args, self.run_id, actor_id, "local", c.num_envs, run)
        return Acting(env, core, writer, self.policy, seed)

    def start_counting(self) -> None:
        pass  # this process's table counts from zero; frames are added as segments are stored

    def close(self) -> None:
        for acting in self.actors:
            acting.env.close()

    def publish(self) -> None:
        weights = self.finite_weights()
        self.weights_version += 1
        self.publish_locally(weights)

    def publish_locally(self, weights: dict[str, np.ndarray] | None = None) -> None:
        load_arrays(self.policy, self.actor_normalizer, self.weights() if weights is None else weights)

    def release(self) -> None:
        pass  # no broker: nothing holds the run

    def train_on_next_batch(self) -> None:
        """Act until the table serves a batch, then train on one (the rate limiter takes turns)."""
        table, (batch_size, demo_batch) = self.table, self.batch_sizes()
        table.drop_stale(self.weights_version)
        while table.limiter.can_insert() or not table.limiter.can_sample(table.size, batch_size):
            self.collect_segment()
            if self.stopping or self.stop_rule() or table.limiter.can_sample(table.size, batch_size):
                break
        if not table.limiter.can_sample(table.size, batch_size):
            return
        beta = self.agent.sample_options(self.args, self.learner.updates).get("beta", 1.0)
        arrays = table.sample_arrays(batch_size, beta) if batch_size else {}
        if demo_batch:
            arrays.update(sample_demonstrations(self.demo_table, demo_batch))
        self.train_on(arrays, {})

    def collect_segment(self) -> None:
        """The next actor in turn fills a segment with the newest weights; its items go into the table."""
        acting = self.actors[self.next_actor]
        self.next_actor = (self.next_actor + 1) % len(self.actors)
        acting.writer.policy_version = self.weights_version
        acting.fill_segment(self.actor_normalizer)
        meta, items = acting.writer.segment()
        acting.writer.mark_sent()
        items = dict(items)
        priorities = items.pop(INITIAL_PRIORITY, None)
        pool = items.pop(FRAMES, None)
        stream = (meta["actor_id"], meta["incarnation"])
        try:
            n_items = self.table.check(items, priorities, frames=meta["frames"], pool=pool, stream=stream,
                                       seq=meta["seq"])
        except SchemaError as exc:  # the broker would drop it; here it is the env's values or the algorithm's bug
            hint = " (raise run.value_limit if these values are real)" if exc.reason == "out_of_bounds" else ""
            raise RuntimeError(f"{self.opts.algo}: a segment does not fit the table: {exc}{hint}") from None
        self.table.store(items, n_items, priorities, version=self.weights_version, pool=pool, stream=stream,
                         seq=meta["seq"])
        self.live.frames += meta["frames"]
        self.episode_returns.extend(meta["episode_returns"])

    def sync_with_broker(self) -> None:
        """Once a second, as the learner process does with the broker's stats: the train record."""
        live = self.live
        live.stats = {"mean_return_100": float(np.mean(self.episode_returns)) if self.episode_returns else None,
                      "replay_size": self.table.size, "actors": len(self.actors),
                      "frames_consumed": self.table.limiter.sampled * self.table.frames_per_item}
        live.measure_rates(self.learner.updates, live.stats["frames_consumed"])
        self.metrics.write("train", **live.train_record(self.learner.updates, self.elapsed(), self.weights_version))


def run_in_process(opts: LearnerOptions, run_cfg: RunConfig, algo_values: dict[str, Any],
                   actors: int, on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train in this process; the summary a learner process writes too (summary.json). on_tick:
    called a few times a second between batches (the Python API's callbacks)."""
    run = LocalRun(opts, run_cfg, algo_values, actors)
    run.on_tick = on_tick
    return serve(run)
