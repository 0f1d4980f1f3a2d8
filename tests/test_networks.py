"""The convolutional torsos (qrl/networks.py) by hand: which axis holds the channels, input
scaling, output shapes of each kind, IMPALA's residual blocks, one-line refusals, and the
algorithms' image networks built from them."""

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

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
    (ATARI, "resnet", "algo.torso must be one of auto, nature, impala, impala-se, impala-cbam, minatar, got 'resnet'"),
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
