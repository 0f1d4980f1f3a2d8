import pytest

from qrl.algorithms import dqn
from qrl.config import ConfigError, RunConfig, build, parse_overrides

SECTIONS = {"run": RunConfig, "algo": dqn.Args}


def test_overrides_are_typed_by_the_dataclass_fields():
    out = parse_overrides(["algo.lr=3e-4", "algo.double=false", "run.seed=7", "run.target_return=none",
                           "algo.buffer_size=50_000"], SECTIONS)
    assert out == {"algo": {"lr": 3e-4, "double": False, "buffer_size": 50000},
                   "run": {"seed": 7, "target_return": None}}
    args = build(dqn.Args, out["algo"], "algo")
    assert args.lr == 3e-4 and args.double is False and args.hidden == dqn.Args().hidden


@pytest.mark.parametrize("item, message", [
    ("algo.learning_rate=1", "unknown config key 'algo.learning_rate'; allowed: algo.hidden"),
    ("nosection=1", "must look like section.key=value"),
    ("model.lr=1", "unknown config section 'model'"),
    ("algo.hidden=wide", "algo.hidden: cannot read 'wide' as int"),
    ("algo.double=maybe", "algo.double: cannot read 'maybe' as bool"),
])
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_overrides([item], SECTIONS)


def test_build_checks_keys_and_types_of_saved_values():
    with pytest.raises(ConfigError, match="unknown config key 'run.colour'"):
        build(RunConfig, {"colour": 1}, "run")
    with pytest.raises(ConfigError, match="run.seed"):
        build(RunConfig, {"seed": 1.5}, "run")
    assert build(RunConfig, {"eval_every_s": 3}, "run").eval_every_s == 3.0


# -- config files (YAML presets) ----------------------------------------------------------------

from pathlib import Path  # noqa: E402

from qrl import api  # noqa: E402
from qrl.config import load_file, to_yaml  # noqa: E402

PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_presets():
    assert {p.stem for p in PRESETS} >= {"dqn-CartPole-v1", "ql-Grid-v0"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_resolves_to_a_checked_config(preset):
    r = api.resolve(str(preset), None, None, ())
    env = r.env.replace("/", "-").replace("qrl-", "")
    # ALGO[-VARIANT]-ENV (rppo-attention-..., and algorithms with a hyphen: gail-sac-...)
    assert preset.stem.startswith(f"{r.algo}-") and preset.stem.endswith(f"-{env}")
    assert r.actors and r.run.total_steps > 0


def test_precedence_defaults_file_flags_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algorithm: dqn\nenv: CartPole-v1\nrun: {seed: 1, total_steps: 5000}\nalgo: {lr: 0.5, hidden: 32}\n")
    r = api.resolve(str(f), None, None, ("algo.lr=0.25", "run.env_kwargs={sutton_barto_reward: true}"),
                     seed=2, total_steps=None)
    assert (r.run.seed, r.run.total_steps) == (2, 5000)  # flag beats file; file beats default
    assert r.algo_values == {"lr": 0.25, "hidden": 32}  # --set beats file
    assert r.run.env_kwargs == {"sutton_barto_reward": True}
    f.write_text("algorithm: dqn\nenv: CartPole-v1\n")
    r2 = api.resolve(str(f), "ql", "qrl/Grid-v0", ())  # flags beat the file's algorithm and env
    assert (r2.algo, r2.env) == ("ql", "qrl/Grid-v0")


@pytest.mark.parametrize("text, message", [
    ("algorithm: dqn\nlearning_rate: 1\n", "unknown key 'learning_rate'"),
    ("algorith: dqn\n", "did you mean 'algorithm'"),
    ("run: [1, 2]\n", "'run' must be a map"),
    ("actors: many\n", "'actors' must be a positive integer"),
    ("run: {seed: 1\n", "is not valid YAML"),
    ("- a\n- b\n", "expected a map"),
])
def test_bad_config_files_are_one_clear_error(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_file(f)


def test_wrong_keys_inside_a_file_name_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algo: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match="unknown config key 'algo.learning_rate'; allowed: algo.hidden"):
        api.resolve(str(f), None, None, ())
    f.write_text("run: {env_kwargs: [1]}\n")
    with pytest.raises(ConfigError, match="run.env_kwargs"):
        api.resolve(str(f), None, None, ())


def test_the_saved_yaml_reads_back_as_the_same_config(tmp_path):
    sets = ("algo.lr=0.003", "run.wrappers=[{name: ClipReward, min_reward: -1, max_reward: 1}]")
    r = api.resolve(None, "dqn", "CartPole-v1", sets)
    f = tmp_path / "config.yaml"
    f.write_text(to_yaml(r.algo, r.env, r.run, build(dqn.Args, r.algo_values, "algo")))
    again = api.resolve(str(f), None, None, ())
    assert again.run == r.run and build(dqn.Args, again.algo_values, "algo") == build(dqn.Args, r.algo_values, "algo")


def test_synchronous_actors_need_weights_after_every_update():
    with pytest.raises(ConfigError, match="run.sync_actors needs run.publish_every=1"):
        api.resolve(None, "dqn", "CartPole-v1", ("run.sync_actors=true",))
    assert api.resolve(None, "ppo", "CartPole-v1", ("run.sync_actors=true",)).run.publish_every == 1


# -- ranges: every value is checked before any process starts -------------------------------------

import dataclasses  # noqa: E402
import time  # noqa: E402
import typing  # noqa: E402

from qrl import algorithm  # noqa: E402
from qrl.acting.actor import ActorConfig  # noqa: E402
from qrl.brokers.server import BrokerConfig  # noqa: E402
from qrl.config import RANGES, check_range  # noqa: E402
from qrl.acting.inference import InferenceConfig  # noqa: E402


def _config_classes():
    return [RunConfig, BrokerConfig, ActorConfig, InferenceConfig, *(algorithm.load(n).Args for n in algorithm.names())]


def _numeric(hint) -> bool:
    options = typing.get_args(hint) or (hint,)
    inner = [a for o in options for a in (typing.get_args(o) or (o,))]
    return any(t in (int, float) for t in inner)


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_numeric_setting_has_a_range_and_its_default_is_in_it(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _numeric(hints[f.name]):
            assert f.name in RANGES, f"{cls.__name__}.{f.name} has no rule in qrl.config.RANGES"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        check_range(f"{cls.__name__}.{f.name}", default)


@pytest.mark.parametrize("item, message", [
    ("run.num_envs=-1", "run.num_envs must be >= 1, got -1"),
    ("run.segment_length=0", "run.segment_length must be >= 1, got 0"),
    ("run.eval_episodes=0", "run.eval_episodes must be >= 1"),
    ("run.checkpoint_every_s=0", "run.checkpoint_every_s must be > 0"),
    ("run.seed=-3", "run.seed must be >= 0"),
    ("algo.batch_size=0", "algo.batch_size must be >= 1, got 0"),
    ("algo.gamma=1.5", "algo.gamma must be <= 1, got 1.5"),
    ("algo.lr=nan", "algo.lr must be a finite number"),
    ("algo.lr=-1e-3", "algo.lr must be > 0"),
    ("algo.n_step=0", "algo.n_step must be >= 1"),
    ("algo.learning_starts=200000", "min_size must lie in [0, capacity]"),  # only wrong together with buffer_size
])
def test_qrl_run_refuses_a_bad_value_in_one_line_before_starting_anything(tmp_path, item, message):
    from test_cli import one_line_error, qrl

    t0 = time.monotonic()
    out = qrl("run", "--set", item, "--run-dir", str(tmp_path / "run"))
    one_line_error(out, message)
    assert not (tmp_path / "run").exists() and time.monotonic() - t0 < 30


def test_learner_and_the_python_api_refuse_bad_values_too(tmp_path):
    import qrl as api
    from test_cli import one_line_error, qrl

    one_line_error(qrl("learner", "--set", "algo.batch_size=0"), "algo.batch_size must be >= 1")
    with pytest.raises(ConfigError, match="run.num_envs must be >= 1"):
        api.train("dqn", "CartPole-v1", config={"run.num_envs": 0}, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_lists_are_checked_element_by_element():
    with pytest.raises(ConfigError, match=r"algo.hidden must be >= 1, got 0"):
        build(algorithm.load("ddpg").Args, {"hidden": [64, 0]}, "algo")


def test_an_environment_that_cannot_be_made_is_refused_before_starting_anything(tmp_path):
    from test_cli import one_line_error, qrl

    one_line_error(qrl("run", "--set", "run.env_kwargs={no_such_option: 1}", "--run-dir", str(tmp_path / "run")),
                   "cannot make environment 'CartPole-v1'", "no_such_option")
    one_line_error(qrl("learner", "--set", "run.wrappers=[{name: ClipReward, no_such_argument: 1}]"),
                   "cannot make environment", "no_such_argument")
    assert not (tmp_path / "run").exists()
