"""A trained player against a fixed opponent, on both colours: what the board-game checks count."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def play_match(run: str | Path, opponent: str, games_per_colour: int = 50, seed: int = 0) -> dict[str, Any]:
    """Wins, draws and losses of a run's policy (deterministic: search without noise) against
    `opponent` (random, minimax, mcts:N), games_per_colour games moving first and as many second."""
    from qrl.evaluation import load_policy, run_episodes

    policy = load_policy(run)
    tally = {"opponent": opponent, "games": 2 * games_per_colour, "wins": 0, "draws": 0, "losses": 0}
    for first in (True, False):
        kwargs = {**policy.run.env_kwargs, "opponent": opponent, "agent_first": first}
        _, _, returns = run_episodes(policy.agent, policy.args, policy.net, policy.env, games_per_colour,
                                     seed + (0 if first else 10_000), kwargs, policy.run.wrappers)
        colour = "first" if first else "second"
        tally[colour] = {"wins": sum(r > 0 for r in returns), "draws": sum(r == 0 for r in returns),
                         "losses": sum(r < 0 for r in returns)}
        for k in ("wins", "draws", "losses"):
            tally[k] += tally[colour][k]
    tally["win_rate"] = tally["wins"] / tally["games"]
    return tally
