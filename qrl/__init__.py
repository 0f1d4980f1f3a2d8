"""qrl: distributed reinforcement learning as a message queue over ZeroMQ."""

__version__ = "0.1.0"
