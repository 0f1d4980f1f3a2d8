"""The replay broker (installed as qrl.brokers)."""
