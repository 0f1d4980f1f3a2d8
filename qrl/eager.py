"""torch's optimizers without torch's compiler import.

qrl runs every network eagerly, yet building a torch optimizer (`add_param_group`), stepping it
(`step`), zeroing it and saving it import torch._dynamo, only to mark that code "not to be
compiled": 1.1-2.1 s of CPU on a 2-core machine, as long as importing torch itself, paid by every
learner before its first update (and, in `qrl run`, before the actors get the run's weights).

`skip_compiler_import()` makes those entry points of torch.optim call straight through while
torch._dynamo is not loaded, which is what they do anyway when nothing is being compiled:
- the "disable dynamo here" wrappers (torch._compile._disable_dynamo) look for a cached
  disabled version of the function before importing dynamo to make one; a call-through to the
  function itself is cached there;
- each optimizer's `step` (wrapped to set grad mode and to insert compiler graph breaks) runs
  under the grad mode the wrapper sets, without the graph breaks (no-ops in eager mode).

Once torch._dynamo is loaded in the process (an algorithm that uses torch.compile), all of them
take torch's own path again; set QRL_TORCH_COMPILE=1 to leave torch untouched altogether. Every
change is checked against torch's own results in tests/test_eager.py.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys

import torch
import torch.optim

_applied = False


def _is_disable_wrapper(obj, code) -> bool:
    return getattr(obj, "__code__", None) is code and hasattr(obj, "__wrapped__")


def _call_through(wrapper):
    """What a "disable dynamo here" wrapper finds as its cached disabled function: the function
    itself; once torch._dynamo is loaded, torch's own wrapper again (it makes the real one)."""
    fn = wrapper.__wrapped__

    def call(*args, **kwargs):
        if "torch._dynamo" in sys.modules:
            delattr(fn, "__dynamo_disable")
            return wrapper(*args, **kwargs)
        return fn(*args, **kwargs)

    setattr(fn, "__dynamo_disable", call)


def _eager_step(wrapped_step):
    """An optimizer's step as torch's grad-mode wrapper (_use_grad_for_differentiable) runs it,
    minus its graph breaks; torch's own wrapper once torch._dynamo is loaded."""
    raw = wrapped_step.__wrapped__

    @functools.wraps(raw)
    def step(self, *args, **kwargs):
        if "torch._dynamo" in sys.modules:
            return wrapped_step(self, *args, **kwargs)
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return raw(self, *args, **kwargs)

    return step


def skip_compiler_import() -> bool:
    """Apply the above to every optimizer in torch.optim; return whether it took effect (False:
    turned off, torch._dynamo already loaded, or a torch whose optimizers look different)."""
    global _applied
    if _applied:
        return True
    if os.environ.get("QRL_TORCH_COMPILE") == "1" or "torch._dynamo" in sys.modules:
        return False
    try:  # the wrappers' code objects identify them
        disable_code = sys.modules["torch._compile"]._disable_dynamo(lambda: None).__code__
        grad_wrapper_code = sys.modules["torch.optim.optimizer"]._use_grad_for_differentiable(lambda: None).__code__
    except (KeyError, AttributeError, TypeError):
        return False
    seen = 0
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "torch.optim" or name.startswith("torch.optim.")):
            continue
        for obj in list(vars(module).values()):
            if _is_disable_wrapper(obj, disable_code):
                _call_through(obj)
                seen += 1
            if not (inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)):
                continue
            for attr, member in list(vars(obj).items()):
                if _is_disable_wrapper(member, disable_code):
                    _call_through(member)
                    seen += 1
                elif attr == "step" and getattr(member, "__code__", None) is grad_wrapper_code:
                    # (after an optimizer of this class was built, step is torch's profiling wrapper
                    # around this one: left as it is)
                    setattr(obj, "step", _eager_step(member))
                    seen += 1
    _applied = seen > 0
    return _applied
