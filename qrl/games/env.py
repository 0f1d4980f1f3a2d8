"""Board games as gymnasium environments: qrl/TicTacToe-v0 and qrl/ConnectFour-v0.

Without an opponent the environment is self-play: each step is a move by the player whose turn it
is, the observation is the board as that player sees it (qrl/games/rules.py: plane 0 their stones,
plane 1 the other's), and the reward is +1 to the player whose move wins. One policy plays both
sides, as AlphaZero's actors do. An episode's return is 1 for a decided game, 0 for a draw.

With `opponent` (random, minimax, mcts:N; qrl/games/opponents.py) the agent holds one seat and the
environment plays the other: the reward is the agent's, +1 a win, -1 a loss, 0 a draw. The agent
moves first or second as `agent_first` says (None: at random on each reset), so evaluations play
both colours. `run.eval_env_kwargs: {opponent: minimax}` evaluates a self-play run against one.

info["action_mask"] (int8, one per action, PettingZoo's convention) holds the legal moves. A move
that is not legal raises IllegalMove and leaves the game as it was: it is never played.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from qrl.games.opponents import make_opponent
from qrl.games.rules import make_game


class IllegalMove(ValueError):
    pass


class BoardGameEnv(gym.Env):
    metadata = {"render_modes": ["ansi"], "render_fps": 2}

    def __init__(self, game: str = "tictactoe", opponent: str | None = None, agent_first: bool | None = None,
                 render_mode: str | None = None):
        self.game = make_game(game)
        self.opponent = make_opponent(opponent, self.game) if opponent else None
        self.agent_first, self.render_mode = agent_first, render_mode
        self.observation_space = gym.spaces.Box(0.0, 1.0, self.game.shape, np.float32)
        self.action_space = gym.spaces.Discrete(self.game.num_actions)
        self.position = self.game.initial(1)[0]
        self.moves = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position, self.moves = self.game.initial(1)[0], 0
        if self.opponent is not None:
            first = self.agent_first if self.agent_first is not None else bool(self.np_random.integers(2))
            if not first:
                self._play(self.opponent.move(self.position, self.np_random))
        return self._observation(), self._info()

    def step(self, action):
        action = int(action)
        if not 0 <= action < self.game.num_actions or not self.game.legal(self.position[None])[0, action]:
            raise IllegalMove(f"move {action} is not legal in this {self.game.name} position "
                              f"(legal: {np.flatnonzero(self.legal()).tolist()})")
        reward, done = self._play(action)
        if done or self.opponent is None:
            return self._observation(), reward, done, False, self._info()
        reward, done = self._play(self.opponent.move(self.position, self.np_random))
        return self._observation(), -reward, done, False, self._info()  # the opponent's win is the agent's loss

    def _play(self, action: int) -> tuple[float, bool]:
        nxt, reward, done = self.game.play(self.position[None], np.array([action]))
        self.position, self.moves = nxt[0], self.moves + 1
        return float(reward[0]), bool(done[0])

    def legal(self) -> np.ndarray:
        return self.game.legal(self.position[None])[0]

    def _observation(self) -> np.ndarray:
        return self.position.astype(np.float32)

    def _info(self) -> dict:
        return {"action_mask": self.legal().astype(np.int8)}

    def render(self):
        if self.render_mode == "ansi":
            return self.game.render(self.position, first_to_move=self.moves % 2 == 0) + "\n"
        return None
