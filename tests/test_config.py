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
