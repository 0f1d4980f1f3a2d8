"""The agent contract: what an algorithm gives the runtime, and the registry that finds it.

An algorithm is one module under algorithms/ (installed as qrl.algorithms), or in a user's own
package, that reads top to bottom and ends with an `Agent`:

    AGENT = Agent(name="dqn", Args=Args, make_policy=make_policy, make_core=EpsilonGreedy,
                  make_items=make_items, Learner=Learner, table_config=table_config,
                  history=lambda args: History(after=args.n_step - 1))

The parts, after Acme's actor core / adder / learner split:

    Args            frozen dataclass of hyperparameters (config section "algo"); `batch_size` is
                    the items per batch the learner asks the broker for
    make_policy     (obs_space, action_space, args) -> torch.nn.Module that actors run
    make_core       (args, index, count, num_envs, seed) -> ActorCore: acting (forward and select),
                    exploration, recurrent state
    make_items      (Rollout, args) -> {field: array}: the items pushed to the broker
    initial_priorities  (Rollout, args) -> [items] priorities for a prioritized table, or None
                    (the broker's default: the largest priority seen so far)
    history         args -> History(before, after): steps a segment's items need before its own
                    steps (burn-in) and after them (n-step)
    Learner         (obs_space, action_space, args, device) -> a LearnerProtocol (see LearnerBase):
                    update(Batch) -> Update(metrics, priorities)
    table_config    args -> TableConfig: how the broker stores items
    run_defaults    run-config defaults the algorithm needs, e.g. {"publish_every": 1}
    sample_options  (args, updates) -> extra sample-request fields, e.g. prioritized replay's beta
    demonstrations  DemoUse, for an algorithm that learns from a dataset (run.demos): the demonstration
                    table's items, and how many of them each batch brings beside the agent's own

The runtime on an actor (qrl/acting/actor.py), for every step and every segment of T steps:

    core = agent.make_core(args, index, count, num_envs, seed)
    state = core.initial_state(num_envs)
    core.begin_segment(net)  # once per segment, then for each of its steps:
    outputs, state = core.forward(net, obs, state, episode_start)  # batched, no randomness
    actions, extras = core.select(net, outputs)  # this core's exploration (core.act: both)
    items = agent.make_items(rollout, args)  # rollout: before + T + after steps, then push

A central inference server (qrl/acting/inference.py) holds one core per env-only actor and acts for all
of those waiting at once: act_batched(net, cores, obs_list, states, episode_starts) runs one
forward pass on their concatenated inputs and lets each core select on its rows.

Registration: the entry point group `qrl.algorithms` (name = "package.module:AGENT"); qrl's own
algorithms are registered there in pyproject.toml like anyone else's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import importlib.metadata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

import numpy as np

from qrl import ops
from qrl.brokers.tables import DEMO_PREFIX, IMPORTANCE_WEIGHT, ITEM_ID  # the wire's names, defined once

if TYPE_CHECKING:  # the broker and `qrl run` read this module without importing torch
    import gymnasium as gym
    import torch

    from qrl.brokers.tables import TableConfig

ENTRY_POINT_GROUP = "qrl.algorithms"

RecurrentState = dict[str, np.ndarray]
"""An actor core's state: named arrays with the environments on axis 0 ({} for feed-forward)."""


class UnknownAlgorithm(ValueError):
    pass


# -- the contract ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class History:
    """Steps of history the items of one segment need beyond the segment's own steps."""

    before: int = 0
    """Steps before the segment (burn-in of a recurrent state). At the start of an actor's run,
    where there are none yet, the rollout is padded (Rollout.valid is False there)."""
    after: int = 0
    """Steps after the segment (n-step targets)."""


