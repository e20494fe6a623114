"""Where a BERT-base LoRA training step goes on this CPU (docs/benchmarks.md, "Where a
BERT-base LoRA step goes on this CPU"): `torch.profiler` over two steps of PEFT's LoRA
(r=8 on query and value, random weights, dropout 0) at batch 8 x 128 tokens, the share
of each operator's self time; the forward's matrix-product rate against a bare sgemm of
the FFN's shape on the same threads; and three separate Q/K/V products (forward and the
backward's input gradient) against one fused product, taking turns.

Usage: python bench/cpu_step_profile.py [--threads N]
The last line printed is one JSON object with the figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from adapt.latency import machine

LAYERS, HIDDEN, FFN, BATCH, SEQ = 12, 768, 3072, 8, 128


def profile_step() -> dict[str, float]:
    """Each operator's share of the self CPU time of two LoRA steps, and the forward GEMM rate."""
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    model = get_peft_model(BertForSequenceClassification(config), LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS"))
    ids, labels = torch.randint(5, 30000, (BATCH, SEQ)), torch.randint(0, 2, (BATCH,))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    step(), step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(), step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {e.key: round(e.self_cpu_time_total / total, 4) for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]}
    addmm = next(e for e in events if e.key == "aten::addmm").self_cpu_time_total / 1e6 / 2  # seconds per step
    rows = BATCH * SEQ
    forward_flop = LAYERS * (4 * 2 * rows * HIDDEN * HIDDEN + 2 * 2 * rows * HIDDEN * FFN)
    return {"shares": shares, "forward_gemm_gflops": round(forward_flop / addmm / 1e9, 1)}


def best_ms(fn, calls: int = 20) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1000


def gemm_figures(rounds: int = 3) -> dict[str, object]:
    """Bare sgemm rate of the FFN's shape, and separate vs fused Q/K/V products, in turns."""
    rows = BATCH * SEQ
    x, b = torch.randn(rows, HIDDEN), torch.randn(HIDDEN, FFN)
    weights = [torch.randn(HIDDEN, HIDDEN) for _ in range(3)]
    fused_weight, grad = torch.cat(weights), torch.randn(rows, 3 * HIDDEN)
    grads = grad.split(HIDDEN, 1)

    def separate() -> None:
        [torch.nn.functional.linear(x, w) for w in weights]
        sum(g @ w for g, w in zip(grads, weights))

    def fused() -> None:
        torch.nn.functional.linear(x, fused_weight)
        grad @ fused_weight

    turns: dict[str, list[float]] = {"separate": [], "fused": []}
    for _ in range(rounds):
        turns["separate"].append(round(best_ms(separate), 2))
        turns["fused"].append(round(best_ms(fused), 2))
    sgemm_ms = best_ms(lambda: x @ b)
    return {"sgemm_gflops": round(2 * rows * HIDDEN * FFN / sgemm_ms / 1e6, 1), "qkv_ms": turns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({**profile_step(), **gemm_figures(), "threads": args.threads, "machine": machine()}))


if __name__ == "__main__":
    main()
