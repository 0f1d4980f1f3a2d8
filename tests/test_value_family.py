"""The rest of the value-based family by hand: noisy layers (mean-only evaluation, noise per
segment, noise not in the weights), IQN's cosine embedding and shapes, the quantile Huber loss at
given fractions, the Munchausen target, and the one-line refusals of meaningless combinations."""

import dataclasses
import math
import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from qrl import algorithm, layers, ops
from qrl.algorithms import c51, fqf, iqn, mdqn, qrdqn, rainbow
from qrl.algorithm import to_batch

OBS, ACTIONS = gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(3)


def test_a_noisy_layer_uses_its_mean_weights_until_noise_is_drawn_and_inside_mean_weights():
    layer = layers.NoisyLinear(5, 3, std_init=0.5)
    x = torch.randn(7, 5)
    mean = torch.nn.functional.linear(x, layer.weight_mu, layer.bias_mu)
    torch.testing.assert_close(layer(x), mean)
    layers.sample_noise(layer, torch.Generator().manual_seed(0))
    noisy = layer(x)
    assert not torch.allclose(noisy, mean)
    # factorized: eps_w = f(eps_out) f(eps_in)^T, eps_b = f(eps_out), f(n) = sign(n) sqrt(|n|)
    weight = layer.weight_mu + layer.weight_sigma * torch.outer(layer.eps_out, layer.eps_in)
    torch.testing.assert_close(noisy, x @ weight.T + layer.bias_mu + layer.bias_sigma * layer.eps_out)
    with layers.mean_weights(layer):
        torch.testing.assert_close(layer(x), mean)
    torch.testing.assert_close(layer(x), noisy)  # the noise is back after evaluation
    # initialisation (Fortunato et al. 2018, section 3.2): sigma_0 / sqrt(inputs)
    assert layer.weight_sigma.detach().eq(0.5 / math.sqrt(5)).all() and layer.weight_mu.abs().max() <= 1 / math.sqrt(5)
    assert set(layer.state_dict()) == {"weight_mu", "weight_sigma", "bias_mu", "bias_sigma"}  # no noise in weights


def test_noisy_actors_draw_noise_per_segment_and_evaluate_on_the_mean_weights():
    args = rainbow.Args(hidden=16, atoms=11)
    net = rainbow.AGENT.make_policy(OBS, ACTIONS, args)
    assert len(layers.noisy_layers(net)) == 3  # the torso's last layer, the value and advantage streams
    with torch.no_grad():  # large noise: different draws pick different actions
        for layer in layers.noisy_layers(net):
            layer.weight_sigma.fill_(2.0)
    core = rainbow.AGENT.make_core(args, 0, 1, 64, seed=5)
    obs = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    start = np.zeros(len(obs), bool)
    with torch.no_grad():
        mean_actions = net(torch.as_tensor(obs)).argmax(1).numpy()  # never drawn: the mean weights
    core.begin_segment(net)
    first, _, _ = core.act(net, obs, {}, start)
    again, _, _ = core.act(net, obs, {}, start)
    np.testing.assert_array_equal(first, again)  # one noise draw for the whole segment, and no epsilon
    core.begin_segment(net)
    second, _, _ = core.act(net, obs, {}, start)
    assert (first != second).any() and (first != mean_actions).any()
    greedy, _ = core.greedy(net, obs, {}, start)
    np.testing.assert_array_equal(greedy, mean_actions)  # evaluation: the mean weights
    third, _, _ = core.act(net, obs, {}, start)
    np.testing.assert_array_equal(third, second)  # and the segment's noise afterwards


def test_the_cosine_embedding_by_hand():
    embedding = layers.CosineEmbedding(3, 3)
    with torch.no_grad():
        embedding.linear.weight.copy_(torch.eye(3))
        embedding.linear.bias.zero_()
    out = embedding(torch.tensor([[0.5, 1 / 3]]))
    # ReLU(cos(pi i tau)), i = 0, 1, 2: tau 1/2 -> 1, 0, -1 -> 1, 0, 0; tau 1/3 -> 1, 1/2, -1/2 -> 1, 1/2, 0
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.5, 0.0]]]), atol=1e-6, rtol=0)


