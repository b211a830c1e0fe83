#!/usr/bin/env bash
# The CUDA variant of `make bench`, for a session with an NVIDIA GPU. NOT RUN YET: the session that
# wrote it had no GPU (see BENCHMARKS.md). GPT-2 XL shape with random weights, float32 and float16
# exports, served with --execution-provider cuda (every hidden state, then --gather-outputs on); the
# notebook's pipeline runs on the same GPU in PyTorch. Prints the tables (sentences per second, share
# of the GPU's measured matrix-product rate, fp16's angle error against fp32) and appends them to
# bench/cache/gpu-results.md.
#
#   bench/gpu.sh                 # 54 sentences, as the notebook
#   BENCH_REPEAT=40 bench/gpu.sh # the 54 sentences 40 times over: throughput rather than latency
#
# Needs: an NVIDIA driver for CUDA 13 (onnxruntime-gpu 1.31.1 and torch 2.15.0+cu132 are CUDA 13
# builds), ~30 GB of disk and ~16 GB of RAM for the two exports, and PyPI for the set-up below
# (everything is cached: a second run goes straight to the measurement, ~5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

repeat="${BENCH_REPEAT:-1}"
runs="${BENCH_RUNS:-5}"
py=.venv-tools/bin/python

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# Set-up, as scripts/bench does, plus the GPU runtime and the `cuda` build.
if [ ! -x "$py" ]; then
  python3 -m venv .venv-tools
  .venv-tools/bin/pip install -r tools/requirements.txt
fi
"$py" -c "import grpc, grpc_tools" 2>/dev/null || .venv-tools/bin/pip install -r bench/requirements.txt
"$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'"
scripts/fetch-ort gpu
cargo build --release --features cuda --bins

# The exports are made on the CPU; the fp16 one is checked against fp32 PyTorch by the export tool.
# Both with --gather-outputs (re-exported if the cache holds a plain one): one graph serves every
# hidden state or only the vectors read, so the runs below measure what that saves on the GPU.
export_xl() { # out dir, extra export_model.py arguments
  grep -q gather_index "$1/model.json" 2>/dev/null ||
    "$py" tools/export_model.py --random-init --preset gpt2-xl --seed 0 --gather-outputs --out "$1" "${@:2}"
}
export_xl bench/cache/gpt2-xl
export_xl bench/cache/gpt2-xl-fp16 --fp16

# ONNX Runtime's CUDA provider loads cuBLAS, cuDNN and the CUDA runtime by name: use the copies the
# torch wheel installed (site-packages/nvidia/*/lib) rather than assuming a system CUDA.
nvidia_libs=$("$py" - <<'PY'
import glob, os, sysconfig
print(":".join(sorted(glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "**", "lib"), recursive=True))))
PY
)
export LD_LIBRARY_PATH="${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ORT_DYLIB_PATH="$PWD/.ort-gpu/lib/libonnxruntime.so"

# One pass per batch: on a GPU a pass costs kernel launches rather than a read of every weight from
# memory, so splitting by length is less likely to pay (compare with --pass-cost-tokens 16).
for gather in off on; do
  BENCH_COMMAND="bench/gpu.sh (BENCH_REPEAT=$repeat, --gather-outputs $gather)" ROTATIONS_ORT_PASS_COST_TOKENS=off \
    ROTATIONS_GATHER_OUTPUTS=$gather \
    "$py" bench/bench.py --device cuda --models gpt2-xl,gpt2-xl-fp16 --runs "$runs" --repeat "$repeat" \
    --save-angles --server-arg=--execution-provider=cuda --json "bench/cache/gpu-last-run-gather-$gather.json" |
    tee -a bench/cache/gpu-results.md
done
