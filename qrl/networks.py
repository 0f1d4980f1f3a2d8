"""Convolutional torsos for image observations, shared by every algorithm that takes images.

An algorithm picks one with `algo.torso` (its Args field):

    nature    Mnih et al. 2015's three convolutions (Atari's 84x84 frames; 36 pixels or more)
    impala    Espeholt et al. 2018's ResNet: three stacks of a convolution, a max-pool and two
              residual blocks (16, 32, 32 channels), as IMPALA, Procgen and Sample Factory use it
    minatar   Young & Tian 2019's one 3x3 convolution of 16 channels (MinAtar's 10x10 grids)
    auto      nature for images of 36 pixels and more on each side, else minatar

impala-se and impala-cbam add squeeze-and-excitation or CBAM attention to impala's residual blocks.
Any of them followed by `+randconv` (impala+randconv) puts network randomisation in front of it: in
training forward passes (the learner's; actors and evaluation run the network in eval mode and see
clean images), each image goes through a 3x3 convolution with fresh random weights, or with
probability 0.1 stays as it is (Lee et al. 2020; per-image weights as RAD's random_conv, Laskin et
al. 2020), so the torso learns features that survive changes of colour and texture.

Every torso ends in a linear layer of the algorithm's width and a ReLU, so the layers after it
(heads, an LSTM, IQN's fraction embedding) are those of the vector case.

Images arrive as the environment gives them: [C, H, W] (qrl's Atari wrappers) or [H, W, C]
(gymnasium's convention: MinAtar, Procgen, rendered pixels). The channel axis is the first one
when it is strictly the smallest, else the last (a 10x10x10 MinAtar grid is [H, W, C]). Pixels of
dtype uint8 are scaled to [0, 1]; bool and float observations are used as they are.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Callable

import torch
from torch import nn

TORSOS = ("auto", "nature", "impala", "impala-se", "impala-cbam", "minatar")
RANDOM_CONV = "+randconv"
NATURE_MIN_PIXELS = 36  # the three convolutions (kernels 8, 4, 3; strides 4, 2, 1) need 36 x 36


class PartsShape(tuple):
    """The shape (N,) of a Dict or Tuple observation with image parts, flattened into one vector
    (qrl/envs/wrappers.py FlattenStructured), with where each part lies in it: the networks give
    it a torso like an image's (PartsTorso), so every algorithm takes it where it takes images."""

    parts: tuple  # (name, shape, start, size, is_image) per part, in the vector's order

    def __new__(cls, size: int, parts: tuple) -> "PartsShape":
        shape = super().__new__(cls, (size,))
        shape.parts = parts
        return shape


def obs_shape(obs_space: Any) -> tuple[int, ...]:
    """What the networks are built from: the space's shape, or its PartsShape when it has parts."""
    parts = getattr(obs_space, "parts", None)
    return PartsShape(int(obs_space.shape[0]), parts) if parts else tuple(obs_space.shape)


def is_image(obs_shape: tuple[int, ...]) -> bool:
    """Whether observations go through a torso (convolutions; a PartsTorso for images among parts)."""
    return len(obs_shape) == 3 or isinstance(obs_shape, PartsShape)


def channels_last(obs_shape: tuple[int, ...]) -> bool:
    """Whether an image observation is [H, W, C] (else [C, H, W])."""
    return not obs_shape[0] < min(obs_shape[1], obs_shape[2])


