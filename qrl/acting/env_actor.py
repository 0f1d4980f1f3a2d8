"""Env-only actors (central inference, SEED style): `qrl actor --n N --inference ADDR`.

Each worker steps its synchronous vector env and asks an inference server (`qrl inference`,
qrl/acting/inference.py) for every step's actions: it sends the observations, and with them the
rewards, episode ends and final observations of the step before. The server keeps the policy,
the exploration and recurrent state, builds the items and pushes the segments. A worker here holds
no policy and imports no torch (tests/test_inference.py checks its memory maps), so 32 of them
cost a fraction of 32 policy-running actors, and an environment written in another language needs
only ZeroMQ and msgpack (docs/protocol.md, "Central inference").

A request that gets no answer within ActorConfig.inference_timeout_s is sent again: a live server
recognises the repeat by its step number and answers once; a restarted server does not know the
actor and says so, and the worker greets it again with `resume` and carries on with the episodes
under way (only the unfinished segment the old server held is lost).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from typing import Any

import numpy as np
import zmq

from qrl import envs
from qrl.protocol import transport, wire
from qrl.acting.supervisor import ActorConfig, RunChanged, Stop, Supervisor, run_supervised, run_worker

log = logging.getLogger("qrl.actor")


class InferenceRefused(RuntimeError):
    """The inference server answered with an error this worker cannot act on."""


class EnvWorker:
    def __init__(self, cfg: ActorConfig, actor_id: int):
        self.cfg, self.actor_id = cfg, actor_id
        self.role = f"env actor {actor_id}"
        self.incarnation = uuid.uuid4().hex[:16]
        self.stopping = False
        self.steps = 0  # vector-env steps taken
        self.resumes = 0  # greetings after the first (a restarted inference server)
        self.req = 0  # the last request's id
        self.retries = 0  # requests sent again after inference_timeout_s without an answer
        self.stream_token: str | None = None  # from the server's env_config

    def should_stop(self) -> bool:
        return self.stopping

    def summary(self) -> str:
        return (f"incarnation {self.incarnation} took {self.steps} steps, resumed {self.resumes} times, "
                f"sent {self.retries} requests again")

    def run(self) -> None:
        self.ctx = zmq.Context()
        try:
            self._run()
        finally:
            self.ctx.destroy(linger=0)

    def _ident(self) -> dict[str, Any]:
        ident = {"actor_id": self.actor_id, "incarnation": self.incarnation}
        return ident if self.stream_token is None else {**ident, "token": self.stream_token}

    def _request(self, msg_type: str, meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
                 give_up_s: float | None = None) -> wire.Message:
        """Send a request and return its reply, sending it again every inference_timeout_s (a new
        request id each time: a late reply to an earlier try is dropped) and looking at the stop flag
        every 50 ms. One socket throughout: ZeroMQ reconnects it to a restarted server by itself."""
        start = last_report = time.monotonic()
        while True:
            if time.monotonic() - last_report >= transport.REPORT_EVERY_S:  # never a silent wait
                last_report = time.monotonic()
                log.warning("%s: waiting for the inference server at %s to answer (%.0f s): it is away, or it "
                            "holds this actor back (no credit from the broker yet, or sync_actors waiting for "
                            "weights)", self.role, self.cfg.inference, last_report - start)
            self.req += 1
            transport.send(self.sock, msg_type, {**self._ident(), **meta, "req": self.req}, arrays)
            deadline = time.monotonic() + self.cfg.inference_timeout_s
            while time.monotonic() < deadline:
                waited = time.monotonic() - start
                if (self.stopping and give_up_s is None) or (give_up_s is not None and waited > give_up_s):
                    raise Stop
                frames = transport.recv_frames(self.sock, 50)
                if frames is None:
                    continue
                reply = wire.decode(frames)
                if reply.meta.get("req") == self.req:
                    return reply
            self.retries += 1

    def _hello(self, resume: bool) -> dict[str, Any]:
        """The run's environment settings for this actor, waiting while the server has no run."""
        start = last = time.monotonic()
        while True:
            reply = self._request("env_hello", {"resume": resume})
            if reply.type == "env_config":
                self.stream_token = reply.meta["token"]  # every step of the stream carries it
                return reply.meta
            held = reply.type == "error" and reply.meta.get("reason") == "stream_held"  # our previous process's
            if reply.type != "not_ready" and not held:
                raise InferenceRefused(f"the inference server refused the greeting: {reply.meta.get('reason')}: "
                                       f"{reply.meta.get('detail')}")
            if time.monotonic() - last > transport.REPORT_EVERY_S:
                last = time.monotonic()
                why = reply.meta.get("detail") if held else "the inference server to get a run"
                log.warning("%s: waiting for %s (%.0f s)", self.role, why, last - start)
            time.sleep(0.5 if held else 0.05)

    def _run(self) -> None:
        self.sock = transport.socket(self.ctx, zmq.DEALER)
        self.sock.connect(self.cfg.inference)
        config = self._hello(resume=False)
        envs.check_spec_allowed(config["env"], config.get("wrappers") or (), self.cfg.allow_envs,
                                self.cfg.allow_wrappers)
        run_id, num_envs = config["run_id"], config["num_envs"]
        env = envs.make_vector_env(config["env"], num_envs, config.get("env_kwargs"), config.get("wrappers") or (),
                                   self.cfg.vector_env, self.cfg.vector_threads)
        log.info("%s: stepping %s x%d for the inference server at %s", self.role, config["env"], num_envs,
                 self.cfg.inference)
        obs, _ = env.reset(seed=config["seed"])
        step, results = 0, {}
        try:
            while not self.stopping:
                reply = self._request("env_step", {"step": step}, {"obs": obs, **results})
                if reply.type == "not_ready" or reply.type == "error" and reply.meta.get("reason") == "unknown_actor":
                    # A restarted server (or one that freed us after a long silence): greet it again
                    # and go on with the episodes under way; its first step is this observation.
                    self.resumes += 1
                    config = self._hello(resume=True)
                    if config["run_id"] != run_id:
                        raise RunChanged(f"the inference server now serves run {config['run_id']}")
                    log.warning("%s: resumed with the inference server", self.role)
                    step, results = 0, {}
                    continue
                if reply.type != "env_actions":
                    raise InferenceRefused(f"the inference server refused step {step}: "
                                           f"{reply.meta.get('reason')}: {reply.meta.get('detail')}")
                actions = reply.arrays.get("actions")
                if actions is None or len(actions) != num_envs:
                    raise InferenceRefused(f"the inference server sent no action for each of the {num_envs} envs")
                obs, reward, terminated, truncated, info = env.step(actions)
                results = {"reward": np.asarray(reward, np.float32), "terminated": terminated, "truncated": truncated}
                if "lives" in info:  # for run.episodic_life
                    results["lives"] = np.asarray(info["lives"], np.int64)
                done = terminated | truncated
                if done.any():
                    index = np.flatnonzero(done)
                    results["final_index"] = index.astype(np.int64)
                    results["final_obs"] = np.stack([info["final_obs"][i] for i in index])
                step += 1
                self.steps += 1
        finally:
            env.close()
            if self.stopping:  # the server frees our state now instead of after its idle timeout
                try:
                    self._request("env_bye", {}, give_up_s=0.3)
                except Stop:
                    pass


def run_env_actors(cfg: ActorConfig) -> None:
    run_supervised(Supervisor(cfg, functools.partial(run_worker, "env actor", EnvWorker)))