def test_iqn_shapes_and_risk_neutral_acting_on_evenly_spaced_fractions():
    args = iqn.Args(hidden=16, iqn_n=5, iqn_k=4, iqn_embedding=8)
    net = iqn.AGENT.make_policy(OBS, ACTIONS, args)
    assert net.embedding.linear.weight.shape == (16, 8)  # cosines -> the torso's width
    obs = torch.randn(6, 4)
    z = net.distribution(obs, torch.rand(6, 5))
    assert z.shape == (6, 3, 5)  # [B, actions, fractions]
    torch.testing.assert_close(net.acting_taus, torch.tensor([0.125, 0.375, 0.625, 0.875]))
    torch.testing.assert_close(net(obs), net.distribution(obs, net.acting_taus.expand(6, -1)).mean(2))
    # the same fraction gives the same quantile for every item; quantiles differ across fractions
    same = net.distribution(obs[:1].expand(2, -1), torch.tensor([[0.1, 0.9], [0.1, 0.9]]))
    torch.testing.assert_close(same[0], same[1])
    cvar = iqn.AGENT.make_policy(OBS, ACTIONS, iqn.Args(hidden=16, iqn_k=4, iqn_cvar=0.5))
    torch.testing.assert_close(cvar.acting_taus, torch.tensor([0.0625, 0.1875, 0.3125, 0.4375]))


@pytest.mark.parametrize("taus, targets, expected", [
    ([0.1], [1.0], 0.05),  # u = 1 >= 0: Huber 0.5, weight tau = 0.1
    ([0.1], [-2.0], 1.35),  # u = -2 < 0: Huber 1.5, weight 1 - tau = 0.9
    ([0.9], [1.0, -2.0], (0.45 + 0.15) / 2),  # averaged over the targets
])
def test_the_quantile_huber_loss_at_given_fractions_by_hand(taus, targets, expected):
    loss = ops.quantile_huber_loss(torch.zeros(1, len(taus)), torch.tensor([targets]), 1.0, torch.tensor([taus]))
    assert loss.item() == pytest.approx(expected)


def test_an_iqn_update_moves_its_quantile_function_toward_the_target_distribution():
    torch.manual_seed(0)
    args = iqn.Args(hidden=32, iqn_n=16, iqn_n_target=16, iqn_k=16, lr=3e-3, n_step=1, double=False)
    learner = iqn.AGENT.Learner(OBS, gym.spaces.Discrete(2), args, torch.device("cpu"))
    obs = np.zeros((64, 4), np.float32)
    batch = {"obs": obs, "action": np.zeros(64, np.int64), "return": np.tile(np.array([0.0, 4.0], np.float32), 32),
             "discount": np.zeros(64, np.float32), "next_obs": obs}
    for _ in range(600):
        learner.update(to_batch(batch))
    with torch.no_grad():
        z = learner.net.distribution(torch.zeros(1, 4), torch.tensor([[0.1, 0.25, 0.75, 0.9]]))[0, 0]
        q = learner.net(torch.zeros(1, 4))[0, 0].item()
    # returns 0 or 4, half each: the minimizer of the quantile Huber loss (kappa 1) is tau / (1 - tau)
    # below the median and 4 - (1 - tau) / tau above (see the QR-DQN test): 0.11, 0.33, 3.67, 3.89
    np.testing.assert_allclose(z.numpy(), [1 / 9, 1 / 3, 4 - 1 / 3, 4 - 1 / 9], atol=0.3)
    assert q == pytest.approx(2.0, abs=0.2)


def test_fqf_proposes_increasing_fractions_and_acts_on_the_staircase_mean():
    net = fqf.AGENT.make_policy(OBS, ACTIONS, fqf.Args(hidden=16, iqn_n=5, iqn_embedding=8))
    obs = torch.randn(6, 4)
    h = net.features(obs)
    taus, tau_hats = net.propose(h)
    assert taus.shape == (6, 6) and tau_hats.shape == (6, 5)
    assert (taus[:, 0] == 0).all() and (taus[:, -1] == 1).all() and (taus.diff(dim=1) > 0).all()
    torch.testing.assert_close(tau_hats, (taus[:, :-1] + taus[:, 1:]) / 2)
    z = net.quantiles_at(h, tau_hats)  # [B, A, N]
    torch.testing.assert_close(net(obs), (z * taus.diff(dim=1).unsqueeze(1)).sum(2))
    with torch.no_grad():  # uniform proposals: the staircase on QR-DQN's midpoints
        net.fractions.weight.zero_()
        net.fractions.bias.zero_()
    torch.testing.assert_close(net.propose(h)[1], ops.midpoint_fractions(5).expand(6, -1))
    # actors and evaluation run it in torch (no numpy twin for the proposal layer)
    torch.testing.assert_close(torch.as_tensor(net.q_values(obs.numpy())), net(obs))


