"""Numpy inference for small MLP policies on actors.

An actor runs its policy on a handful of observations per step. At that size torch's per-call
overhead dominates: a 4-64-64-2 MLP forward costs about 32 us in torch at batch 1-8 and about
9 us as three numpy matmuls (measured on the 2-core machine, see issue 10), and SyncVectorEnv(8)
CartPole stepped 84.6k steps/s with numpy inference against 52.9k with torch.

`compile_mlp` turns an `nn.Sequential` of Linear layers and elementwise activations (or a
single Linear) into a numpy function that reads the module's own parameter storage: the arrays
are views of the torch tensors, so `load_state_dict` (which copies into the parameters in place)
updates them too. Anything else (convolutions, recurrent cells, custom modules) returns None and
keeps the torch path. Results equal torch's up to float32 rounding (the matmuls may sum in
another order), so actions derived from them (argmax, sampling with the same uniforms) are the
same except for ties within rounding (tests/test_numpy_mlp.py).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

ACTIVATIONS: dict[type, Callable[[np.ndarray], np.ndarray]] = {
    nn.ReLU: lambda x: np.maximum(x, 0, out=x),
    nn.Tanh: lambda x: np.tanh(x, out=x),
    nn.Identity: lambda x: x,
}


def _view(param: torch.Tensor) -> np.ndarray:
    """The parameter's storage as a numpy array (no copy: it follows in-place updates)."""
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise TypeError("numpy inference needs float32 parameters on the CPU")
    return param.detach().numpy()


class NumpyMLP:
    """x -> Linear/activation layers -> y, in numpy, on the module's live parameters."""

    def __init__(self, layers: list[tuple[str, object]]):
        self.layers = layers

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if self.layers[0][0] != "linear":
            x = x.copy()  # activations work in place: never on the caller's array
        for kind, what in self.layers:
            if kind == "linear":
                weight, bias = what
                x = x @ weight.T
                if bias is not None:
                    x += bias
            else:
                x = what(x)
        return x


def compile_mlp(module: nn.Module) -> NumpyMLP | None:
    """A numpy twin of a Linear, or of a Sequential of Linear and ReLU/Tanh/Identity/Flatten
    layers; None for anything else (that module keeps torch inference)."""
    modules = list(module) if isinstance(module, nn.Sequential) else [module]
    layers: list[tuple[str, object]] = []
    try:
        for m in modules:
            if nn.utils.parametrize.is_parametrized(m):
                return None  # its weight is computed at each forward (spectral norm): no live storage to view
            if isinstance(m, nn.Linear):
                layers.append(("linear", (_view(m.weight), None if m.bias is None else _view(m.bias))))
            elif type(m) in ACTIVATIONS:
                layers.append(("activation", ACTIVATIONS[type(m)]))
            elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
                continue  # inputs are flattened to [B, features] anyway
            else:
                return None
    except TypeError:
        return None
    return NumpyMLP(layers) if layers else None


def sample_categorical(logits: np.ndarray, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Actions drawn by inverse CDF with the given uniforms in [0, 1), and their log-probabilities.
    Both the numpy and the torch policy paths sample this way, so the same logits and uniforms
    give the same actions."""
    logits = logits.astype(np.float64)
    logp_all = logits - logits.max(axis=1, keepdims=True)
    logp_all -= np.log(np.exp(logp_all).sum(axis=1, keepdims=True))
    cdf = np.cumsum(np.exp(logp_all), axis=1)
    actions = np.minimum((cdf < uniforms[:, None] * cdf[:, -1:]).sum(axis=1), logits.shape[1] - 1)
    return actions.astype(np.int64), logp_all[np.arange(len(actions)), actions].astype(np.float32)


_twins: "weakref.WeakKeyDictionary[nn.Module, Any]" = weakref.WeakKeyDictionary()


def numpy_twin(owner: nn.Module, build: Callable[[], Any]) -> Any:
    """build()'s numpy twin of owner, made once per module object. Kept outside the module, so a
    deepcopy (a target network) or a pickled module never carries views of another one's weights."""
    twin = _twins.get(owner, _twins)
    if twin is _twins:
        twin = _twins[owner] = build()
    return twin
