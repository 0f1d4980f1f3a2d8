"""Demonstrations as Minari datasets (qrl/demos.py): `qrl record` writes a trained policy's
episodes as one; `load` reads datasets made by qrl or by anyone, and refuses a missing, truncated
or mismatched one in one line."""

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

from qrl import demos
from qrl.evaluation import load_policy, run_episodes
from test_local import ROOT, local_run

pytest.importorskip("minari")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    local_run("dqn", "CartPole-v1", ["algo.learning_starts=256"], run_dir).run()
    return run_dir


def test_record_writes_the_policys_deterministic_episodes_and_load_reads_them_back(trained_run, tmp_path):
    where, returns = demos.record(trained_run, "cartpole/qrl-test-v0", episodes=3, seed=5, data_dir=tmp_path)
    assert where == tmp_path / "cartpole" / "qrl-test-v0" and (where / "data" / "metadata.json").is_file()
    policy = load_policy(trained_run)
    _, _, evaluated = run_episodes(policy.agent, policy.args, policy.net, "CartPole-v1", 3, seed=5)
    assert returns == pytest.approx(evaluated)  # the same episodes `qrl evaluate --seed 5` plays

    env = gym.make("CartPole-v1")
    loaded = demos.load(where, env.observation_space, env.action_space)  # by path
    with demos.datasets_root(tmp_path):
        by_id = demos.load("cartpole/qrl-test-v0")
    assert loaded.returns == pytest.approx(returns) and by_id.returns == loaded.returns
    assert len(loaded) == sum(returns)  # CartPole pays 1 per step
    assert loaded.obs.shape == (len(loaded), 4) and loaded.action.shape == (len(loaded),)
    ends = np.flatnonzero(loaded.terminated | loaded.truncated)
    assert len(ends) == 3 and ends[-1] == len(loaded) - 1
    inside = np.setdiff1d(np.arange(len(loaded) - 1), ends)  # within an episode a step's next is the next step
    np.testing.assert_array_equal(loaded.next_obs[inside], loaded.obs[inside + 1])
    assert loaded.env_id == "CartPole-v1"
    greedy, _ = policy.agent.make_core(policy.args, 0, 1, len(loaded), 0).greedy(
        policy.net, loaded.obs, {}, np.ones(len(loaded), bool))
    np.testing.assert_array_equal(greedy, loaded.action)  # the policy's own actions


def test_record_stochastic_writes_the_policys_sampled_actions(tmp_path):
    run_dir = tmp_path / "ppo"
    local_run("ppo", "CartPole-v1", [], run_dir, total_steps=512).run()  # (barely trained: it samples widely)
    where, _ = demos.record(run_dir, "cartpole/qrl-sampled-v0", episodes=3, data_dir=tmp_path, stochastic=True)
    loaded = demos.load(where)
    policy = load_policy(run_dir)
    greedy, _ = policy.agent.make_core(policy.args, 0, 1, len(loaded), 0).greedy(
        policy.net, loaded.obs, {}, np.ones(len(loaded), bool))
    assert 0 < np.sum(greedy != loaded.action) < len(loaded)  # sampled: some actions are not the greedy ones