def test_an_fqf_update_moves_fractions_by_the_wasserstein_gradient_alone():
    """The proposal layer learns only from the fraction loss (its own optimizer), the rest only from
    the quantile loss; for a known quantile function the fraction loss's gradient is the paper's."""
    torch.manual_seed(0)
    args = fqf.Args(hidden=16, iqn_n=4, iqn_embedding=8, lr=1e-3, fraction_lr=1e-2, n_step=1)
    learner = fqf.AGENT.Learner(OBS, gym.spaces.Discrete(2), args, torch.device("cpu"))
    assert not {id(p) for p in learner.net.fractions.parameters()} & {
        id(p) for group in learner.optimizer.param_groups for p in group["params"]}
    assert "fraction_optimizer" in learner.state_dict()
    before = {k: v.clone() for k, v in learner.net.state_dict().items()}
    obs = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    batch = {"obs": obs, "action": np.zeros(32, np.int64), "return": np.ones(32, np.float32),
             "discount": np.zeros(32, np.float32), "next_obs": obs}
    learner.update(to_batch(batch))
    after = learner.net.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in after)  # both losses reached their parameters


def test_the_fraction_gradient_by_hand():
    # F(tau) = tau^2 on tau = 0, .2, .5, .7, 1 (rising): 2 F(tau_i) - F(tau_hat_(i-1)) - F(tau_hat_i)
    taus = torch.tensor([[0.0, 0.2, 0.5, 0.7, 1.0]])
    hats = (taus[:, :-1] + taus[:, 1:]) / 2  # .1, .35, .6, .85
    grad = ops.fraction_gradient(taus[:, 1:-1] ** 2, hats**2)
    torch.testing.assert_close(grad, torch.tensor([[0.08 - 0.01 - 0.1225, 0.5 - 0.1225 - 0.36,
                                                    0.98 - 0.36 - 0.7225]]))
    # where F falls past tau_1 (F(tau_1) = 1 above F(tau_hat_1) = 0.5, F(tau_2) = 0.2 below it), each
    # term that crosses the fall flips sign: tau_1: (1 - 0) - (1 - 0.5); tau_2: -(0.2 - 0.5) + (0.2 - 0.9)
    grad = ops.fraction_gradient(torch.tensor([[1.0, 0.2]]), torch.tensor([[0.0, 0.5, 0.9]]))
    torch.testing.assert_close(grad, torch.tensor([[1.0 - 0.5, 0.3 - 0.7]]))


