"""GAIL and AIRL (algorithms/gail.py): the discriminator learns to tell the expert's transitions from
the agent's, PPO learns from its reward and never from the environment's, and AIRL's recovered
reward can drive a fresh run through the RecoveredReward wrapper."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from qrl.algorithm import Batch
from qrl.algorithms import gail
from test_local import ROOT, local_run

pytest.importorskip("minari")
DEMOS = ROOT / "configs" / "demos"


def unrolls(n: int, t: int, shift: float, action: int | None, rng) -> dict[str, torch.Tensor]:
    obs = rng.normal(shift, 0.3, (n, t + 1, 4)).astype(np.float32)
    actions = rng.integers(0, 2, (n, t)) if action is None else np.full((n, t), action)
    return {"obs": torch.tensor(obs[:, :-1]), "next_obs": torch.tensor(obs[:, 1:]), "action": torch.tensor(actions),
            "logp": torch.full((n, t), -0.69), "reward": torch.full((n, t), 1000.0),
            "terminated": torch.zeros((n, t), dtype=torch.bool), "truncated": torch.zeros((n, t), dtype=torch.bool)}


@pytest.mark.parametrize("discriminator", ["gail", "airl"])
def test_the_discriminator_separates_expert_from_agent_and_ppo_learns_its_reward_not_the_envs(discriminator):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    args = gail.Args(discriminator=discriminator, epochs=1, minibatches=1, disc_minibatches=2, disc_lr=3e-3)
    learner = gail.Learner(gym.spaces.Box(-5, 5, (4,), np.float32), gym.spaces.Discrete(2), args,
                           torch.device("cpu"))
    expert = {k: v.reshape((-1,) + v.shape[2:]) for k, v in unrolls(8, 16, 2.0, 1, rng).items()
              if k in ("obs", "next_obs", "action", "terminated")}
    for _ in range(60):
        update = learner.update(Batch(unrolls(8, 16, 0.0, None, rng), demos=expert))
    m = update.metrics
    assert m["disc_expert_acc"] > 0.9 and m["disc_agent_acc"] > 0.9
    assert m["env_reward"] == 1000.0 and abs(m["disc_reward"]) < 100  # PPO saw the discriminator's reward
    assert learner.updates == 60 and "policy_loss" in m
    with torch.no_grad():  # the expert's transitions look more like the expert's than the agent's do
        expert_logits = learner.logits(expert).mean()
        agent_logits = learner.logits(learner.transitions(unrolls(8, 16, 0.0, None, rng))).mean()
    assert expert_logits > agent_logits + 2


def test_airl_adds_one_absorbing_transition_per_termination_and_gail_none():
    airl = gail.AirlDiscriminator(4, gym.spaces.Discrete(2), 8)
    terminated = torch.tensor([False, True, False, True, True])
    logits = airl.absorbing_logits(terminated)
    assert logits.shape == (3,) and torch.allclose(logits, airl.g(airl.absorbing).reshape(1).expand(3))
    assert gail.GailDiscriminator(4, gym.spaces.Discrete(2), 8).absorbing_logits(terminated).shape == (0,)


@pytest.fixture(scope="module")
def airl_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("airl")
    local_run("airl", "CartPole-v1", [f"run.demos={DEMOS}/cartpole/qrl-ppo-v0", "algo.demo_batch=256"],
              run_dir, total_steps=2048).run()
    return run_dir


@pytest.mark.parametrize("shaped", [True, False])
def test_recovered_reward_is_g_relative_to_the_absorbing_state_plus_the_learned_shaping(airl_run, shaped):
    from qrl import checkpoint

    env = gail.RecoveredReward(gym.make("CartPole-v1"), str(airl_run), shaped=shaped)
    disc = env.disc
    gamma = json.loads(checkpoint.load(airl_run)["config"])["args"]["gamma"]
    obs, _ = env.reset(seed=1)
    for _ in range(5):
        next_obs, reward, terminated, _, info = env.step(0)
        with torch.no_grad():
            x = disc.norm(torch.tensor(np.stack([obs, next_obs])))
            expected = disc.g_of(x[:1])[0] - disc.g(disc.absorbing)[0, 0]
            if shaped:
                expected += (0 if terminated else gamma * disc.h(x[1:])[0, 0]) - disc.h(x[:1])[0, 0]
        assert reward == pytest.approx(float(expected), rel=1e-5) and info["env_reward"] == 1.0
        obs = next_obs
        if terminated:
            break


def test_a_fresh_run_trains_through_the_recovered_reward_alone_and_a_non_airl_run_is_refused(airl_run, tmp_path):
    summary = local_run("ppo", "CartPole-v1", [f"run.wrappers=[{{name: RecoveredReward, run: {airl_run}}}]"],
                        tmp_path / "ppo").run()
    assert summary["updates"] > 0
    env = gail.RecoveredReward(gym.make("CartPole-v1"), str(airl_run))
    env.reset(seed=0)
    assert env.step(0)[1] != 1.0  # (CartPole pays 1 per step: the run's returns are the recovered reward's)
    with pytest.raises(ValueError, match="is not an AIRL run: its checkpoint has no recovered reward g"):
        gail.RecoveredReward(gym.make("CartPole-v1"), str(tmp_path / "ppo"))


def test_gail_with_sac_relabels_each_replay_batch_with_the_discriminators_reward():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    args = gail.SacArgs(hidden=[32, 32], batch_size=64, disc_lr=3e-3)
    learner = gail.SacLearner(gym.spaces.Box(-5, 5, (3,), np.float32), space, args, torch.device("cpu"))
    replay = lambda shift: {"obs": torch.tensor(rng.normal(shift, 0.3, (64, 3)), dtype=torch.float32),
                            "action": torch.tensor(rng.uniform(-2, 2, (64, 1)), dtype=torch.float32),
                            "return": torch.full((64,), 1000.0), "discount": torch.full((64,), 0.99),
                            "next_obs": torch.tensor(rng.normal(shift, 0.3, (64, 3)), dtype=torch.float32)}
    expert = {**{k: v for k, v in replay(2.0).items() if k in ("obs", "action", "next_obs")},
              "terminated": torch.zeros(64, dtype=torch.bool)}
    for _ in range(40):
        update = learner.update(Batch(replay(0.0), demos=expert))
    m = update.metrics
    assert m["env_reward"] == 1000.0 and 0 <= m["disc_reward"] < 10 and "critic_loss" in m
    assert m["disc_expert_acc"] > 0.9 and m["disc_agent_acc"] > 0.9
    for bad, message in (({"n_step": 3}, "algo.n_step must be 1"), ({"discriminator": "airl"}, "takes algo.disc")):
        with pytest.raises(ValueError, match=message):
            gail.SacLearner(gym.spaces.Box(-5, 5, (3,), np.float32), space, gail.SacArgs(**bad), torch.device("cpu"))
