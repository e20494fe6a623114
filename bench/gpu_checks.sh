#!/usr/bin/env bash
# Every GPU check of the project in one prepared run, for a lent CUDA machine with
# PyTorch, transformers, PEFT and timm installed but not adapt (see docs/benchmarks.md).
# Before: `pip wheel --no-deps -w .whl .` plus wheels of anything the machine lacks or
# has in another version than a user gets from PyPI (pydantic and its three
# dependencies; onnxruntime), for the machine's Python (3.12 on the H200 of
# 2026-11-27: `pip download --only-binary=:all: --python-version 3.12 --platform
# manylinux2014_x86_64 pydantic-core==VERSION -d .whl`). Figures go to $OUT (default: ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L
python3 -c "import torch, transformers, peft, timm, onnxruntime, adapt.host; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'timm', timm.__version__, 'onnxruntime', onnxruntime.__version__)"
quiet() { grep -v -i -E "warn|Writing model shards"; }
# 1. training speed against PEFT (4 epochs each, the last two timed); the logs keep
#    recompilations and skipped CUDA graphs
TORCH_LOGS=recompiles,perf_hints timeout "${TRAIN_LIMIT:-300}" python3 bench/train_vs_peft.py --device cuda --no-full \
    --cases bert_base_b32 minilm_b32 mobilenetv3_large_b128 --logs "$OUT/logs" --out "$OUT/train_vs_peft.json" 2>&1 | quiet | tail -4 | cut -c1-400
# 2. BERT-base b32 again, inductor's caches now warm, with its compile workers off
#    (TORCHINDUCTOR_COMPILE_THREADS=1): on a warm run those workers' start-up is the
#    suspected cause of a slow second epoch; if so, every epoch after the first is fast here
TORCHINDUCTOR_COMPILE_THREADS=1 timeout "${TRAIN_LIMIT2:-100}" python3 bench/train_vs_peft.py --device cuda --cases bert_base_b32 --no-full \
    --out "$OUT/train_vs_peft_warm.json" 2>&1 | quiet | tail -2 | cut -c1-400
# 3. export latency on this machine's CPU (16 cores), for issue 6's ratios
timeout "${EXPORT_LIMIT:-110}" python3 bench/export_latency.py --runs 10 --rounds 5 2>&1 | quiet | tail -1 | tee "$OUT/export_latency.json"
# 4. CUDA paths of CPU-built features: a cached linear probe trains like the uncached
#    loop (same losses), quantisation-aware fine-tuning runs on CUDA (issues 19, 20)
timeout "${CUDA_PATHS_LIMIT:-120}" python3 bench/gpu_cuda_paths.py 2>&1 | quiet | tail -1 | tee "$OUT/cuda_paths.json"
# 5. issue 29: the 0.63B decoder (Qwen2.5-0.5B shape, untied) trained with LoRA on every linear layer in bf16,
#    batch 8 at 512 tokens, plain / gradient checkpointing / 4-bit NF4 base, each next to PEFT + transformers on
#    the same model and batches: samples/s, peak GPU memory, model FLOPs utilisation (4N per token), same loss.
#    Needs bitsandbytes on the machine for the 4-bit case. Not run yet: no GPU was lent to issue 29's sessions.
timeout "${DECODER_LIMIT:-240}" python3 bench/train_vs_peft.py --device cuda \
    --cases qwen05_b8_seq512 qwen05_b8_seq512_ckpt qwen05_b8_seq512_4bit --out "$OUT/decoder_training.json" 2>&1 | quiet | tail -4 | cut -c1-600
# 6. issue 29: train.strategy fsdp on one GPU and DDP side by side is not possible with one device; the sharded
#    path is tested on the CPU (tests/reliability/test_fsdp.py, gloo, 2 processes)
