#!/usr/bin/env bash
# The accelerator check (issue 28), a few minutes on a machine with an NVIDIA GPU and a CUDA build
# of torch (make install TORCH_VERSION=<a CUDA wheel>, or torch installed in .venv by hand). Never a
# test dependency: it measures, and prints what it measured.
#   1. learner updates/s on the GPU: the Nature CNN and IMPALA's ResNet at batches 32 and 256
#   2. central inference frames/s with the policy on the GPU (qrl inference --device cuda), N = 8 and 16
#      env-only actors on Pong, against actors running the policy themselves on their CPUs
#   3. PPO on Pong (configs/ppo-ALE-Pong-v5.yaml, learner on the GPU, ale-py's vector env) for whatever
#      of PONG_S seconds remain: the live line's frames/s and the evaluations, in runs/gpu-check-pong
# Usage: bash scripts/gpu_check.sh        (PONG_S=300 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}
PONG_S=${PONG_S:-300}
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', ok,
      torch.cuda.get_device_name(0) if ok else ''); sys.exit(0 if ok else 'no CUDA device: nothing to check')"
cd scripts
echo "== 1. learner updates/s on cuda"
"$PY" bench_learner.py --device cuda --cases dqn-cnn-32,dqn-cnn,dqn-resnet-32,dqn-resnet-256 --rounds 3
echo "== 2. central inference on cuda, Pong"
"$PY" bench_inference.py --envs ALE/Pong-v5 --n 8,16 --rounds 2 --seconds 10 --set device=cuda
echo "== 3. PPO Pong for ${PONG_S} s"
cd ..
timeout --signal=INT "$PONG_S" "$PY" -m qrl run --config configs/ppo-ALE-Pong-v5.yaml --run-dir runs/gpu-check-pong \
  --set actor.vector_env=ale || true
"$PY" -m qrl plot runs/gpu-check-pong -o runs/gpu-check-pong/curve.png 2>/dev/null || true
tail -3 runs/gpu-check-pong/learner.log 2>/dev/null || ls runs/gpu-check-pong
