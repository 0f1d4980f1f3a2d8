"""The convolutional torsos (qrl/networks.py) by hand: which axis holds the channels, input
scaling, output shapes of each kind, IMPALA's residual blocks, one-line refusals, and the
algorithms' image networks built from them."""

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from qrl import algorithm, networks

MINATAR = (10, 10, 4)  # [H, W, C] bool
ATARI = (4, 84, 84)  # [C, H, W] uint8


@pytest.mark.parametrize("shape, last, chw", [
    ((4, 84, 84), False, (4, 84, 84)), ((3, 64, 64), False, (3, 64, 64)),
    ((10, 10, 4), True, (4, 10, 10)), ((10, 10, 10), True, (10, 10, 10)), ((64, 64, 3), True, (3, 64, 64)),
    ((210, 160, 3), True, (3, 210, 160)),
])
def test_the_channel_axis_is_the_first_only_when_it_is_strictly_the_smallest(shape, last, chw):
    assert networks.channels_last(shape) is last and networks.chw(shape) == chw


def test_image_input_scales_pixels_and_moves_channels_first():
    hwc = torch.zeros(2, 3, 5, 4, dtype=torch.uint8)  # [B, H, W, C]
    hwc[:, :, :, 2] = 255  # channel 2 full on
    out = networks.ImageInput(channels_last=True)(hwc)
    assert out.shape == (2, 4, 3, 5) and out.dtype == torch.float32
    assert out[:, 2].eq(1.0).all() and out[:, [0, 1, 3]].eq(0.0).all()
    grid = torch.ones(1, 4, 10, 10, dtype=torch.bool)  # bool and float observations are not rescaled
    assert networks.ImageInput(channels_last=False)(grid).eq(1.0).all()


@pytest.mark.parametrize("shape, kind, flat", [
    (ATARI, "nature", 64 * 7 * 7), (ATARI, "auto", 64 * 7 * 7),
    (ATARI, "impala", 32 * 11 * 11),  # 84 -> 42 -> 21 -> 11 after three stride-2 pools
    (MINATAR, "minatar", 16 * 8 * 8), (MINATAR, "auto", 16 * 8 * 8),
    (MINATAR, "impala", 32 * 2 * 2),  # 10 -> 5 -> 3 -> 2
    (ATARI, "impala-se", 32 * 11 * 11), (MINATAR, "impala-cbam", 32 * 2 * 2),
])
def test_each_torso_gives_features_of_the_requested_width(shape, kind, flat):
    torso = networks.image_torso(shape, 48, kind)
    *_, last, relu = torso
    assert isinstance(last, torch.nn.Linear) and last.in_features == flat and last.out_features == 48
    assert isinstance(relu, torch.nn.ReLU)
    obs = torch.randint(0, 256, (3, *shape), dtype=torch.uint8) if shape == ATARI else torch.rand(3, *shape) > 0.5
    assert torso(obs).shape == (3, 48)


def test_an_impala_residual_block_is_the_identity_when_its_convolutions_are_zero():
    block = networks.ResidualBlock(8)
    for conv in (block.conv0, block.conv1):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_attention_blocks_gate_by_hand_with_zero_weights():
    """Zero weights: every sigmoid gate is 0.5, so SE halves its input (one gate) and CBAM quarters
    it (a channel gate, then a spatial one); and a residual block with either is still the identity
    when its convolutions are zero."""
    x = torch.randn(2, 8, 5, 5)
    for block, factor in ((networks.SqueezeExcitation(8), 0.5), (networks.CBAM(8), 0.25)):
        for p in block.parameters():
            torch.nn.init.zeros_(p)
        torch.testing.assert_close(block(x), factor * x)
    for attention in (networks.SqueezeExcitation, networks.CBAM):
        residual = networks.ResidualBlock(8, attention)
        for conv in (residual.conv0, residual.conv1):
            torch.nn.init.zeros_(conv.weight)
            torch.nn.init.zeros_(conv.bias)
        torch.testing.assert_close(residual(x), x)


@pytest.mark.parametrize("name, kind, block", [("ppo", "impala-cbam", networks.CBAM),
                                               ("dqn", "impala-se", networks.SqueezeExcitation)])
def test_the_attention_torsos_are_there_for_any_algorithm_by_config(name, kind, block):
    agent = algorithm.load(name)
    args = agent.Args(torso=kind)
    obs_space = gym.spaces.Box(0, 1, MINATAR, bool)
    net = agent.make_policy(obs_space, gym.spaces.Discrete(3), args)
    assert sum(isinstance(m, block) for m in net.modules()) == 6  # 3 stacks of 2 residual blocks
    core = agent.make_core(args, 0, 1, 2, seed=0)
    acted, _ = core.greedy(net, np.stack([obs_space.sample() for _ in range(2)]), core.initial_state(2),
                           np.ones(2, bool))
    assert acted.shape == (2,)


