#!/usr/bin/env bash
# Every GPU check of the project in one prepared run, for a lent CUDA machine with
# PyTorch, transformers, PEFT and timm installed but not adapt (see docs/benchmarks.md).
# Before: `pip wheel --no-deps -w .whl .` plus wheels of anything the machine lacks
# (pydantic and its three dependencies). Figures go to $OUT (default: ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L
python3 -c "import torch, transformers, peft, timm, adapt.host; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'timm', timm.__version__)"
# training speed and memory against PEFT; the variants show what CUDA graphs and compile each add
timeout "${TRAIN_LIMIT:-420}" python3 bench/train_vs_peft.py --device cuda \
    --variant no_cuda_graphs:fast.cuda_graphs=false --variant no_compile:fast.compile=false --variant-cases bert_base_b32 \
    --out "$OUT/train_vs_peft.json" 2>&1 | grep -v -i -E "warn|Writing model shards" | tee "$OUT/train_vs_peft.log"
# export latency on this machine's CPU (16 cores), for issue 6's ratios
timeout "${EXPORT_LIMIT:-120}" python3 bench/export_latency.py --runs 20 2>&1 | grep -v -i warn | tail -3 | tee "$OUT/export_latency.log"
