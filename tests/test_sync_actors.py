"""Synchronous actors (run.sync_actors) against a real broker, with this test as the learner: an
actor acts ahead of the weights by at most run.sync_lead segments, and acts on once the learner's
weights say it is done with the segment sync_lead before (the `consumed` map)."""

import dataclasses
import time

import pytest
import zmq

from conftest import wait_for
from qrl import algorithm, envs
from qrl.protocol import transport
from qrl.config import build

TOKEN = "token-of-the-test-learner"


class FakeLearner:
    """Registers a PPO run on CartPole with a FIFO table, samples and publishes by hand."""

    def __init__(self, address: str, lead: int):
        self.ctx = zmq.Context()
        self.client = transport.Client(self.ctx, address, "test-learner", timeout_s=5)
        algo = algorithm.load("ppo")
        args = build(algo.Args, {}, "algo")
        obs_space, action_space = envs.spaces("CartPole-v1", {}, [])
        net = algo.make_policy(obs_space, action_space, args)
        self.weights = {k: v.numpy() for k, v in net.state_dict().items()}
        schema = algorithm.item_schema(algo, net, obs_space, action_space, args, num_envs=2, num_steps=8)
        spec = {"run_id": "sync", "algo": "ppo", "env": "CartPole-v1", "args": dataclasses.asdict(args),
                "run": {"num_envs": 2, "segment_length": 8, "seed": 0, "sync_actors": True, "sync_lead": lead}}
        table = {"capacity": 64, "sampler": "fifo", "min_size": 0, "samples_per_insert": 0.0, "max_policy_lag": 100}
        reply = self.client.request("register", {"spec": spec, "table": table, "schema": schema.as_meta(),
                                                 "weights_version": 0, "token": TOKEN}, self.weights, wait_s=10)
        assert reply.type == "ok", reply.meta
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        host, _ = transport.split_address(address)
        self.pub.connect(f"tcp://{host}:{reply.meta['ports']['weights_in']}")

    def segments(self) -> int:
        return self.client.request("get_stats", wait_s=5).meta["segments"]

    def sample(self, items: int) -> dict:
        reply = self.client.request("sample", {"token": TOKEN, "batch_size": items}, wait_s=5)
        assert reply.type == "batch"
        return reply.meta["consumed"]

    def publish(self, version: int, consumed: dict) -> None:
        # A PUB drops what it sends before the broker's subscription arrived: until it shows.
        deadline = time.monotonic() + 10
        while self.client.request("get_weights", wait_s=5).meta["version"] != version:
            assert time.monotonic() < deadline, "weights never reached the broker"
            transport.send(self.pub, "weights", {"version": version, "run_id": "sync", "token": TOKEN,
                                                 "consumed": consumed}, self.weights)
            time.sleep(0.05)

    def close(self) -> None:
        self.client.close()
        self.pub.close()
        self.ctx.destroy(linger=0)


def stays(learner: FakeLearner, segments: int, seconds: float = 1.5) -> None:
    wait_for(lambda: learner.segments() == segments, 30, f"{segments} segments")
    time.sleep(seconds)
    assert learner.segments() == segments, "the actor ran ahead of the weights"


@pytest.mark.parametrize("lead", [0, 1])
def test_a_synchronous_actor_acts_ahead_by_at_most_its_lead(procs, lead):
    _, address = procs.start_broker()
    learner = FakeLearner(address, lead)
    try:
        procs.start("actor", "actor", "--n", "1", "--broker", address)
        stays(learner, 1 + lead)  # the segment with version 0, then `lead` more while "training"
        consumed = learner.sample(2)  # one segment = 2 items (2 envs)
        (incarnation, seq), = consumed.items()
        assert seq == 0
        # Weights that say the learner is done with segment 0 free one more segment (a strict
        # actor, lead 0, waits only for newer weights).
        learner.publish(1, {incarnation: 0})
        stays(learner, 2 + lead)
        if lead:  # newer weights alone free no lead actor (not for CONSUMED_WAIT_S, 10 s)
            learner.publish(2, {})
            stays(learner, 2 + lead)
    finally:
        learner.close()