@pytest.mark.parametrize("shape, kind, message", [
    (MINATAR, "nature", "algo.torso nature needs images of at least 36x36 pixels, got 10x10: use impala or minatar"),
    (ATARI, "resnet", "algo.torso must be one of auto, nature, impala, impala-se, impala-cbam, minatar "
                      "(each optionally +randconv), got 'resnet'"),
])
def test_a_torso_that_cannot_work_is_refused_in_one_line(shape, kind, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        networks.image_torso(shape, 32, kind)


@pytest.mark.parametrize("name, obs, actions", [
    ("dqn", MINATAR, 3), ("c51", MINATAR, 3), ("iqn", MINATAR, 3), ("fqf", MINATAR, 3), ("r2d2", MINATAR, 3),
    ("ppo", MINATAR, 3), ("rppo", MINATAR, 3), ("impala", ATARI, 6), ("sac", MINATAR, 3), ("dqn", ATARI, 6),
    ("sac", (24, 24, 3), None), ("ddpg", (24, 24, 3), None), ("td3", (24, 24, 3), None),
    ("rnd", MINATAR, 3), ("ppg", MINATAR, 3), ("daac", MINATAR, 3), ("tac", MINATAR, 3), ("reactor", MINATAR, 3),
])
def test_every_algorithm_that_takes_images_builds_its_policy_on_a_torso(name, obs, actions):
    agent = algorithm.load(name)
    args = agent.Args(torso="impala")
    dtype = np.uint8 if obs != MINATAR else bool
    obs_space = gym.spaces.Box(0, 255 if dtype is np.uint8 else 1, obs, dtype)
    action_space = gym.spaces.Discrete(actions) if actions else gym.spaces.Box(-1, 1, (2,), np.float32)
    net = agent.make_policy(obs_space, action_space, args)
    assert any(isinstance(m, networks.ResidualBlock) for m in net.modules()), name
    core = agent.make_core(args, 0, 1, 2, seed=0)
    batch = np.stack([obs_space.sample() for _ in range(2)])
    acted, _ = core.greedy(net, batch, core.initial_state(2), np.ones(2, bool))
    assert acted.shape == ((2,) if actions else (2, 2))


# -- spectral normalisation of the value function's last hidden layer ---------------------------

VECTOR_ONLY = ("gail", "airl", "gail-sac")  # (their discriminators take vector observations)
# (bc: no value function; alphazero and muzero: their values are regressed on recorded outcomes and
# search values, with no target network to keep in check)
SPECTRAL = [(name, obs, actions) for name in sorted(set(algorithm.names()) - {"ql", "bc", "alphazero", "muzero"})
            for obs, actions in [((4,), 2), (MINATAR, 3)]
            if not (name in ("ddpg", "td3") and actions) and not (name in VECTOR_ONLY and obs == MINATAR)] + [
    ("sac", (3,), None), ("ddpg", (3,), None)]


def value_learner(name: str, obs, actions, **sets):
    agent = algorithm.load(name)
    args = agent.Args(spectral_norm=True, **({"noisy": False} if name == "rainbow" else {}), **sets)
    obs_space = gym.spaces.Box(0, 1, obs, bool if obs == MINATAR else np.float32)
    action_space = gym.spaces.Discrete(actions) if actions else gym.spaces.Box(-1, 1, (2,), np.float32)
    return agent, args, obs_space, action_space, agent.Learner(obs_space, action_space, args, torch.device("cpu"))


@pytest.mark.parametrize("name, obs, actions", SPECTRAL, ids=[f"{n}-{len(o)}d-{a}" for n, o, a in SPECTRAL])
def test_spectral_norm_is_there_for_every_algorithm_by_config(name, obs, actions):
    """One layer of each value network (online, target, every critic) is normalised, and the actors'
    network takes the learner's published weights as they are."""
    agent, args, obs_space, action_space, learner = value_learner(name, obs, actions)
    count = lambda module: sum(torch.nn.utils.parametrize.is_parametrized(m) for m in module.modules())
    critics = [*getattr(learner, "critics", []), *getattr(learner, "target_critics", [])]
    value_nets = critics or [getattr(learner, k) for k in ("net", "target") if hasattr(learner, k)]
    assert [count(net) for net in value_nets] == [1] * len(value_nets)
    if critics:  # SAC, TD3, DDPG: the critics, not the policy
        assert count(learner.net if hasattr(learner, "net") else learner.policy) == 0
    actor_net = agent.make_policy(obs_space, action_space, args)
    actor_net.load_state_dict({k: torch.as_tensor(v) for k, v in learner.policy_state().items()})
    core = agent.make_core(args, 0, 1, 2, seed=0)
    acted, _ = core.greedy(actor_net, np.stack([obs_space.sample() for _ in range(2)]), core.initial_state(2),
                           np.ones(2, bool))
    assert len(acted) == 2


def test_a_spectrally_normalised_layer_has_largest_singular_value_one():
    torch.manual_seed(0)  # (the power iteration's convergence depends on the draw: no test before may decide it)
    agent = algorithm.load("dqn")
    net = agent.make_policy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2),
                            agent.Args(spectral_norm=True, hidden=32))
    layer = net.torso[2]
    assert torch.nn.utils.parametrize.is_parametrized(layer) and not torch.nn.utils.parametrize.is_parametrized(
        net.torso[0])
    with torch.no_grad():
        torch.nn.init.normal_(layer.parametrizations.weight.original, std=3.0)
        for _ in range(30):  # power iterations: one per training forward
            net(torch.zeros(1, 4))
        net.eval()
        assert torch.linalg.matrix_norm(layer.weight, ord=2).item() == pytest.approx(1.0, abs=1e-3)
    assert net.q_values(np.zeros((1, 4), np.float32)).shape == (1, 2)  # the numpy twin steps aside


