"""Tree search for the agents that plan: batched PUCT MCTS (mcts.py) and its plain reference (reference.py)."""
