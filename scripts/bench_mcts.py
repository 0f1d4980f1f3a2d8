"""Tree search speed: qrl's batched PUCT search (qrl/search/mcts.py, numpy, one network call per
simulation for a whole batch of games) against the same search written the plain way
(qrl/search/reference.py: a Python object per node, one network call per leaf), side by side in
one run, on tic-tac-toe and Connect Four with AlphaZero's network (untrained: speed only).

    python scripts/bench_mcts.py [--games 64] [--simulations 50] [--rounds 3] [--quick]

Prints simulations per second of one process (one core: torch on one thread, as an actor runs it)
for both and their ratio (medians over rounds), with the network and without it (uniform priors,
zero values: the tree's own cost), then games per second of a whole local cluster (`qrl run` on the
tic-tac-toe preset: one actor process, the learner beside it, evaluations off).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import parser, print_table, rate, save_results  # noqa: E402
from qrl import envs  # noqa: E402
from qrl.algorithms.alphazero import Args, evaluator, make_policy  # noqa: E402
from qrl.games.rules import make_game  # noqa: E402
from qrl.search.mcts import RulesModel, SearchConfig, search  # noqa: E402
from qrl.search.reference import reference_search  # noqa: E402

ENVS = {"tictactoe": "qrl/TicTacToe-v0", "connect4": "qrl/ConnectFour-v0"}


def openings(game, n: int, moves: int, seed: int) -> np.ndarray:
    """n positions a few random moves into a game (the search's usual work, not an empty board)."""
    rng, positions = np.random.default_rng(seed), game.initial(n)
    for _ in range(moves):
        positions, _, _ = game.play(positions, np.array([rng.choice(np.flatnonzero(m)) for m in game.legal(positions)]))
    return positions


def evaluators(name: str) -> dict:
    game = make_game(name)
    obs_space, action_space = envs.spaces(ENVS[name])
    net = make_policy(obs_space, action_space, Args(game=name, channels=32, blocks=2))
    uniform = lambda p: (np.zeros((len(p), game.num_actions)), np.zeros(len(p)))
    return {"network": evaluator(net), "no network": uniform}


def sims_per_s(game, evaluate, positions: np.ndarray, config: SearchConfig, batched: bool) -> float:
    model, legal = RulesModel(game, evaluate), game.legal(positions)
    logits, _ = evaluate(positions)
    start = time.perf_counter()
    if batched:
        search(model, positions, legal, logits, config)
    else:
        for i in range(len(positions)):
            reference_search(model, positions[i], legal[i], logits[i], config)
    return len(positions) * config.simulations / (time.perf_counter() - start)


def cluster_games_per_s(seconds: float) -> dict:
    """A local cluster on the tic-tac-toe preset for `seconds`: games and moves per second, between
    the learner's first and last progress records (the start-up left out)."""
    from qrl.metrics import read

    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run([sys.executable, "-m", "qrl", "run", "--config", "configs/alphazero-TicTacToe-v0.yaml",
                              "--run-dir", tmp, "--no-progress", "--total-steps", "10000000", "--target-return", "1e9",
                              "--set", "run.eval_every_frames=0", "--set", f"run.max_seconds={seconds}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
        if run.returncode != 0:
            raise SystemExit(f"the cluster run failed: {run.stderr.strip().splitlines()[-1:]}")
        records = [m for m in read(tmp) if m["kind"] == "train" and m.get("episodes")]
    first, last = records[0], records[-1]
    dt = last["elapsed_s"] - first["elapsed_s"]
    return {"seconds": dt, "games_per_s": (last["episodes"] - first["episodes"]) / dt,
            "moves_per_s": (last["frames"] - first["frames"]) / dt}


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--games", type=int, default=64)
    p.add_argument("--simulations", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cluster-seconds", type=float, default=60.0)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.games, a.simulations, a.rounds, a.cluster_seconds = 8, 8, 1, 15.0
    torch.set_num_threads(1)
    config = SearchConfig(simulations=a.simulations)
    rows, results = [], {}
    for name in ENVS:
        game = make_game(name)
        positions = openings(game, a.games, 2, seed=0)
        for kind, evaluate in evaluators(name).items():
            batched = [sims_per_s(game, evaluate, positions, config, True) for _ in range(a.rounds)]
            plain = [sims_per_s(game, evaluate, positions, config, False) for _ in range(a.rounds)]
            b, r = statistics.median(batched), statistics.median(plain)
            results[f"{name}/{kind}"] = {"batched": batched, "reference": plain, "ratio": b / r}
            rows.append([name, kind, rate(b), rate(r), f"{b / r:.1f}x"])
    print(f"simulations per second, one process, {a.games} games x {a.simulations} simulations, "
          f"median of {a.rounds}:")
    table = print_table(["game", "leaf evaluation", "batched (qrl)", "plain Python (reference)", "ratio"], rows)
    cluster = cluster_games_per_s(a.cluster_seconds)
    print(f"\nlocal cluster (one actor process and the learner), tic-tac-toe preset, over {cluster['seconds']:.0f} s: "
          f"{cluster['games_per_s']:,.1f} games/s, {cluster['moves_per_s']:,.0f} moves/s")
    also = {"text": "A local cluster (`qrl run`, one actor process and the learner on the same cores), "
                    "the tic-tac-toe preset, evaluations off:",
            "header": ["preset", "seconds", "games/s", "moves/s"],
            "table": [["alphazero-TicTacToe-v0", f"{cluster['seconds']:.0f}", f"{cluster['games_per_s']:.1f}",
                       f"{cluster['moves_per_s']:,.0f}"]]}
    save_results("mcts", {"games": a.games, "simulations": a.simulations, "rounds": a.rounds, "search": results,
                          "cluster": cluster, **table, "also": [also], "quick": a.quick})
    return 0


if __name__ == "__main__":
    sys.exit(main())