def test_spectral_norm_that_cannot_apply_is_refused_in_one_line():
    agent = algorithm.load("rainbow")
    with pytest.raises(ValueError, match=re.escape("algo.spectral_norm does not combine with noisy layers")):
        agent.make_policy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2),
                          agent.Args(spectral_norm=True))
    with pytest.raises(ValueError, match="no hidden linear layer to normalise"):
        networks.spectral_norm_penultimate(torch.nn.Linear(3, 1))


# -- network randomisation (algo.torso=KIND+randconv) -------------------------------------------

def test_random_convolution_draws_new_weights_per_image_in_training_and_is_the_identity_in_eval():
    torch.manual_seed(0)
    layer = networks.RandomConvolution(3, clean=0.0)
    x = torch.rand(2, 3, 8, 8).repeat(2, 1, 1, 1)  # images 0 and 2 (1 and 3) are the same
    y, again = layer(x), layer(x)
    assert y.shape == x.shape and not torch.allclose(y[0], y[2]) and not torch.allclose(y, again)
    one = torch.zeros(1, 3, 5, 5)
    one[0, :, 2, 2] = 1.0  # a point: its image under a 3x3 convolution is the (flipped) kernel, within 1 pixel
    assert layer(one)[0, :, 1:4, 1:4].abs().sum() > 0 and layer(one)[0, :, 0].abs().sum() == 0
    rms = lambda t: t.pow(2).mean().sqrt().item()
    assert rms(layer(x)) == pytest.approx(rms(x), rel=0.5)  # Xavier (fan in = fan out): the scale stays near
    assert torch.equal(networks.RandomConvolution(3, clean=1.0)(x), x)
    layer.eval()
    assert torch.equal(layer(x), x)


@pytest.mark.parametrize("name", ["dqn", "ppo", "sac", "r2d2"])
def test_network_randomisation_is_there_for_any_algorithm_by_config(name):
    """The learner's forward passes see randomised images; the actors (eval mode) see them clean."""
    agent = algorithm.load(name)
    args = agent.Args(torso="minatar+randconv")
    obs_space = gym.spaces.Box(0, 1, MINATAR, bool)
    net = agent.make_policy(obs_space, gym.spaces.Discrete(3), args)
    assert sum(isinstance(m, networks.RandomConvolution) for m in net.modules()) >= 1
    torso = next(m for m in net.modules()
                 if isinstance(m, nn.Sequential) and isinstance(m[1], networks.RandomConvolution))
    obs = torch.as_tensor(np.stack([obs_space.sample() for _ in range(4)]))
    torch.manual_seed(1)
    assert not torch.allclose(torso(obs), torso(obs))  # training mode: fresh random weights each pass
    net.eval()
    torch.testing.assert_close(torso(obs), torso(obs))
    core = agent.make_core(args, 0, 1, 4, seed=0)
    acted, _ = core.greedy(net, obs.numpy(), core.initial_state(4), np.ones(4, bool))
    assert acted.shape == (4,)
