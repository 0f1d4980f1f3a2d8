"""qrl: distributed reinforcement learning as a message queue over ZeroMQ.

`qrl.train(...)` and `qrl.evaluate(...)` (qrl/api.py) run the same processes as the CLI;
`qrl.load(RUN_DIR)` (qrl/policy.py) is a trained policy in plain Python."""

from qrl.callbacks import Callback  # noqa: F401  (light: no torch, no zmq)

__version__ = "0.1.0"


def train(*args, **kwargs):
    from qrl.api import train as _train

    return _train(*args, **kwargs)


def evaluate(*args, **kwargs):
    from qrl.api import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def training(*args, **kwargs):
    from qrl.api import training as _training

    return _training(*args, **kwargs)


def load(path):
    from qrl.policy import load as _load

    return _load(path)


train.__doc__ = "Train with a local cluster (broker, actors, learner); see qrl.api.train."
evaluate.__doc__ = "Deterministic evaluation of a run directory or checkpoint; see qrl.api.evaluate."
training.__doc__ = "train() as an iterator of the run's metrics records; see qrl.api.training."
load.__doc__ = "A trained policy (run directory or checkpoint) with predict() and export_onnx(); see qrl.policy."
