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


def test_a_checkpoint_from_before_the_reward_scale_loads_with_a_fresh_one():
    space, actions = gym.spaces.Box(-5, 5, (4,), np.float32), gym.spaces.Discrete(2)
    saved = gail.Learner(space, actions, gail.AirlArgs(), torch.device("cpu")).state_dict()
    saved["reward_scale"]["var"].fill_(4.0)
    fresh = gail.Learner(space, actions, gail.AirlArgs(), torch.device("cpu"))
    fresh.load_state_dict(saved)
    assert fresh.reward_scale.var.item() == 4.0
    del saved["reward_scale"]
    older = gail.Learner(space, actions, gail.AirlArgs(), torch.device("cpu"))
    older.load_state_dict(saved)
    assert older.reward_scale.var.item() == 1.0 and torch.equal(older.disc.g[0].weight, fresh.disc.g[0].weight)


def test_the_gradient_penalty_is_the_squared_distance_of_the_logits_gradient_norm_from_one():
    obs_space, actions = gym.spaces.Box(-5, 5, (4,), np.float32), gym.spaces.Discrete(2)
    learner = gail.Learner(obs_space, actions, gail.Args(disc_grad_penalty=10.0), torch.device("cpu"))
    linear = torch.nn.Linear(4 + 2, 1)  # a linear discriminator: its gradient in the observation is known
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[3.0, 0.0, 4.0, 0.0, 7.0, -7.0]]))
    learner.disc.net = linear
    rng = np.random.default_rng(0)
    agent, expert = (learner.transitions(unrolls(2, 8, shift, None, rng)) for shift in (0.0, 2.0))
    penalty = learner.gradient_penalty(agent, expert)
    assert penalty.item() == pytest.approx((5.0 - 1.0) ** 2, rel=1e-4)  # |(3, 0, 4, 0)| = 5; actions do not count
    metrics = learner.train_discriminator(agent, expert)
    assert metrics["disc_grad_penalty"] == pytest.approx(16.0, rel=0.2)


def test_airl_adds_one_absorbing_transition_per_termination_and_gail_none():
    airl = gail.AirlDiscriminator(4, gym.spaces.Discrete(2), 8)
    terminated = torch.tensor([False, True, False, True, True])
    logits = airl.absorbing_logits(terminated)
    assert logits.shape == (3,) and torch.allclose(logits, airl.g(airl.absorbing).reshape(1).expand(3))
    assert gail.GailDiscriminator(4, gym.spaces.Discrete(2), 8).absorbing_logits(terminated).shape == (0,)


def test_airl_generator_reward_takes_the_form_airl_reward_names_and_an_unknown_one_is_refused():
    rng = np.random.default_rng(0)
    space, actions = gym.spaces.Box(-5, 5, (4,), np.float32), gym.spaces.Discrete(2)
    learners = {}
    for form in gail.AIRL_REWARDS:
        torch.manual_seed(0)
        learners[form] = gail.Learner(space, actions, gail.AirlArgs(airl_reward=form), torch.device("cpu"))
    t = learners["logit"].transitions(unrolls(2, 8, 0.0, None, rng))
    with torch.no_grad():
        net = learners["logit"].net
        logp = net.log_prob(net.distribution(t["obs"]), t["action"])
        logit = learners["logit"].logits(t)
    assert torch.allclose(learners["logit"].policy_reward(t), logit, atol=1e-6)  # f - log pi
    assert torch.allclose(learners["f"].policy_reward(t), logit + logp, atol=1e-6)  # f alone
    assert torch.allclose(learners["softplus"].policy_reward(t), torch.nn.functional.softplus(logit), atol=1e-6)
    with torch.no_grad():
        disc = learners["g"].disc
        g = disc.g_of(disc.norm(t["obs"]), t["action"]) - disc.g(disc.absorbing)[0, 0]
    assert torch.allclose(learners["g"].policy_reward(t), g, atol=1e-6)
    with pytest.raises(ValueError, match="algo.airl_reward must be one of logit, f, softplus, g, got 'x'"):
        gail.Learner(space, actions, gail.AirlArgs(airl_reward="x"), torch.device("cpu"))


def test_scale_disc_reward_divides_by_the_running_standard_deviation():
    rng = np.random.default_rng(0)
    space, actions = gym.spaces.Box(-5, 5, (4,), np.float32), gym.spaces.Discrete(2)
    torch.manual_seed(0)
    plain = gail.Learner(space, actions, gail.Args(), torch.device("cpu"))
    torch.manual_seed(0)
    scaled = gail.Learner(space, actions, gail.Args(scale_disc_reward=True), torch.device("cpu"))
    with torch.no_grad():  # (rewards of a spread the prior variance of 1 does not blur)
        for learner in (plain, scaled):
            learner.disc.net[-1].weight.mul_(100.0)
    t = plain.transitions(unrolls(4, 16, 0.0, None, rng))
    raw = plain.policy_reward(t)
    assert raw.std() > 0.1 and torch.allclose(scaled.policy_reward(t), raw / raw.std(unbiased=False), rtol=1e-2)


def test_a_state_action_recovered_reward_takes_the_action_and_a_state_only_one_ignores_it():
    obs = torch.randn(6, 4)
    for state_only in (True, False):
        torch.manual_seed(0)
        disc = gail.AirlDiscriminator(4, gym.spaces.Discrete(3), 8, state_only=state_only)
        inputs = 4 + (0 if state_only else 3) + 1  # observation, one-hot action, absorbing indicator
        assert disc.g[0].in_features == inputs and disc.absorbing.shape[1] == inputs
        with torch.no_grad():
            differs = not torch.allclose(disc.g_of(obs, torch.zeros(6, dtype=torch.long)),
                                         disc.g_of(obs, torch.full((6,), 2)))
        assert differs == (not state_only)


@pytest.fixture(scope="module", params=[True, False], ids=["g(s)", "g(s,a)"])
def airl_run(tmp_path_factory, request):
    run_dir = tmp_path_factory.mktemp("airl")
    local_run("airl", "CartPole-v1", [f"run.demos={DEMOS}/cartpole/qrl-ppo-v0", "algo.demo_batch=256",
                                      f"algo.airl_state_only={str(request.param).lower()}"],
              run_dir, total_steps=2048).run()
    return run_dir


@pytest.mark.parametrize("shaped", [True, False])
def test_recovered_reward_is_g_relative_to_the_absorbing_state_plus_the_learned_shaping(airl_run, shaped):
    from qrl import checkpoint

    env = gail.RecoveredReward(gym.make("CartPole-v1"), str(airl_run), shaped=shaped)
    disc = env.disc
    args = json.loads(checkpoint.load(airl_run)["config"])["args"]
    gamma = args["gamma"]
    assert (disc.actions.size == 0) == args["airl_state_only"]  # (the reward's form comes from the checkpoint)
    obs, _ = env.reset(seed=1)
    for step in range(5):
        next_obs, reward, terminated, _, info = env.step(step % 2)
        with torch.no_grad():
            x = disc.norm(torch.tensor(np.stack([obs, next_obs])))
            expected = disc.g_of(x[:1], torch.tensor([step % 2]))[0] - disc.g(disc.absorbing)[0, 0]
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
