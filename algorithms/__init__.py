"""One readable file per algorithm (installed as qrl.algorithms)."""