def chw(obs_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of an image observation."""
    if channels_last(obs_shape):
        return obs_shape[2], obs_shape[0], obs_shape[1]
    return obs_shape[0], obs_shape[1], obs_shape[2]


class ImageInput(nn.Module):
    """Observations [B, *obs_shape] as the convolutions take them: float [B, C, H, W], uint8
    pixels scaled to [0, 1]."""

    def __init__(self, channels_last: bool):
        super().__init__()
        self.channels_last = channels_last

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()
        return x.permute(0, 3, 1, 2) if self.channels_last else x

    def extra_repr(self) -> str:
        return "channels_last" if self.channels_last else "channels_first"


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions that keep the shape (IMPALA); with an
    attention block, the residual branch is reweighted by it before the sum (SE-ResNet, CBAM)."""

    def __init__(self, channels: int, attention: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.attention = attention(channels) if attention is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv1(torch.relu(self.conv0(torch.relu(x))))
        return x + (branch if self.attention is None else self.attention(branch))


class SqueezeExcitation(nn.Module):
    """Channel attention: each channel scaled by sigmoid(W2 relu(W1 mean over the image)).
    Hu et al. 2018 (reduction 4: IMPALA's stacks have only 16-32 channels)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate(x.mean((2, 3))))[:, :, None, None]


class CBAM(nn.Module):
    """Convolutional block attention: channel attention from the average- and max-pooled features
    through one shared MLP, then spatial attention from a 7x7 convolution over the channels' mean
    and max. Woo et al. 2018."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = torch.sigmoid(self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3))))
        x = x * channel[:, :, None, None]
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class RandomConvolution(nn.Module):
    """Network randomisation in training mode: each image [C, H, W] through its own 3x3 convolution
    (C -> C channels, same size) with Xavier-normal random weights drawn at every forward, except
    with probability `clean`, which keeps the image. The identity in eval mode. No parameters."""

    def __init__(self, channels: int, clean: float = 0.1):
        super().__init__()
        self.channels, self.clean = channels, clean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        B, C, H, W = x.shape
        std = math.sqrt(2.0 / (2 * C * 9))  # Xavier normal: fan in = fan out = C * 3 * 3
        weights = torch.randn(B * C, C, 3, 3, device=x.device) * std
        randomised = nn.functional.conv2d(x.reshape(1, B * C, H, W), weights, padding=1, groups=B).reshape(B, C, H, W)
        keep = torch.rand(B, 1, 1, 1, device=x.device) < self.clean
        return torch.where(keep, x, randomised)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, clean={self.clean}"


def nature_convolutions(channels: int) -> list[nn.Module]:
    return [nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU()]


def impala_convolutions(channels: int, depths: tuple[int, ...] = (16, 32, 32),
                        attention: Callable[[int], nn.Module] | None = None) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for depth in depths:
        layers += [nn.Conv2d(channels, depth, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                   ResidualBlock(depth, attention), ResidualBlock(depth, attention)]
        channels = depth
    return [*layers, nn.ReLU()]


def minatar_convolutions(channels: int) -> list[nn.Module]:
    return [nn.Conv2d(channels, 16, 3, stride=1), nn.ReLU()]


CONVOLUTIONS: dict[str, Callable[[int], list[nn.Module]]] = {
    "nature": nature_convolutions, "impala": impala_convolutions, "minatar": minatar_convolutions,
    "impala-se": functools.partial(impala_convolutions, attention=SqueezeExcitation),
    "impala-cbam": functools.partial(impala_convolutions, attention=CBAM)}


def torso_kind(obs_shape: tuple[int, ...], kind: str) -> str:
    """The torso `kind` names for this image shape ('auto' resolved, +randconv dropped); one line for
    a bad choice."""
    kind = kind.removesuffix(RANDOM_CONV)
    if kind not in TORSOS:
        raise ValueError(f"algo.torso must be one of {', '.join(TORSOS)} (each optionally +randconv), got {kind!r}")
    _, height, width = chw(obs_shape)
    if kind == "auto":
        return "nature" if min(height, width) >= NATURE_MIN_PIXELS else "minatar"
    if kind == "nature" and min(height, width) < NATURE_MIN_PIXELS:
        raise ValueError(f"algo.torso nature needs images of at least {NATURE_MIN_PIXELS}x{NATURE_MIN_PIXELS} "
                         f"pixels, got {height}x{width}: use impala or minatar")
    return kind


class PartsTorso(nn.Module):
    """A flattened Dict or Tuple observation [B, N] -> features [B, width]: each image part
    (uint8 pixels, scaled to [0, 1]) through an image torso of its own, the vector parts as they
    are, all concatenated, then linear(total, width) and a ReLU: stable-baselines3's
    CombinedExtractor (a CNN per image key, vectors flattened) with a layer that mixes them."""

    def __init__(self, shape: PartsShape, width: int, kind: str = "auto",
                 linear: Callable[[int, int], nn.Module] = nn.Linear):
        super().__init__()
        self.slices = [(start, start + size, tuple(part_shape), image)
                       for _, part_shape, start, size, image in shape.parts]
        self.images = nn.ModuleList(image_torso(s, width, kind) for _, _, s, image in self.slices if image)
        total = sum(width if image else end - start for start, end, _, image in self.slices)
        self.mix = nn.Sequential(linear(total, width), nn.ReLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        obs, features, images = obs.float(), [], iter(self.images)
        for start, end, shape, image in self.slices:
            part = obs[:, start:end]
            features.append(next(images)(part.reshape((-1,) + shape) / 255.0) if image else part)
        return self.mix(torch.cat(features, dim=1))


def image_torso(obs_shape: tuple[int, ...], width: int, kind: str = "auto",
                linear: Callable[[int, int], nn.Module] = nn.Linear) -> nn.Module:
    """Observations [B, *obs_shape] -> features [B, width]: input scaling, the convolutions of
    `kind`, then linear(flattened, width) and a ReLU (`linear`: e.g. a noisy layer). Dict or Tuple
    observations with image parts: a PartsTorso."""
    if isinstance(obs_shape, PartsShape):
        return PartsTorso(obs_shape, width, kind, linear)
    channels, height, width_px = chw(obs_shape)
    convolutions = nn.Sequential(*CONVOLUTIONS[torso_kind(obs_shape, kind)](channels))
    with torch.no_grad():
        flat = convolutions(torch.zeros(1, channels, height, width_px)).numel()
    randomise = [RandomConvolution(channels)] if kind.endswith(RANDOM_CONV) else []
    return nn.Sequential(ImageInput(channels_last(obs_shape)), *randomise, *convolutions, nn.Flatten(),
                         linear(flat, width), nn.ReLU())


def spectral_norm_penultimate(*path: nn.Module) -> None:
    """Spectral normalisation (Miyato et al. 2018) of a value function's last hidden linear layer:
    its weight divided by its largest singular value (one power iteration per training forward).
    `path` is the value function's modules in forward order, ending with its output layer; recurrent
    cores are left out. Gogianu et al. 2021 found normalising this one layer of a Q network enough
    to make value learning better conditioned, and normalising every layer too restrictive; the
    output layer stays free, so values keep their scale. Where the value shares a torso with the
    policy (PPO on images), the layer is the torso's last and constrains both."""
    linears = [m for part in path for m in part.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ValueError("algo.spectral_norm: this value function has no hidden linear layer to normalise")
    nn.utils.parametrizations.spectral_norm(linears[-2])


def orthogonal_init(module: nn.Module, gain: float) -> None:
    """Orthogonal weights and zero biases for every convolution and linear layer in module (the
    initialization of the PPO implementations that reach published returns on Atari)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain)
            nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """Observations [B, *obs_shape] -> [B, out_features]: vectors flattened to floats (no
    parameters), images through an image torso of `width` features."""

    def __init__(self, obs_shape: tuple[int, ...], width: int, kind: str = "auto"):
        super().__init__()
        self.torso = image_torso(obs_shape, width, kind) if is_image(obs_shape) else None
        self.out_features = width if self.torso is not None else int(math.prod(obs_shape))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.torso(obs) if self.torso is not None else obs.reshape(obs.shape[0], -1).float()


# -- acting on the network's device ------------------------------------------------------------
# Actor cores get numpy batches and give numpy actions. These put a batch where the network is
# (a central inference server with --device cuda; on the CPU a view, no copy) and bring results
# back, so the same core code runs on either.

def device_of(net: nn.Module) -> torch.device:
    """Where net's parameters (or, for a table of buffers like ql's, its buffers) are."""
    for tensor in itertools.chain(net.parameters(), net.buffers()):
        return tensor.device
    return torch.device("cpu")


def on_device(net: nn.Module, x) -> torch.Tensor:
    """A numpy array (or tensor) as a tensor on net's device."""
    return torch.as_tensor(x, device=device_of(net))


def to_numpy(t: torch.Tensor):
    """A tensor's values as a numpy array on the CPU."""
    return t.detach().cpu().numpy()
