"""Central inference: `qrl inference` serving env-only actors, with real processes on loopback.

The server acts exactly as each actor's own core would (same actions, same recurrent states, reset
at episode starts), rejects bad messages with a reason and keeps serving, and a run survives the
server and an env actor being killed, with no duplicate or refused segment at the broker."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from qrl import algorithm, envs
from qrl.protocol import wire
from qrl.acting.actor import actor_seed
from qrl.config import build
from qrl.protocol.transport import Client, free_port_block
from conftest import wait_for

pytestmark = pytest.mark.slow

RUN = {"num_envs": 2, "segment_length": 4, "seed": 7}


def register_run(client, algo: str, env: str, args_values: dict, run: dict = RUN):
    """Register a run at the broker as a learner would; return (agent, args, net)."""
    agent = algorithm.load(algo)
    args = build(agent.Args, args_values, "algo")
    obs_space, action_space = envs.spaces(env)
    net = agent.make_policy(obs_space, action_space, args)
    net.eval()
    schema = algorithm.item_schema(agent, net, obs_space, action_space, args, run["num_envs"], run["segment_length"])
    spec = {"run_id": "r1", "algo": algo, "env": env, "env_kwargs": None, "wrappers": [],
            "args": dataclasses.asdict(args), "run": run}
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    reply = client.request("register", {"spec": spec, "table": agent.table_config(args).as_meta(),
                                        "schema": schema.as_meta(), "weights_version": 0, "token": "t" * 32},
                           weights, wait_s=10)
    assert reply.type == "ok", reply.meta
    return agent, args, net


def start_inference(procs, broker_address: str, port: int, *extra: str, name: str = "inference"):
    return procs.start(name, "inference", "--broker", broker_address, "--bind", f"tcp://127.0.0.1:{port}", *extra)


class EnvActor:
    """An env-only actor driven by hand: the protocol of docs/protocol.md, nothing else."""

    def __init__(self, ctx, address: str, actor_id: int, incarnation: str = "hand"):
        self.client = Client(ctx, address, f"env {actor_id}", timeout_s=5.0)
        self.ident = {"actor_id": actor_id, "incarnation": incarnation}
        self.step = 0

    def request(self, msg_type: str, meta=None, arrays=None) -> wire.Message:
        return self.client.request(msg_type, {**self.ident, **(meta or {})}, arrays, wait_s=30)

    def hello(self) -> dict:
        for _ in range(200):
            reply = self.request("env_hello")
            if reply.type == "env_config":
                self.ident["token"] = reply.meta["token"]  # the stream's: its steps carry it
                return reply.meta
            time.sleep(0.05)
        raise AssertionError(f"no env_config: {reply.type} {reply.meta}")

    def send(self, obs, reward=None, terminated=None, truncated=None, final_obs=None) -> wire.Message:
        arrays = {"obs": obs}
        if reward is not None:
            arrays.update(reward=reward, terminated=terminated, truncated=truncated)
            done = np.flatnonzero(terminated | truncated)
            if len(done):
                arrays.update(final_index=done.astype(np.int64), final_obs=final_obs[done])
        reply = self.request("env_step", {"step": self.step}, arrays)
        if reply.type == "env_actions":
            self.step += 1
        return reply


def test_the_server_acts_as_each_actors_own_core_would(procs, broker, client, ctx):
    """Two env actors through one server, a recurrent PPO policy: every action and every recurrent
    state in the pushed items equals what each actor's own core computes from the same observations,
    the state carries across requests and resets where an episode starts."""
    agent, args, net = register_run(client, "ppo", "CartPole-v1", {"lstm": 8})
    port = free_port_block(1)
    start_inference(procs, broker.address(), port)
    address = f"tcp://127.0.0.1:{port}"
    n, T, segments = RUN["num_envs"], RUN["segment_length"], 3
    steps = segments * T + 1  # the last request delivers the outcome of the third segment's last step
    rng = np.random.default_rng(0)
    actors = {0: EnvActor(ctx, address, 0), 3: EnvActor(ctx, address, 3)}
    obs = {a: rng.normal(size=(steps, n, 4)).astype(np.float32) for a in actors}
    terminated = {a: np.zeros((steps, n), bool) for a in actors}
    terminated[0][5, 1] = True  # env 1 of actor 0 ends an episode at step 5: obs[6] starts a new one
    terminated[3][2, 0] = True
    got = {a: [] for a in actors}
    for a in actors.values():
        assert a.hello()["num_envs"] == n
    for t in range(steps):
        for a, actor in actors.items():
            if t == 0:
                reply = actor.send(obs[a][0])
            else:
                reply = actor.send(obs[a][t], np.ones(n, np.float32), terminated[a][t - 1], np.zeros(n, bool),
                                   final_obs=obs[a][t] + 100)
            assert reply.type == "env_actions", reply.meta
            got[a].append(reply.arrays["actions"].copy())

    def reference(actor_id: int, resets: bool):
        core = agent.make_core(args, actor_id % 8, 8, n, actor_seed(RUN, actor_id))
        state, start = core.initial_state(n), np.ones(n, bool)
        actions, states = [], []
        for t in range(steps):
            states.append(state)
            acts, state, _ = core.act(net, obs[actor_id][t], state, start if resets or t == 0 else np.zeros(n, bool))
            actions.append(acts)
            start = terminated[actor_id][t].copy()
        return actions, states

    starts = {a: np.r_[np.ones((1, n), bool), terminated[a][:-1]] for a in actors}  # obs[t] begins an episode
    batch = client.request("sample", {"token": "t" * 32, "batch_size": 2 * segments * n}, wait_s=10)
    assert batch.type == "batch", batch.meta
    items = batch.arrays
    for a in actors:
        actions, states = reference(a, resets=True)
        np.testing.assert_array_equal(np.stack(got[a]), np.stack(actions))
        _, unreset = reference(a, resets=False)
        for s in range(segments):
            for e in range(n):
                row = np.flatnonzero((items["obs"][:, 0] == obs[a][s * T, e]).all(axis=1))
                assert len(row) == 1, "each unroll arrives once"
                r = row[0]
                np.testing.assert_array_equal(items["action"][r], np.stack(actions)[s * T:(s + 1) * T, e])
                np.testing.assert_array_equal(items["episode_start"][r], starts[a][s * T:(s + 1) * T, e])
                for key in ("pi_h", "pi_c", "vf_h", "vf_c"):  # the state the unroll started from
                    np.testing.assert_allclose(items[key][r], states[s * T][key][e], atol=1e-5)
                # next_obs: the final observation where the episode ended, else the next obs
                ends = terminated[a][s * T:(s + 1) * T, e]
                expected_next = np.where(ends[:, None], obs[a][s * T + 1:(s + 1) * T + 1, e] + 100,
                                         obs[a][s * T + 1:(s + 1) * T + 1, e])
                np.testing.assert_array_equal(items["next_obs"][r], expected_next)
        # Without the reset the state after each episode end would differ: the check above can fail.
        step_after = int(np.flatnonzero(terminated[a].any(axis=1))[0]) + 2
        env = int(np.flatnonzero(terminated[a][step_after - 2])[0])
        assert not np.allclose(states[step_after]["pi_h"][env], unreset[step_after]["pi_h"][env], atol=1e-4)
    stats = client.request("get_stats", wait_s=10).meta
    assert stats["rejected"] == {}
    per_actor = stats["per_actor"]
    assert {int(k) for k in per_actor} == set(actors)
    assert all(v["segments"] == segments for v in per_actor.values())


def test_bad_messages_are_rejected_with_a_reason_and_serving_goes_on(procs, broker, client, ctx):
    register_run(client, "dqn", "CartPole-v1", {})
    port = free_port_block(1)
    start_inference(procs, broker.address(), port, "--set", "inference.deadline_ms=50",
                    "--set", "inference.idle_timeout_s=8", "--set", "inference.max_streams=3")
    address = f"tcp://127.0.0.1:{port}"
    good, silent = EnvActor(ctx, address, 0), EnvActor(ctx, address, 1)
    good.hello()
    silent.hello()  # greets, then never asks: the others are answered after the deadline all the same
    obs = np.zeros((2, 4), np.float32)
    assert good.send(obs).type == "env_actions"

    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(address)
    raw.send_multipart([b"\x93not msgpack"])  # malformed: answered without a req, counted
    assert raw.poll(10_000) and wire.decode(raw.recv_multipart()).meta == {
        "req": None, "reason": "bad_header", "detail": "ExtraData"}
    raw.send_multipart([msgpack.packb({"v": 1, "t": "env_step", "m": {"req": 3}, "a": []})])
    assert raw.poll(10_000) and wire.decode(raw.recv_multipart()).meta["req"] == 3  # bad_version, with its req
    bad = EnvActor(ctx, address, 2)
    bad.hello()
    cases = [
        ("bad_obs", {"obs": np.zeros((2, 5), np.float32)}),  # not the observation shape
        ("bad_obs", {"obs": np.zeros((3, 4), np.float32)}),  # wrong number of envs
        ("bad_obs", {"obs": np.full((2, 4), np.nan, np.float32)}),
        ("bad_obs", {"obs": np.full((2, 4), 1e300, np.float64)}),  # finite, but float32 inf once cast
        ("bad_obs", {"obs": np.full((2, 4), 3e38, np.float32)}),  # finite float32, far past value_limit
        ("bad_obs", {"obs": np.zeros((2, 4), np.int64)}),  # integers for a float space
    ]
    for reason, arrays in cases:
        reply = bad.request("env_step", {"step": 0}, arrays)
        assert reply.type == "error" and reply.meta["reason"] == reason, reply.meta
    assert bad.send(obs).type == "env_actions"
    for reason, arrays in [
        ("bad_reward", dict(obs=obs, reward=np.array([1.0, np.inf], np.float32), terminated=np.zeros(2, bool),
                            truncated=np.zeros(2, bool))),
        ("bad_flags", dict(obs=obs, reward=np.ones(2, np.float32), terminated=np.zeros(2, np.int8),
                           truncated=np.zeros(2, bool))),
        ("bad_final_obs", dict(obs=obs, reward=np.ones(2, np.float32), terminated=np.array([True, False]),
                               truncated=np.zeros(2, bool))),  # an episode ended, no final observation
        ("bad_final_obs", dict(obs=obs, reward=np.ones(2, np.float32), terminated=np.array([True, False]),
                               truncated=np.zeros(2, bool), final_index=np.array([0]),
                               final_obs=np.full((1, 4), np.nan, np.float32))),  # not bad_obs: the final one
        ("bad_reward", dict(obs=obs, reward=np.array([1.0, 1e300]), terminated=np.zeros(2, bool),
                            truncated=np.zeros(2, bool))),  # float64: inf as float32
        ("bad_lives", dict(obs=obs, reward=np.ones(2, np.float32), terminated=np.zeros(2, bool),
                           truncated=np.zeros(2, bool), lives=np.ones(2, np.float32))),  # lives are integers
    ]:
        reply = bad.request("env_step", {"step": 1}, arrays)
        assert reply.type == "error" and reply.meta["reason"] == reason, reply.meta
    assert bad.request("env_step", {"step": 9}, {"obs": obs}).meta["reason"] == "bad_step"
    assert bad.request("env_step", {"step": 1, "extra": 1}, {"obs": obs}).meta["reason"] == "bad_meta"
    assert bad.request("get_weights", {}).meta["reason"] == "unexpected_type"  # a broker message
    stranger = EnvActor(ctx, address, 5)
    assert stranger.request("env_step", {"step": 0, "token": "t" * 32}, {"obs": obs}).meta["reason"] == "unknown_actor"
    # A stream keeps the token of its hello: a stranger can neither greet over a live actor's id (the
    # old code freed the actor's state: 98% of its steps lost to a flood) nor step it.
    thief = EnvActor(ctx, address, 0)
    assert thief.request("env_hello").meta["reason"] == "stream_held"
    assert thief.request("env_step", {"step": good.step, "token": "t" * 32}, {"obs": obs}).meta["reason"] == "bad_token"
    assert EnvActor(ctx, address, 7).request("env_hello", {"num_envs": 4096}).meta["reason"] == "too_many_envs"
    assert EnvActor(ctx, address, 8).request("env_hello").meta["reason"] == "too_many_streams"  # 3 already
    # the good actor is still served, and the bad one too once it behaves
    assert good.send(obs, np.ones(2, np.float32), np.zeros(2, bool), np.zeros(2, bool)).type == "env_actions"
    assert bad.send(obs, np.ones(2, np.float32), np.zeros(2, bool), np.zeros(2, bool)).type == "env_actions"
    stats = good.client.request("get_stats", wait_s=10).meta
    assert stats["actors"] == 3 and stats["rejected"]["bad_obs"] == 6 and stats["rejected"]["bad_header"] >= 1
    assert "actor_ids" not in stats  # nobody who asks learns the ids to impersonate
    for reason in ("bad_reward", "bad_flags", "bad_final_obs", "bad_lives", "bad_step", "bad_meta",
                   "unexpected_type", "unknown_actor", "stream_held", "bad_token", "too_many_envs", "too_many_streams"):
        assert stats["rejected"][reason] >= 1, (reason, stats["rejected"])
    # Actors that go silent are forgotten after the idle timeout: their state is freed.
    wait_for(lambda: good.client.request("get_stats", wait_s=10).meta["actors"] == 0, 30, "idle actors freed")
    raw.close()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return sorted(int(x) for x in path.read_text().split()) if path.exists() else []


def test_killed_server_and_env_actor_lose_no_accounting(procs, tmp_path):
    """SIGKILL the inference server mid-run and start it again on its port: env actors resume without
    a restart of their own. SIGKILL an env actor: its supervisor restarts it and the server frees its
    old state. The broker refuses nothing (no duplicate sequence numbers) throughout."""
    _, address = procs.start_broker()
    procs.start("learner", "learner", "--algo", "dqn", "--env", "CartPole-v1", "--broker", address, "--run-dir",
                str(tmp_path / "run"), "--no-progress", "--total-steps", "100000000", "--set",
                "run.eval_every_frames=0")
    port = free_port_block(1)
    server = start_inference(procs, address, port)
    actors = procs.start("actors", "actor", "--n", "2", "--inference", f"tcp://127.0.0.1:{port}")
    ctx = zmq.Context()
    try:
        broker = Client(ctx, address, "test")
        stats = lambda: broker.request("get_stats", wait_s=15).meta

        def segments_from(ids, more_than=0):
            per_actor = stats().get("per_actor", {})
            return all(per_actor.get(str(i), {}).get("segments", 0) > more_than for i in ids)

        wait_for(lambda: segments_from([0, 1]), 90, "both env actors' segments at the broker")
        workers = wait_for(lambda: _children(actors.pid) if len(_children(actors.pid)) == 2 else None, 10,
                           "two env actor processes")
        for pid in workers:  # env-only actors hold no policy: torch is not even mapped
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "libtorch" not in maps and "torch/lib" not in maps

        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        before = {k: v["segments"] for k, v in stats()["per_actor"].items()}
        start_inference(procs, address, port, name="inference-2")
        wait_for(lambda: all(stats()["per_actor"][k]["segments"] > before[k] + 2 for k in before), 90,
                 "segments from both env actors through the restarted server")
        assert _children(actors.pid) == workers, "the env actors resumed without restarting"
        assert actors.log_path.read_text().count("resumed with the inference server") == 2

        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: len(_children(actors.pid)) == 2 and workers[0] not in _children(actors.pid), 15,
                 "the supervisor to restart the killed env actor")
        incarnations = {k: v["incarnations"] for k, v in stats()["per_actor"].items()}
        wait_for(lambda: any(stats()["per_actor"][k]["incarnations"] > incarnations[k] for k in incarnations), 60,
                 "the restarted env actor's segments")
        inference = Client(ctx, f"tcp://127.0.0.1:{port}", "test")
        served = inference.request("get_stats", wait_s=10).meta
        assert served["actors"] == 2 and served["closed"] >= 1, served  # the killed one's state was freed
        final = stats()
        assert final["rejected"] == {}, final["rejected"]
        inference.close()
        broker.close()
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("preset,budget", [("ppo-CartPole-v1", 200_000), ("dqn-CartPole-v1", 150_000)])
def test_a_run_with_central_inference_reaches_the_cartpole_target(tmp_path, preset, budget):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "qrl", "run", "--config", f"configs/{preset}.yaml", "--inference",
                          "--actors", "2", "--total-steps", str(budget), "--run-dir", str(run_dir), "--no-progress"],
                         capture_output=True, text=True, timeout=400, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"].startswith("evaluation reached"), summary
    assert summary["final_eval_mean"] >= 475
    assert "inference: serving" in (run_dir / "inference.log").read_text()


def test_qrl_run_restarts_a_killed_inference_server(tmp_path):
    """`qrl run --inference`: SIGKILL its inference server mid-run; the cluster starts a new one on
    the same port, the env actors resume, and the run ends normally at its frame budget."""
    run_dir = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "qrl", "run", "--algo", "dqn", "--env", "CartPole-v1", "--inference",
                            "--actors", "2", "--total-steps", "40000", "--target-return", "1e9", "--run-dir",
                            str(run_dir), "--no-progress", "--set", "run.eval_every_frames=0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    ctx = zmq.Context()
    try:
        server_file = run_dir / "inference.json"
        wait_for(lambda: server_file.exists() and (run_dir / "broker.json").exists(), 60, "the cluster to start")
        broker = Client(ctx, json.loads((run_dir / "broker.json").read_text())["address"], "test")
        frames = lambda: broker.request("get_stats", wait_s=15).meta.get("frames", 0)
        wait_for(lambda: frames() > 2000, 60, "frames through the first server")
        first = json.loads(server_file.read_text())
        os.kill(first["pid"], signal.SIGKILL)
        wait_for(lambda: json.loads(server_file.read_text())["pid"] != first["pid"], 30, "a new server")
        second = json.loads(server_file.read_text())
        assert second["address"] == first["address"]
        before = frames()
        wait_for(lambda: frames() > before + 2000, 60, "frames through the new server")
        _, stderr = run.communicate(timeout=240)
        assert run.returncode == 0, stderr[-3000:]
        assert "the inference server exited" in stderr and "restarting it" in stderr
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["stop_reason"].startswith("frame budget"), summary
        assert "resumed with the inference server" in (run_dir / "actors.log").read_text()
        broker.close()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
        ctx.destroy(linger=0)


def test_env_only_actors_import_no_torch():
    code = ("import sys, qrl.cli, qrl.acting.env_actor, qrl.acting.supervisor; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _smoke_cases():
    from test_algorithms import SMOKE

    return SMOKE


@pytest.mark.parametrize("algo, env, sets", _smoke_cases(), ids=[f"{a}-{e}" for a, e, _ in _smoke_cases()])
def test_act_batched_acts_as_each_core_would(algo, env, sets):
    """algorithm.act_batched (one forward pass for several actors) returns what each actor's own
    core.act returns, step after step: actions, next states, extras; exploration stays per actor."""
    from qrl.config import RunConfig, parse_overrides

    agent = algorithm.load(algo)
    overrides = [s for s in sets if s.startswith("algo.")]
    if "random_frames" in {f.name for f in dataclasses.fields(agent.Args)}:
        overrides.append("algo.random_frames=16")  # past the random actions within the test
    args = build(agent.Args, parse_overrides(overrides, {"algo": agent.Args, "run": RunConfig})["algo"], "algo")
    obs_space, action_space = envs.spaces(env)
    net = agent.make_policy(obs_space, action_space, args)
    net.eval()
    sizes = [3, 1, 4]  # envs per actor
    make = lambda: [agent.make_core(args, i, 8, n, 100 + i) for i, n in enumerate(sizes)]
    alone, together = make(), make()
    states_alone = [c.initial_state(n) for c, n in zip(alone, sizes)]
    states_together = [c.initial_state(n) for c, n in zip(together, sizes)]
    rng = np.random.default_rng(0)
    for step in range(12):
        obs = [np.stack([obs_space.sample() for _ in range(n)]) for n in sizes]
        starts = [rng.random(n) < (1.0 if step == 0 else 0.2) for n in sizes]
        for c in alone + together:
            if step % 4 == 0:
                c.begin_segment(net)
        one_by_one = [c.act(net, o, s, e) for c, o, s, e in zip(alone, obs, states_alone, starts)]
        batched = algorithm.act_batched(net, together, obs, states_together, starts)
        for (a1, s1, x1), (a2, s2, x2) in zip(one_by_one, batched):
            np.testing.assert_allclose(a1, a2, rtol=1e-5, atol=1e-5)
            assert s1.keys() == s2.keys() and x1.keys() == x2.keys()
            for k in s1:
                np.testing.assert_allclose(s1[k], s2[k], rtol=1e-5, atol=1e-5)
            for k in x1:
                np.testing.assert_allclose(x1[k], x2[k], rtol=1e-5, atol=1e-5)
        states_alone = [s for _, s, _ in one_by_one]
        states_together = [s for _, s, _ in batched]


def test_an_out_of_tree_algorithm_gets_one_batched_forward_pass(monkeypatch):
    """docs/example_algorithm writes only forward and select: central inference runs its network
    once for every waiting actor, and each actor still samples with its own generator."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "docs" / "example_algorithm"))
    example = importlib.import_module("qrl_example_algorithm")
    agent = example.AGENT
    args = agent.Args()
    obs_space, action_space = envs.spaces("CartPole-v1")
    net = agent.make_policy(obs_space, action_space, args)
    sizes = [2, 5, 3]
    alone = [agent.make_core(args, i, 3, n, 7 + i) for i, n in enumerate(sizes)]
    together = [agent.make_core(args, i, 3, n, 7 + i) for i, n in enumerate(sizes)]
    obs = [np.stack([obs_space.sample() for _ in range(n)]) for n in sizes]
    starts = [np.ones(n, bool) for n in sizes]
    calls = []
    forward = type(together[0]).forward
    monkeypatch.setattr(type(together[0]), "forward", lambda self, *a: calls.append(len(a[1])) or forward(self, *a))
    batched = algorithm.act_batched(net, together, obs, [{}] * 3, starts)
    assert calls == [sum(sizes)]  # one pass over all ten environments
    monkeypatch.setattr(type(together[0]), "forward", forward)
    for core, o, s, (actions, state, extras) in zip(alone, obs, starts, batched):
        expected, _, _ = core.act(net, o, {}, s)
        np.testing.assert_array_equal(actions, expected)
        assert state == {} and extras == {}
