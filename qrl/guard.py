"""The learner's guard against updates that would write NaN or infinity into the weights.

One batch of absurd values (or a numerical accident) can make a loss or a gradient non-finite;
an optimizer step on it makes every weight NaN, and the run never recovers. The guard checks
every optimizer step of the learner (a step pre-hook on each of its optimizers, so algorithms
that step several optimizers themselves are covered too): when a gradient is not finite, the
step is skipped (its gradients are dropped, which every torch optimizer treats as "no update
for these parameters"). Skipped updates are counted in the metrics and the live line; after
MAX_SKIPPED_IN_A_ROW in a row the learner stops with one line that names the metric that went
non-finite. Weights are checked again before they are published (LearnerProcess.publish).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_SKIPPED_IN_A_ROW = 100
"""Updates skipped in a row before the learner gives up: the data or the settings are broken."""


class NonFinite(RuntimeError):
    """The learner cannot go on: its updates keep going non-finite, or its weights did."""


class UpdateGuard:
    """Skips each optimizer step of `learner` whose gradients are not all finite."""

    def __init__(self, learner: Any):
        import torch

        self.optimizers = [v for v in vars(learner).values() if isinstance(v, torch.optim.Optimizer)]
        self.handles = [opt.register_step_pre_hook(self._check_step) for opt in self.optimizers]
        self.skipped_updates = 0  # updates with at least one skipped step, over the run
        self.in_a_row = 0
        self._skipped_step = False

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _check_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params or _finite_grads([p.grad for p in params]):
            return
        for p in params:  # no gradient: the optimizer leaves the parameter (and its moments) as they are
            p.grad = None
        self._skipped_step = True

    def after_update(self, metrics: dict[str, float], updates: int) -> bool:
        """Whether the update just made skipped a step (counted); raises NonFinite after too many in a row."""
        skipped, self._skipped_step = self._skipped_step, False
        if not skipped:
            self.in_a_row = 0
            return False
        self.skipped_updates += 1
        self.in_a_row += 1
        if self.in_a_row >= MAX_SKIPPED_IN_A_ROW:
            bad = [f"{k}={v}" for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
            what = ", ".join(bad[:3]) if bad else "the gradient"
            raise NonFinite(f"{self.in_a_row} updates in a row skipped at update {updates}: {what} is not "
                            "finite (check the data, the reward scale and the learning rate)")
        return True


def _finite_grads(grads: list) -> bool:
    """Whether every gradient is finite, in one fused kernel and one sync where the gradients share a
    device and dtype (the check mixed-precision training runs on every step: 12 us against 25 for
    per-tensor norms on a small MLP's gradients), else by their norms."""
    import torch

    first = grads[0]
    if first.is_floating_point() and all(g.device == first.device and g.dtype == first.dtype for g in grads):
        found = torch.zeros(1, device=first.device)
        try:  # multiplies by one (exact) and raises `found` where a value is not finite
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones(1, device=first.device))
            return not bool(found.item())
        except (RuntimeError, NotImplementedError):  # a device or dtype without the kernel
            pass
    norms = torch._foreach_norm(grads)
    return bool(torch.isfinite(torch.stack([n.to(first.device).float() for n in norms])).all())


def finite_arrays(arrays: dict[str, np.ndarray]) -> bool:
    """Whether every floating array holds only finite values."""
    return all(a.dtype.kind != "f" or bool(np.isfinite(a).all()) for a in arrays.values())
