"""qrl.eager: torch's optimizers without the torch._dynamo import (the learner's start-up).

The patched optimizers must give exactly torch's own results, and a learner must train without
ever importing the compiler; each side runs in a fresh interpreter, since the patch (and the
import it avoids) last for the life of a process."""

import json
import os
import subprocess
import sys

import pytest

STEPS = """
import json, sys, torch
if sys.argv[1] in ("eager", "compiler later"):
    from qrl import eager
    assert eager.skip_compiler_import()
if sys.argv[1] == "compiler later":  # e.g. an algorithm calls torch.compile: torch's own paths again
    import torch._dynamo
out = {}
for name, make in [("Adam", lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-5)),
                   ("AdamW", lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)),
                   ("SGD", lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True)),
                   ("RMSprop", lambda p: torch.optim.RMSprop(p, lr=1e-3)),
                   ("fused Adam (qrl.ops.adam)", lambda p: __import__("qrl.ops").ops.adam(p, lr=1e-2, eps=1e-5))]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    opt = make(net.parameters())
    x = torch.randn(64, 4)
    for _ in range(5):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        opt.step()
        assert torch.is_grad_enabled()  # step restores the grad mode it found
    again = make(net.parameters())
    again.load_state_dict(opt.state_dict())  # checkpoints round-trip
    again.step()
    out[name] = [p.detach().flatten().tolist() for p in net.parameters()]
out["dynamo"] = "torch._dynamo" in sys.modules
print(json.dumps(out))
"""


def run_steps(mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_optimizers_give_torchs_results_without_the_compiler():
    torch_own, eager = run_steps("torch"), run_steps("eager")
    assert torch_own.pop("dynamo") is True  # what the patch is for: torch imports its compiler here
    assert eager.pop("dynamo") is False
    assert eager == torch_own  # bit for bit, every optimizer


def test_torchs_own_paths_once_the_compiler_is_loaded():
    torch_own, later = run_steps("torch"), run_steps("compiler later")
    assert later.pop("dynamo") is True
    torch_own.pop("dynamo")
    assert later == torch_own


def test_compile_opt_out_leaves_torch_alone():
    code = ("import os; os.environ['QRL_TORCH_COMPILE'] = '1'; import torch; from qrl import eager; "
            "print(eager.skip_compiler_import(), torch.optim.Adam.step.__module__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "torch.optim.adam"]


@pytest.mark.parametrize("algo, env, sets", [
    ("ppo", "CartPole-v1", []),
    ("sac", "Pendulum-v1", ["algo.learning_starts=256", "algo.hidden=[32, 32]"]),  # three optimizers
])
def test_learner_trains_without_importing_the_compiler(algo, env, sets, tmp_path):
    """A whole `qrl run` with -X importtime in every process: no process imports torch._dynamo."""
    args = [sys.executable, "-X", "importtime", "-m", "qrl", "run", "--algo", algo, "--env", env, "--actors", "1",
            "--total-steps", "1500", "--target-return", "1e9", "--run-dir", str(tmp_path / "run"), "--no-progress",
            "--set", "run.num_envs=4", "--set", "run.eval_episodes=1", "--set", "run.eval_every_frames=1000"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})  # in the children too
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["updates"] > 0
    learner_imports = proc.stderr  # the learner's stderr is `qrl run`'s
    assert "torch.optim" in learner_imports and "torch._dynamo" not in learner_imports
