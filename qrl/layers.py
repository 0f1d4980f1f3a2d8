"""Network layers the algorithms share beyond torch.nn: noisy linear layers (exploration by
parameter noise) and the cosine embedding of quantile fractions (IQN)."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn


class NoisyLinear(nn.Module):
    """A linear layer with learned, factorized Gaussian noise on its weights and biases:
    y = (mu_w + sigma_w * eps_out eps_in^T) x + mu_b + sigma_b * eps_out, eps = sign(n) sqrt(|n|),
    n ~ N(0, 1). Fortunato et al. 2018 (NoisyNet), section 3, factorised noise; initialisation as
    there: mu ~ U(-1/sqrt(p), 1/sqrt(p)), sigma = sigma_0 / sqrt(p) for p inputs.

    The layer uses its mean weights until `sample_noise` is called, and again inside
    `mean_weights` (evaluation). The noise is not part of the state dict: weights published to
    actors carry mu and sigma, and each actor draws its own noise. Not an nn.Linear subclass on
    purpose: qrl.numpy_mlp must not mistake it for one (it would read only part of it)."""

    def __init__(self, in_features: int, out_features: int, std_init: float = 0.5):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self.register_buffer("eps_in", torch.zeros(in_features), persistent=False)
        self.register_buffer("eps_out", torch.zeros(out_features), persistent=False)
        self.noise_on = False
        bound = 1 / math.sqrt(in_features)
        with torch.no_grad():
            self.weight_mu.uniform_(-bound, bound)
            self.bias_mu.uniform_(-bound, bound)
            self.weight_sigma.fill_(std_init * bound)
            self.bias_sigma.fill_(std_init * bound)

    def sample_noise(self, generator: torch.Generator | None = None) -> None:
        scaled = lambda n: (lambda x: x.sign() * x.abs().sqrt())(torch.randn(n, generator=generator))
        self.eps_in.copy_(scaled(self.in_features))
        self.eps_out.copy_(scaled(self.out_features))
        self.noise_on = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.noise_on:
            return nn.functional.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        return nn.functional.linear(x, weight, self.bias_mu + self.bias_sigma * self.eps_out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def noisy_layers(net: nn.Module) -> list[NoisyLinear]:
    return [m for m in net.modules() if isinstance(m, NoisyLinear)]


def sample_noise(net: nn.Module, generator: torch.Generator | None = None) -> None:
    """Draw new noise for every noisy layer of net (none: nothing happens)."""
    with torch.no_grad():
        for layer in noisy_layers(net):
            layer.sample_noise(generator)


@contextlib.contextmanager
def mean_weights(net: nn.Module) -> Iterator[None]:
    """Inside: every noisy layer of net uses its mean weights (the deterministic policy)."""
    layers = noisy_layers(net)
    before = [layer.noise_on for layer in layers]
    for layer in layers:
        layer.noise_on = False
    try:
        yield
    finally:
        for layer, on in zip(layers, before):
            layer.noise_on = on


class CosineEmbedding(nn.Module):
    """IQN's embedding of quantile fractions tau [B, N] -> [B, N, out]:
    ReLU(sum_i cos(pi i tau) w_i + b) for i = 0 .. dim - 1. Dabney et al. 2018 (IQN), equation 4."""

    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.register_buffer("frequencies", math.pi * torch.arange(dim, dtype=torch.float32), persistent=False)
        self.linear = nn.Linear(dim, out_features)

    def forward(self, taus: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(torch.cos(taus.unsqueeze(-1) * self.frequencies)))