class ActorCore:
    """How an agent acts: one object per actor (its vector env), on an actor process or, for each
    env-only actor, on a central inference server.

    Acting is split in two (Acme's ActorCore): `forward` runs the network on a batch of
    observations and holds no randomness and no per-core state (it reads only `net`, its inputs
    and self.args), so one call can serve the environments of any number of actors; `select`
    turns this core's rows of the outputs into actions with the core's own exploration schedule
    and random generators. act() is the two in a row; central inference (act_batched) runs
    forward once on many actors' concatenated inputs and hands each core its rows. Outputs are an
    array or tensor with the environments on axis 0, or a tuple or dict of those (or None).

    The recurrent state is explicit: `forward` and `greedy` take the state from the previous step
    and return the next one, and `episode_start[b]` says that obs[b] is the first observation of
    an episode (reset the state there). Feed-forward cores keep the default state {}."""

    def __init__(self, args: Any, index: int, count: int, num_envs: int, seed: int):
        self.args = args

    def initial_state(self, num_envs: int) -> RecurrentState:
        return {}

    def begin_segment(self, net) -> None:
        """Called before the first step of each segment (noisy nets draw their noise here)."""

    def forward(self, net, obs: np.ndarray, state: RecurrentState, episode_start: np.ndarray
                ) -> tuple[Any, RecurrentState]:
        """The network's outputs for a batch of environments and the next state. The rollout keeps
        each step's state: return new arrays, never change `state` in place."""
        raise NotImplementedError

    def forward_many(self, net, cores: list[ActorCore], obs: list[np.ndarray], states: list[RecurrentState],
                     episode_starts: list[np.ndarray]) -> tuple[Any, RecurrentState]:
        """forward for several cores' environments at once (central inference): by default one call
        on their concatenated inputs. A core whose forward draws from its own generator (a tree
        search's root noise) overrides it so that each core still draws for its own rows."""
        return self.forward(net, np.concatenate(obs), concat_states(states), np.concatenate(episode_starts))

    def select(self, net, outputs: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Exploring actions from this core's rows of the outputs, and per-step extras that travel
        with the rollout. `net` is there for what turns outputs into a distribution (PPO's learned
        log std, action bounds), never to run the network again."""
        raise NotImplementedError

    def act(self, net, obs: np.ndarray, state: RecurrentState, episode_start: np.ndarray
            ) -> tuple[np.ndarray, RecurrentState, dict[str, np.ndarray]]:
        outputs, state = self.forward(net, obs, state, episode_start)
        actions, extras = self.select(net, outputs)
        return actions, state, extras

    def greedy(self, net, obs: np.ndarray, state: RecurrentState, episode_start: np.ndarray
               ) -> tuple[np.ndarray, RecurrentState]:
        """The deterministic policy (evaluation); by default the best of action_values."""
        outputs, state = self.evaluation_outputs(net, obs, state, episode_start)
        return self.action_values(outputs).argmax(axis=1), state

    def evaluation_outputs(self, net, obs: np.ndarray, state: RecurrentState, episode_start: np.ndarray
                           ) -> tuple[Any, RecurrentState]:
        """forward's outputs as the deterministic policy sees them (what greedy and `qrl evaluate
        --render terminal` read): forward's own, unless acting adds randomness inside forward (a
        search's root noise)."""
        return self.forward(net, obs, state, episode_start)

    def action_values(self, outputs: Any) -> np.ndarray:
        """The value of each discrete action [B, num_actions] in forward's outputs (`qrl evaluate
        --render terminal` shows them), when the agent has them; see has_action_values."""
        raise NotImplementedError

    @property
    def has_action_values(self) -> bool:
        return type(self).action_values is not ActorCore.action_values


def act_batched(net, cores: list[ActorCore], obs: list[np.ndarray], states: list[RecurrentState],
                episode_starts: list[np.ndarray]) -> list[tuple[np.ndarray, RecurrentState, dict[str, np.ndarray]]]:
    """Central inference: act for several actors with one forward pass, cores[i] (actor i's
    exploration) selecting on obs[i]'s rows; the same results as each core's act."""
    outputs, state = cores[0].forward_many(net, cores, obs, states, episode_starts)
    results = []
    for core, rows in zip(cores, row_slices(obs)):
        actions, extras = core.select(net, take_rows(outputs, rows))
        results.append((actions, state_rows(state, rows), extras))
    return results


def take_rows(outputs: Any, rows: slice) -> Any:
    """Rows of forward's outputs: of an array or tensor, or of each one in a tuple or dict."""
    if outputs is None:
        return None
    if isinstance(outputs, tuple):
        return tuple(take_rows(o, rows) for o in outputs)
    if isinstance(outputs, dict):
        return {k: take_rows(v, rows) for k, v in outputs.items()}
    return outputs[rows]


class LearnerProtocol(Protocol):
    net: torch.nn.Module
    """The policy network that actors run (its state dict is published as weights)."""
    updates: int

    def update(self, batch: Batch) -> Update:
        """One update on a batch of items."""

    def policy_state(self) -> dict[str, np.ndarray]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def concat_states(states: list[RecurrentState]) -> RecurrentState:
    """Several actors' states as one batch (environments on axis 0)."""
    return {k: np.concatenate([s[k] for s in states]) for k in states[0]} if states and states[0] else {}


def row_slices(parts: list[np.ndarray]) -> list[slice]:
    """Where each part lies in their concatenation along axis 0."""
    ends = np.cumsum([len(p) for p in parts])
    return [slice(int(e - len(p)), int(e)) for p, e in zip(parts, ends)]


def state_rows(state: RecurrentState, rows: slice) -> RecurrentState:
    return {k: v[rows] for k, v in state.items()}


def no_history(args: Any) -> History:
    return History()


def no_sample_options(args: Any, updates: int) -> dict[str, Any]:
    return {}


def no_initial_priorities(rollout: Rollout, args: Any) -> None:
    return None


@dataclass(frozen=True)
class DemoUse:
    """How an algorithm learns from demonstrations (run.demos, a Minari dataset): the learner turns
    the dataset into the items of a demonstration table that the broker serves beside the agent's
    own, and asks for both in one sample request (Batch.demos holds the demonstration items)."""

    batch: Callable[[Any], tuple[int, int]]
    """args -> (agent items, demonstration items) per batch, when the run has demonstrations."""
    items: Callable[[Any, Any, Any], dict[str, np.ndarray]] | None = None
    """(Demonstrations, agent, args) -> the table's items; None: the agent's own make_items on the
    dataset's episodes (demo_rollout_items), for agents whose items need no actor extras."""
    required: bool = False
    """The algorithm learns from demonstrations alone or in part (bc, gail, airl): run.demos must be set."""


@dataclass(frozen=True)
class Agent:
    name: str
    Args: type
    make_policy: Callable[[gym.Space, gym.Space, Any], torch.nn.Module]
    make_core: Callable[[Any, int, int, int, int], ActorCore]
    make_items: Callable[[Rollout, Any], dict[str, np.ndarray]]
    Learner: Callable[[gym.Space, gym.Space, Any, torch.device], LearnerProtocol]
    table_config: Callable[[Any], TableConfig]
    history: Callable[[Any], History] = no_history
    run_defaults: dict[str, Any] = field(default_factory=dict)
    sample_options: Callable[[Any, int], dict[str, Any]] = no_sample_options
    initial_priorities: Callable[[Rollout, Any], np.ndarray | None] = no_initial_priorities
    demonstrations: DemoUse | None = None

    def demo_items(self, demos: Any, args: Any) -> dict[str, np.ndarray]:
        """The demonstration table's items for a dataset (qrl.demos.Demonstrations)."""
        if self.demonstrations is None:
            raise ValueError(f"{self.name} does not learn from demonstrations (run.demos)")
        make = self.demonstrations.items or demo_rollout_items
        return make(demos, self, args)


# -- what every learner repeats --------------------------------------------------------------------

@dataclass
class Batch:
    """A broker batch as the learner's update sees it: item fields as tensors on the learner's
    device, the items' ids in the broker's table, and the prioritized-replay importance weights
    when the table sent them (stable-baselines3's ReplayBufferSamples)."""

    fields: dict[str, torch.Tensor]
    ids: np.ndarray | None = None  # [B] int64; None for a batch made by hand
    weights: torch.Tensor | None = None  # [B] float32
    demos: dict[str, torch.Tensor] | None = None
    """Items of the demonstration table (DemoUse), sampled uniformly beside the agent's."""

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.fields[name]

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def weighted_mean(self, per_item: torch.Tensor) -> torch.Tensor:
        """The batch's loss: the mean over items, importance-weighted under prioritized replay."""
        return per_item.mean() if self.weights is None else (per_item * self.weights).mean()


@dataclass
class Update:
    """What one update gives back: metrics to log, and for prioritized replay the new priorities
    of the batch's items (in batch.ids' order)."""

    metrics: dict[str, float]
    priorities: np.ndarray | None = None


def to_batch(arrays: dict[str, np.ndarray], device: torch.device | str = "cpu") -> Batch:
    """A batch message's arrays as a Batch on `device` (copies: the arrays are read-only views of
    received frames)."""
    import torch

    fields = {k: torch.tensor(v, device=device) for k, v in arrays.items()
              if k not in (ITEM_ID, IMPORTANCE_WEIGHT) and not k.startswith(DEMO_PREFIX)}
    demos = {k[len(DEMO_PREFIX):]: torch.tensor(v, device=device) for k, v in arrays.items()
             if k.startswith(DEMO_PREFIX)}
    weights = arrays.get(IMPORTANCE_WEIGHT)
    return Batch(fields, arrays.get(ITEM_ID), None if weights is None else torch.tensor(weights, device=device),
                 demos or None)


def demo_rollout_items(demos: Any, agent: Agent, args: Any) -> dict[str, np.ndarray]:
    """The agent's own items (make_items) made from a dataset's transitions: the episodes one after
    another in a single env column, with padding for the agent's History around them (an episode
    boundary, as at the start of an actor's run), so n-step targets stop at each episode's end."""
    history = agent.history(args)
    ends = demos.terminated | demos.truncated  # (qrl.demos.load ends every episode with one of the two)
    column = lambda a, fill=0: _pad(a[:, None], history.before, history.after, fill)  # [N, ...] -> [L, 1, ...]
    rollout = Rollout(obs=column(demos.obs), actions=column(demos.action), rewards=column(demos.reward),
                      terminated=column(demos.terminated, False), truncated=column(demos.truncated, True),
                      next_obs=column(demos.next_obs), episode_start=column(np.r_[True, ends[:-1]], True),
                      valid=column(np.ones(len(demos), bool), False), before=history.before, num_steps=len(demos))
    return agent.make_items(rollout, args)


def _pad(a: np.ndarray, before: int, after: int, fill: Any = 0) -> np.ndarray:
    """a with `before` and `after` steps of `fill` around it on axis 0."""
    edge = lambda k: np.full((k, *a.shape[1:]), fill, a.dtype)
    return np.concatenate([edge(before), a, edge(after)])


class LearnerBase:
    """Weights export and checkpoints for a learner whose networks, optimizers and tensors are
    named in `checkpointed` (attributes saved under those names)."""

    checkpointed: ClassVar[tuple[str, ...]] = ("net", "optimizer")
    clipped: ClassVar[tuple[str, ...]] = ("net",)
    """The modules whose gradients optimizer_step clips together to max_grad_norm."""

    def __init__(self, args: Any, device: torch.device):
        self.args, self.device = args, device
        self.updates = 0

    def minimize(self, loss: torch.Tensor, max_grad_norm: float = 0.0) -> None:
        """One optimizer step on `loss` for self.net (gradient norm clipped when > 0); counts the update."""
        self.optimizer_step(loss, max_grad_norm)
        self.updates += 1

    def optimizer_step(self, loss: torch.Tensor, max_grad_norm: float = 0.0, optimizer=None,
                       parameters: list[torch.Tensor] | None = None) -> None:
        """One step of an optimizer (self.optimizer unless given) down `loss`, the gradient's global norm
        over `parameters` (the `clipped` modules' unless given) clipped to max_grad_norm when > 0 (0: no
        clipping); an update may take several (PPO's minibatches, DAAC's value phase)."""
        optimizer = optimizer or self.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm > 0:
            ops.clip_grad_norm(self.clipped_parameters() if parameters is None else parameters, max_grad_norm)
        optimizer.step()

    def clipped_parameters(self) -> list[torch.Tensor]:
        cache = self.__dict__.setdefault("_clipped_parameters", [])
        if not cache:
            cache.extend(p for name in self.clipped for p in self.parameters_of(getattr(self, name)))
        return cache

    def parameters_of(self, module: torch.nn.Module) -> list[torch.Tensor]:
        """module.parameters() as a list kept between updates: walking the module tree on every
        update costs a small network's learner several percent of its time."""
        cache = self.__dict__.setdefault("_parameter_lists", {})  # modules hash by identity
        if module not in cache:
            cache[module] = list(module.parameters())
        return cache[module]

    def policy_state(self) -> dict[str, np.ndarray]:
        # A copy, not a view: the frames are sent zero-copy after this returns, while the optimizer
        # keeps updating the parameters in place.
        return {k: v.detach().to("cpu", copy=True).numpy() for k, v in self.net.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        saved = {}
        for name in self.checkpointed:
            part = getattr(self, name)
            saved[name] = part.state_dict() if hasattr(part, "state_dict") else part.detach().clone()
        return {**saved, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        for name in self.checkpointed:
            part = getattr(self, name)
            if hasattr(part, "load_state_dict"):
                part.load_state_dict(state[name])
            else:
                with torch.no_grad():
                    part.copy_(state[name])
        self.updates = state["updates"]


def rate_tolerance(batch_size: int, samples_per_insert: float) -> float:
    """The rate limiter's slack, in samples: room for one batch, and for 64 inserts' worth of samples,
    so actors and learner each run in bursts without waiting on every single insert."""
    return max(batch_size, 64 * samples_per_insert) if samples_per_insert else 0.0


def replay_table(args: Any, samples_per_insert: float, **options) -> TableConfig:
    """A replay table from the usual Args fields (buffer_size, learning_starts, batch_size)."""
    from qrl.brokers.tables import TableConfig

    return TableConfig(capacity=args.buffer_size, sampler=options.pop("sampler", "uniform"),
                       min_size=args.learning_starts, samples_per_insert=samples_per_insert,
                       tolerance=rate_tolerance(args.batch_size, samples_per_insert), **options)


# -- the registry ----------------------------------------------------------------------------------

@functools.cache
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every registered algorithm, without importing any."""
    return sorted(_entry_points())


def check_name(name: str) -> None:
    if name not in _entry_points():
        hint = "" if _entry_points() else " (none registered: is qrl installed? pip install -e .)"
        raise UnknownAlgorithm(f"unknown algorithm '{name}'; available: {', '.join(names())}{hint}")


@functools.cache
def load(name: str) -> Agent:
    check_name(name)
    agent = _entry_points()[name].load()
    if not isinstance(agent, Agent):
        raise UnknownAlgorithm(f"entry point '{name}' of group {ENTRY_POINT_GROUP} is a "
                               f"{type(agent).__name__}, not a qrl.algorithm.Agent")
    return agent


# -- rollouts and items ----------------------------------------------------------------------------

@dataclass
class Rollout:
    """Consecutive steps of a vector env; index [t, b] is step t of env b.

    Steps [before, before + num_steps) are the segment's own; the History the agent declared lies
    around them. obs[t] -> actions[t] -> rewards[t], terminated[t], truncated[t], next_obs[t].
    next_obs[t] is the true successor of obs[t] (the final observation when the episode ended at
    t), so obs[t + 1] != next_obs[t] across episode ends. episode_start[t]: obs[t] begins an
    episode. states: the actor core's state passed to act() at step t."""

    obs: np.ndarray  # [L, B, *obs_shape]
    actions: np.ndarray  # [L, B, *action_shape]
    rewards: np.ndarray  # [L, B] float32
    terminated: np.ndarray  # [L, B] bool
    truncated: np.ndarray  # [L, B] bool
    next_obs: np.ndarray  # [L, B, *obs_shape]
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # [L, B, ...] from act()
    episode_start: np.ndarray | None = None  # [L, B] bool
    states: dict[str, np.ndarray] = field(default_factory=dict)  # [L, B, ...]
    valid: np.ndarray | None = None  # [L, B] bool: False for padding before an actor's first step
    before: int = 0
    num_steps: int = 0

    def __post_init__(self):
        L, B = self.rewards.shape
        if self.episode_start is None:
            self.episode_start = np.zeros((L, B), dtype=bool)
        if self.valid is None:
            self.valid = np.ones((L, B), dtype=bool)
        if not self.num_steps:
            self.num_steps = L - self.before


def padding_step(obs: np.ndarray, actions: np.ndarray, extras: dict[str, np.ndarray], state: RecurrentState,
                 ) -> dict[str, Any]:
    """One step of the history before an actor's first step (History.before): zeros, an episode
    boundary on every env (so nothing bootstraps or carries state across it), and valid False."""
    n = len(obs)
    return dict(obs=np.zeros_like(obs), actions=np.zeros_like(actions), rewards=np.zeros(n, np.float32),
                terminated=np.zeros(n, bool), truncated=np.ones(n, bool), next_obs=np.zeros_like(obs),
                extras={k: np.zeros_like(v) for k, v in extras.items()}, episode_start=np.ones(n, bool),
                state={k: np.zeros_like(v) for k, v in state.items()}, valid=np.zeros(n, bool))


def stack_steps(steps: list[dict[str, Any]], before: int, num_steps: int) -> Rollout:
    """A Rollout from per-step dicts (the actor's window)."""
    stack = lambda key: np.stack([s[key] for s in steps])
    first = steps[0]
    return Rollout(**{k: stack(k) for k in ("obs", "actions", "rewards", "terminated", "truncated", "next_obs",
                                             "episode_start", "valid")},
                   extras={k: np.stack([s["extras"][k] for s in steps]) for k in first["extras"]},
                   states={k: np.stack([s["state"][k] for s in steps]) for k in first["state"]},
                   before=before, num_steps=num_steps)


SEGMENTS_AT_ONCE = 4
"""A segment may bring this many times the items of the run's own segments (table.max_segment_items):
an env-only actor may step up to this many times the run's num_envs."""
DEFAULT_VALUE_LIMIT = 1e6
"""RunConfig.value_limit's default: the largest magnitude of an item value the broker takes where
the spaces give no bound (rewards, returns, unbounded observations)."""
RETURN_LIMIT_FACTOR = 1000.0
"""Episode returns sum many steps: they may reach value_limit times this."""


def field_limits(schema, obs_space, action_space, value_limit: float) -> tuple[tuple[str, float, float], ...]:
    """The value limits of an item schema's fields (ItemSchema.limits). "obs" and "next_obs" get the
    observation space's bounds (a float Box's widened by its width on each side: environments
    overshoot their declared bounds a little) and "action" a discrete action space's (an index out of
    range would stop the learner); every other float field, and those that are unbounded,
    +-value_limit (continuous actions too: a Gaussian policy's raw samples leave the Box). Integer
    fields other than those, bools and frame references get none."""
    continuous = np.issubdtype(getattr(action_space, "dtype", None) or np.int64, np.floating)
    spaces = {"obs": obs_space, "next_obs": obs_space, **({} if continuous else {"action": action_space})}
    refs = schema.references
    out = []
    for name, dtype, shape in schema.fields:
        kind = np.dtype(dtype).kind
        if name in refs or kind == "b":
            continue
        bounds = _bounds(spaces.get(name), shape, kind == "f", value_limit)
        if bounds is not None:
            out.append((name, float(bounds[0]), float(bounds[1])))
    return tuple(out)


def _bounds(space, shape: tuple[int, ...], floating: bool, value_limit: float) -> tuple[float, float] | None:
    """A field's limits: its space's bounds where they apply, a float's cut to +-value_limit (None: no limit)."""
    bounds = _space_bounds(space, shape) if space is not None else None
    if not floating:
        return bounds
    if bounds is None:
        return -value_limit, value_limit
    return max(bounds[0], -value_limit), min(bounds[1], value_limit)


def observation_limits(obs_space, value_limit: float) -> tuple[float, float]:
    """[lo, hi] of the observations an actor may report, as field_limits gives them for "obs"."""
    bounds = _bounds(obs_space, tuple(obs_space.shape or ()), np.issubdtype(obs_space.dtype, np.floating),
                     value_limit)
    return bounds if bounds is not None else (-math.inf, math.inf)


def _space_bounds(space, shape: tuple[int, ...]) -> tuple[float, float] | None:
    """[lo, hi] of every value of a space, when the field holds the space's values (alone, or as a
    sequence: its shape ends with the space's) and they are bounded."""
    import gymnasium as gym

    space_shape = tuple(space.shape or ())
    if shape[len(shape) - len(space_shape):] != space_shape:
        return None
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start), int(space.start + space.n - 1)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(space.start.min()), int((space.start + space.nvec - 1).max())
    if isinstance(space, gym.spaces.MultiBinary):
        return 0, 1
    if isinstance(space, gym.spaces.Box) and space.low.size:
        lo, hi = float(np.min(space.low)), float(np.max(space.high))
        if np.issubdtype(space.dtype, np.integer):
            info = np.iinfo(space.dtype)
            return None if lo <= info.min and hi >= info.max else (lo, hi)  # (pixels: the dtype bounds them)
        if np.isfinite(lo) and np.isfinite(hi):
            return lo - (hi - lo), hi + (hi - lo)
    return None


def item_schema(agent: Agent, net, obs_space, action_space, args, num_envs: int, num_steps: int,
                store_frames: bool = True, frame_links: bool = False,
                value_limit: float | None = DEFAULT_VALUE_LIMIT):
    """The broker's item schema for this algorithm (sent with `register`), found by running its own
    actor path once on sampled observations: the actor core, act, make_items. Also how many env frames
    one item covers, so the broker can check each segment's `frames`, and for image observations
    (unless store_frames is off) which fields travel as frame references (qrl/frames.py) and how
    many frames an item brings (fewer where segments link to the previous one's frames)."""
    from qrl import frames
    from qrl.brokers.tables import FrameSpec, ItemSchema

    core = agent.make_core(args, 0, 1, num_envs, 0)
    state = core.initial_state(num_envs)
    obs = np.stack([obs_space.sample() for _ in range(num_envs)])
    start = np.ones(num_envs, dtype=bool)
    actions, _, extras = core.act(net, obs, state, start)  # one step, repeated: only shapes and dtypes matter
    history = agent.history(args)
    done = np.zeros(num_envs, dtype=bool)
    step = dict(obs=obs, actions=actions, rewards=np.zeros(num_envs, np.float32), terminated=done,
                truncated=done, next_obs=obs, extras=extras, episode_start=start, state=state,
                valid=np.ones(num_envs, bool))
    rollout = stack_steps([step] * (history.before + num_steps + history.after), history.before, num_steps)
    items = agent.make_items(rollout, args)
    n_items = len(next(iter(items.values())))
    if (num_steps * num_envs) % n_items:
        raise ValueError(f"{agent.name}: make_items made {n_items} items from {num_steps * num_envs} frames: "
                         "an item must cover a whole number of env frames")
    plan = None
    if store_frames and getattr(obs_space, "shape", None) is not None and obs_space.dtype is not None:
        plan = frames.plan(agent.make_items, rollout, args, obs_space.shape, obs_space.dtype)
    if plan is None:
        schema = ItemSchema.of(items, (num_steps * num_envs) // n_items)
    else:
        items, _ = frames.indexed_items(agent.make_items, rollout, args, plan.layout, plan.fields)
        frames_per_item = (num_steps * num_envs) // n_items
        per_item = plan.per_item
        if frame_links:  # one new frame per env step; only the self-contained segments resend the overlap
            per_item = frames_per_item + max(0.0, plan.per_item - frames_per_item) / frames.KEYFRAME_EVERY
        spec = FrameSpec(plan.layout.dtype, plan.layout.frame_shape, plan.fields, per_item)
        schema = ItemSchema.of(items, frames_per_item, spec)
    if value_limit is None:
        return schema
    return dataclasses.replace(schema, limits=field_limits(schema, obs_space, action_space, value_limit),
                               return_limit=value_limit * RETURN_LIMIT_FACTOR)
