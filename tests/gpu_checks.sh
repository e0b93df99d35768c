#!/usr/bin/env bash
# Every GPU check and benchmark in one short run, for a lent H100/H200 machine (torch 2.11 image, no network,
# no soundfile). Prepare the wheels it needs once, here, from the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl soundfile cffi pycparser
#
# then run `bash tests/gpu_checks.sh` on the device with carry [".whl"] and a timeout that leaves room for a rerun.
# Prints a short table of figures at the end; the full log goes to $OUT/gpu_checks.log.
set -uo pipefail
OUT=${OUT:-/tmp/maebench_gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_checks.log") 2>&1
export PYTHONUNBUFFERED=1 MAEBENCH_CACHE=/tmp/maebench_cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . \
  && export PYTHONPATH=/tmp/site || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, torchaudio; print('torch', torch.__version__, 'torchaudio', torchaudio.__version__)"

step() { echo; echo "=== $*"; }
step "CUDA tests (fbank under TF32/autocast)"; python3 -m pytest -q -p no:cacheprovider tests/test_frontend.py -k cuda
step "fbank: batched on GPU vs per-utterance torchaudio"; python3 -m maebench bench fbank --device cuda --batch 128
step "pretraining step benchmark, ViT-B, 1024 frames, batch 128, bf16"; python3 -m maebench bench pretrain
step "the same with torch.compile"; python3 -m maebench bench pretrain --compile
step "eager vs compiled steps: variable lengths, layerdrop, recompilations"; python3 -m maebench bench compile
step "pretrain smoke on CUDA (bf16, toy corpus)"
python3 -m maebench pretrain --max-steps 60 --run-dir /tmp/gpu_run --quiet
step "fine-tune probe smoke on CUDA (toy KS2)"
python3 -m maebench eval --task ks2 --probe finetune --upstream /tmp/gpu_run --out /tmp/gpu_eval --quiet
step "linear probe + feature cache on CUDA (toy ESC-50)"
python3 -m maebench eval --task esc50 --probe linear --upstream /tmp/gpu_run --out /tmp/gpu_eval --quiet
