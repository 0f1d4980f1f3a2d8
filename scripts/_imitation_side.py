"""The `imitation` library's side of scripts/bench_imitation.py, run with the Python of a venv of its
own (imitation pins older gymnasium and stable-baselines3 than qrl's). Trains its GAIL or AIRL on
stable-baselines3's PPO from transitions in an .npz, evaluates the deterministic policy every
--eval-every env steps (10 episodes), and prints one JSON line per evaluation: wall-clock time,
env steps, mean return. Stops at the target or the budget.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
from imitation.algorithms.adversarial.airl import AIRL
from imitation.algorithms.adversarial.gail import GAIL
from imitation.data import types
from imitation.data.wrappers import RolloutInfoWrapper
from imitation.rewards.reward_nets import BasicRewardNet, BasicShapedRewardNet
from imitation.util.networks import RunningNorm
from imitation.util.util import make_vec_env
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--algo", choices=["gail", "airl"], required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--demos", required=True, help=".npz with obs, acts, next_obs, dones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, required=True)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--eval-every", type=int, required=True)
    p.add_argument("--ppo", required=True, help="JSON: n_envs and PPO's keyword arguments")
    p.add_argument("--disc", required=True, help="JSON: demo_batch_size, n_disc_updates_per_round")
    a = p.parse_args()
    started = time.time()
    ppo = json.loads(a.ppo)
    n_envs = ppo.pop("n_envs")
    rng = np.random.default_rng(a.seed)
    venv = make_vec_env(a.env, n_envs=n_envs, rng=rng, post_wrappers=[lambda env, _: RolloutInfoWrapper(env)])
    d = np.load(a.demos)
    demos = types.Transitions(obs=d["obs"], acts=d["acts"], next_obs=d["next_obs"], dones=d["dones"],
                              infos=np.array([{}] * len(d["obs"])))
    learner = PPO("MlpPolicy", venv, seed=a.seed, **ppo)
    net_cls = BasicRewardNet if a.algo == "gail" else BasicShapedRewardNet
    reward_net = net_cls(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
    trainer_cls = GAIL if a.algo == "gail" else AIRL
    trainer = trainer_cls(demonstrations=demos, venv=venv, gen_algo=learner, reward_net=reward_net,
                          allow_variable_horizon=True, **json.loads(a.disc))
    eval_env = gym.make(a.env)
    steps = 0
    while steps < a.budget:
        trainer.train(a.eval_every)
        steps += a.eval_every
        mean, _ = evaluate_policy(learner, eval_env, n_eval_episodes=10, deterministic=True)
        print(json.dumps({"time": time.time(), "frames": steps, "mean_return": float(mean),
                          "since_start_s": time.time() - started}), flush=True)
        if mean >= a.target:
            break


if __name__ == "__main__":
    main()