def test_a_dataset_made_by_anyone_loads(tmp_path):
    import minari
    from minari.data_collector import EpisodeBuffer

    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    observations, actions, rewards = [obs], [], []
    for _ in range(7):
        action = rng.uniform(-2, 2, (1,)).astype(np.float32)
        obs, reward, *_ = env.step(action)
        observations.append(obs), actions.append(action), rewards.append(reward)
    buffer = EpisodeBuffer(observations=np.array(observations), actions=np.array(actions), rewards=rewards,
                           terminations=[False] * 7, truncations=[False] * 6 + [True])
    with demos.datasets_root(tmp_path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("pendulum/random-v0", [buffer], env="Pendulum-v1")
    loaded = demos.load(tmp_path / "pendulum" / "random-v0", env.observation_space, env.action_space)
    assert len(loaded) == 7 and loaded.action.shape == (7, 1) and loaded.truncated.tolist() == [False] * 6 + [True]
    np.testing.assert_allclose(loaded.reward, rewards, rtol=1e-6)


def test_a_missing_mismatched_or_truncated_dataset_is_one_line(trained_run, tmp_path):
    where, _ = demos.record(trained_run, "cartpole/qrl-bad-v0", episodes=1, data_dir=tmp_path)
    with pytest.raises(demos.DemoError, match="no Minari dataset there"):
        demos.load(tmp_path / "nothing")
    with pytest.raises(demos.DemoError, match="their observation space Box.*is not the run's Box"):
        demos.load(where, gym.spaces.Box(-1, 1, (8,), np.float32))
    with pytest.raises(demos.DemoError, match="their action space Discrete\\(2\\) is not the run's Discrete\\(3\\)"):
        demos.load(where, None, gym.spaces.Discrete(3))
    data = where / "data" / "main_data.hdf5"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a file cut off in the middle
    with pytest.raises(demos.DemoError, match="unreadable") as info:
        demos.load(where)
    assert "\n" not in str(info.value)


def test_qrl_record_on_the_command_line(trained_run, tmp_path):
    out = subprocess.run([sys.executable, "-m", "qrl", "record", str(trained_run), "--dataset-id", "cartpole/cli-v0",
                          "--episodes", "2", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("recorded 2 episodes (mean return ") and "as cartpole/cli-v0 in" in out.stdout
    assert len(demos.load(tmp_path / "cartpole" / "cli-v0").returns) == 2
    out = subprocess.run([sys.executable, "-m", "qrl", "record", str(tmp_path), "--dataset-id", "x/y-v0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode != 0 and out.stderr.strip() == f"Error: record: no checkpoint at {tmp_path / 'checkpoint.pt'}"
    assert len(out.stderr.strip().splitlines()) == 1


# -- learning from them (run.demos) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(trained_run, tmp_path_factory):
    where, _ = demos.record(trained_run, "cartpole/qrl-expert-v0", episodes=4,
                                  data_dir=tmp_path_factory.mktemp("demos"))
    return where


def agreement(run_dir, loaded) -> float:
    """How often a run's deterministic policy takes the demonstrated action."""
    policy = load_policy(run_dir)
    greedy, _ = policy.agent.make_core(policy.args, 0, 1, len(loaded), 0).greedy(
        policy.net, loaded.obs, {}, np.ones(len(loaded), bool))
    return float(np.mean(greedy == loaded.action))


def test_behaviour_cloning_learns_the_demonstrated_actions_from_the_dataset_alone(dataset, tmp_path):
    loaded = demos.load(dataset)
    summary = local_run("bc", "CartPole-v1", [f"run.demos={dataset}", "run.total_steps=100000000",
                                              "run.max_seconds=8"], tmp_path / "bc", actors=1).run()
    assert summary["updates"] > 100
    assert agreement(tmp_path / "bc", loaded) >= 0.9


def test_dqn_samples_its_demo_ratio_of_each_batch_from_the_demonstrations(dataset, tmp_path):
    import json

    summary = local_run("dqn", "CartPole-v1", [f"run.demos={dataset}", "algo.learning_starts=256",
                                               "algo.batch_size=32", "algo.demo_ratio=0.5"], tmp_path).run()
    assert summary["updates"] > 0
    train = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if '"kind": "train"' in line and "demo_margin_loss" in line]
    assert train and all(np.isfinite(r["demo_margin_loss"]) and r["demo_margin_loss"] >= 0 for r in train)


def test_demonstration_items_are_the_agents_own_items_made_from_the_episodes():
    from qrl import algorithm

    agent = algorithm.load("dqn")
    args = agent.Args(n_step=3, gamma=0.5)
    ends = np.array([False, False, False, True, False, True])  # two episodes: 4 steps, then 2 (truncated)
    loaded = demos.Demonstrations(
        obs=np.arange(6, dtype=np.float32)[:, None].repeat(4, 1), action=np.arange(6) % 2,
        reward=np.ones(6, np.float32), next_obs=np.arange(1, 7, dtype=np.float32)[:, None].repeat(4, 1),
        terminated=np.array([False, False, False, True, False, False]), truncated=np.array([False] * 5 + [True]),
        returns=[4.0, 2.0], env_id="CartPole-v1")
    items = agent.demo_items(loaded, args)
    assert len(items["obs"]) == 6 and ends.sum() == 2
    np.testing.assert_allclose(items["return"], [1.75, 1.75, 1.5, 1.0, 1.5, 1.0])  # n-step sums stop at each end
    np.testing.assert_allclose(items["discount"], [0.125, 0, 0, 0, 0.25, 0.5])  # 0 after a termination
    np.testing.assert_array_equal(items["next_obs"][:, 0], [3, 4, 4, 4, 6, 6])  # a truncation bootstraps there
    np.testing.assert_array_equal(items["action"], loaded.action)


@pytest.mark.parametrize("algo, sets, message", [
    ("bc", [], "bc learns from demonstrations: set run.demos"),
    ("ppo", ["run.demos=x"], "run.demos: ppo does not learn from demonstrations"),
    ("bc", ["run.demos=/no/such/dataset"], "demonstrations /no/such/dataset: no Minari dataset there"),
])
def test_a_run_that_cannot_use_its_demonstrations_stops_in_one_line_before_anything_starts(algo, sets, message,
                                                                                          tmp_path):
    out = subprocess.run([sys.executable, "-m", "qrl", "learner", "--algo", algo, "--env", "CartPole-v1",
                          "--run-dir", str(tmp_path), *[a for s in sets for a in ("--set", s)]],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode != 0 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_behaviour_cloning_on_images(tmp_path):
    """bc's policy takes PPO's convolutional torso: a clone of a MinAtar policy from its pixels."""
    local_run("dqn", "MinAtar/Breakout-v1", ["algo.learning_starts=256", "algo.hidden=32"], tmp_path / "dqn").run()
    where, _ = demos.record(tmp_path / "dqn", "breakout/qrl-test-v0", episodes=2, data_dir=tmp_path)
    loaded = demos.load(where)
    assert loaded.obs.shape[1:] == (10, 10, 4)
    summary = local_run("bc", "MinAtar/Breakout-v1", [f"run.demos={where}", "algo.hidden=32"], tmp_path / "bc").run()
    assert summary["updates"] > 0 and np.isfinite(summary["final_eval_mean"])
