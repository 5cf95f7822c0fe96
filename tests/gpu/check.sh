#!/usr/bin/env bash
# The GPU check of issue 14: on one CUDA GPU, in under 8 minutes, with no network beyond the package registries (the
# demo model comes from its PyPI package):
#   1. `harness bench`: sampling and scoring tokens/s on vLLM and transformers, the train step's tokens/s (bf16);
#   2. the demo preset's loop with vLLM sampling and scoring in bf16 on the GPU (stage times in its summary);
#   3. those bf16 GPU log-probs against float32 on the CPU (tests/gpu/agreement.py);
#   4. the pytest checks marked gpu (tests/test_gpu.py).
# Without a GPU it prints why it is skipped and exits 0. Run from anywhere: bash tests/gpu/check.sh
# (HARNESS_DATA: the shared data, as for the tests; a missing .venv is installed with ./install.sh gpu dev).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "tests/gpu/check.sh: skipped: no NVIDIA GPU on this machine (nvidia-smi finds none)"
    exit 0
fi
[ -x .venv/bin/python ] || ./install.sh gpu dev
PY=.venv/bin/python
if ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "tests/gpu/check.sh: skipped: torch in .venv sees no CUDA device (a CPU torch? ./install.sh gpu)"
    exit 0
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
nvidia-smi -L
echo "== 1. harness bench (vLLM and transformers on the GPU, 1 repeat)"
timeout 240 $PY -m harness bench --backends vllm transformers --repeats 1 --save "$out/throughput.yaml"
cat "$out/throughput.yaml"
echo "== 2. the demo's loop on the GPU: vLLM sampling and scoring in bf16, bf16 training (evaluation left out)"
timeout 240 $PY -m harness run demo --runs-dir "$out/runs" backend.score=vllm reward.dtype=bfloat16 \
    train.precision=bf16 eval.enabled=false
echo "== 3. bf16 GPU log-probs against float32 on the CPU"
$PY tests/gpu/agreement.py "$out/runs/demo/iter_1/reward/rewards.jsonl"
echo "== 4. pytest -m gpu"
$PY -m pytest -q -m gpu tests/test_gpu.py