def test_the_munchausen_target_by_hand():
    args = mdqn.Args(entropy_tau=1.0, munchausen_alpha=0.5, log_policy_clip=-1.0, hidden=8)
    t = {"action": torch.tensor([0, 1]), "return": torch.tensor([1.0, 1.0]), "discount": torch.tensor([0.5, 0.0])}
    q_now = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])  # pi = (1/4, 3/4)
    q_next = torch.zeros(2, 2)  # pi = (1/2, 1/2): soft value = sum pi (0 - log pi) = log 2
    out = mdqn.soft_target(args, t, q_now, q_next, q_next)
    # item 0: log(1/4) = -1.39 clipped to -1, bonus 0.5 * -1; + 0.5 * log 2.  item 1: 0.5 * log(3/4), terminal.
    torch.testing.assert_close(out, torch.tensor([1 - 0.5 + 0.5 * math.log(2), 1 + 0.5 * math.log(0.75)]))
    # the quantile form (M-IQN): each target quantile is the policy-weighted mean over next actions
    z_next = torch.tensor([[[1.0, 3.0], [-1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])  # [B, A, N]
    out = mdqn.soft_target(args, t, q_now, q_next, z_next)
    soft = 0.5 * (torch.tensor([1.0, 3.0]) + torch.tensor([-1.0, 1.0])) + math.log(2)
    torch.testing.assert_close(out[0], 0.5 + 0.5 * soft)
    torch.testing.assert_close(out[1], torch.full((2,), 1 + 0.5 * math.log(0.75)))


@pytest.mark.parametrize("variant, values, message", [
    (mdqn, {"double": True}, "Munchausen bootstraps from a softmax policy, not double DQN's argmax: "
                             "set algo.double=false"),
    (qrdqn, {"munchausen": True, "double": True}, "set algo.double=false"),
    (iqn, {"munchausen": True, "double": True}, "set algo.double=false"),
    (c51, {"v_min": 1.0, "v_max": 1.0}, "c51 needs algo.atoms >= 2 and algo.v_min below algo.v_max"),
    (c51, {"atoms": 1}, "c51 needs algo.atoms >= 2"),
    (iqn, {"iqn_cvar": 0.0}, "algo.iqn_cvar must be in (0, 1], got 0.0"),
])
def test_meaningless_combinations_are_refused_in_one_line(variant, values, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        variant.make_policy(OBS, ACTIONS, variant.Args(**values))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=re.escape(message)):  # the learner builds its networks the same way
        variant.AGENT.Learner(OBS, ACTIONS, variant.Args(**values), torch.device("cpu"))


def test_each_variant_has_its_own_options_and_none_of_the_others():
    fields = {name: {f.name for f in dataclasses.fields(algorithm.load(name).Args)}
              for name in ("dqn", "c51", "qrdqn", "iqn", "fqf", "mdqn", "rainbow")}
    holders = {  # option -> the variants that have it (rainbow is c51 with apex's table)
        "atoms": {"c51", "rainbow"}, "v_max": {"c51", "rainbow"}, "quantiles": {"qrdqn"},
        "iqn_k": {"iqn"}, "iqn_cvar": {"iqn"}, "iqn_n": {"iqn", "fqf"}, "fraction_lr": {"fqf"},
        "entropy_tau": {"mdqn", "qrdqn", "iqn"}, "munchausen": {"qrdqn", "iqn"},  # M-DQN, M-QR-DQN, M-IQN
        "noisy": set(fields), "double": set(fields),
    }
    for option, names in holders.items():
        assert {name for name in fields if option in fields[name]} == names, option


def test_the_named_members_of_the_family():
    for name, values in [("iqn", {"iqn_n": 32}), ("fqf", {"iqn_n": 32}), ("mdqn", {"double": False}),
                         ("rainbow", {"atoms": 51, "noisy": True, "dueling": True, "double": True, "n_step": 3})]:
        args = algorithm.load(name).Args()
        assert all(getattr(args, k) == v for k, v in values.items()), name
    table = rainbow.AGENT.table_config(rainbow.Args())
    assert table.sampler == "prioritized" and rainbow.AGENT.sample_options(rainbow.Args(), 0) == {"beta": 0.4}
    assert isinstance(rainbow.AGENT.make_policy(OBS, ACTIONS, rainbow.Args()), c51.CategoricalQNetwork)


@pytest.mark.parametrize("variant, values", [(iqn, {"iqn_n": 4, "iqn_k": 3}), (c51, {"noisy": True, "atoms": 5}),
                                            (iqn, {"noisy": True, "iqn_n": 4}), (qrdqn, {"quantiles": 3}),
                                            (fqf, {"iqn_n": 3})])
def test_the_options_on_the_nature_cnn(variant, values):
    frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    net = variant.make_policy(frames, ACTIONS, variant.Args(hidden=32, **values))
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    layers.sample_noise(net)
    assert net(obs).shape == (2, 3)
    if variant is iqn:
        assert net.embedding.linear.out_features == 64 * 7 * 7  # the convolutions' features
        assert net.distribution(obs, torch.rand(2, 4)).shape == (2, 3, 4)
    core = variant.AGENT.make_core(variant.Args(hidden=32, **values), 0, 1, 2, seed=0)
    assert core.greedy(net, obs.numpy(), {}, np.zeros(2, bool))[0].shape == (2,)
