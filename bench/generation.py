"""Generation speed of adapt's exported decoder side by side with onnxruntime-genai and
transformers, on one run's merged model, taking turns.

The case of issue #29: a Llama-shape decoder of 55M parameters (hidden 512, 8 layers,
8 query / 2 key-value heads, MLP 1408, vocabulary 32,000; random, seeded) with a
byte-level BPE trained here on BBC News text, fine-tuned by `adapt run` (LoRA, one
short epoch) so that merged/ and export/ are a real run's. Then:

* ``transformers``: ``generate`` on merged/ in PyTorch (SDPA attention, KV cache on);
* ``adapt <form>``: each ONNX file the run exported (fp32, optimised, int8, int4; fused
  attention, adapt.plugins.transformers.fused_decoder), run by the loop of the exported
  predict.py (``adapt.onnx_predict.generate_ids``: numpy and ONNX Runtime, the cache in
  buffers bound as the graph's past and present);
* ``genai <precision>``: onnxruntime-genai's model builder (``python -m
  onnxruntime_genai.models.builder``, fp32 and int4 for the CPU) run on the same merged/
  folder, and genai's own generator, as a new user would.

Batch 1, a 32-token prompt, exactly 128 new tokens (greedy; the end token cannot stop
anyone early), 2 threads for everyone. Rounds in which the contenders take turns; per
contender: tokens/s (median over rounds, and the range), the first token's latency
(prompt processed and one token out), file size (external data included), and greedy
agreement with transformers (the share of the 128 tokens equal, position by position,
and where the first difference is). The last line printed is one JSON object.

Usage: python bench/generation.py [--work DIR] [--rounds N] [--runs N] [--new-tokens N] [--prompt N]
(needs onnxruntime-genai: pip install 'adapt-edge[bench]')
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from adapt.latency import cpu_flags

SHAPE = {
    "hidden_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 1408,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
THREADS = 2
PAUSE_S = 0.5  # idle time before each turn, so the previous contender's threads stop spinning
#: a contender: makes ``new`` tokens after ``prompt``; returns them and the first token's seconds
Call = Callable[[list[int], int], tuple[list[int], float]]


def checkpoint(folder: Path) -> Path:
    """The random Llama-shape decoder and a fast BPE tokenizer (tokenizer.json, which genai reads)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    sys.path.insert(0, str(Path(__file__).parent))
    from large_decoder import bbc_examples

    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    texts = [r["prompt"] + r["completion"] for r in bbc_examples(2000)]
    bpe.train_from_iterator(
        texts, vocab_size=8000, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False
    )
    end = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=end, bos_token=end, pad_token=end)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    LlamaForCausalLM(LlamaConfig(**SHAPE, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)).save_pretrained(folder)
    return folder


def adapt_run(work: Path, model: Path) -> Path:
    """`adapt run`: LoRA for one short epoch on BBC headlines -> articles, every export form."""
    import yaml

    from large_decoder import bbc_examples

    run = work / "runs" / "llama55"
    if (run / "report.json").exists():
        return run
    data = work / "bbc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bbc_examples(96)))
    config = {
        "name": "llama55", "output_dir": str(work / "runs"), "task": "text-generation",
        "backbone": {"name": "transformers", "checkpoint": str(model), "options": {"max_length": 64}},
        "method": {"name": "lora", "options": {"r": 8, "targets": "all-linear"}},
        "data": {"source": "jsonl", "path": str(data), "split": {"val": 0.1, "test": 0.1, "seed": 0}},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seed": 0},
        "export": {"quantize": "all", "mobile": False, "latency_runs": 3},
    }  # fmt: skip
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    subprocess.run(
        [sys.executable, "-c", "from adapt.cli import main; main()", "run", str(work / "config.yaml")], check=True
    )
    return run


def genai_build(merged: Path, out: Path, precision: str) -> Path:
    """onnxruntime-genai's model builder on merged/, as its docs show, then 2 threads in its config."""
    if not (out / "genai_config.json").exists():
        builder = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(merged), "-o", str(out)]
        subprocess.run([*builder, "-p", precision, "-e", "cpu"], check=True, capture_output=True)
    config = json.loads((out / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = THREADS
    (out / "genai_config.json").write_text(json.dumps(config, indent=4))
    return out


def transformers_call(merged: Path) -> Call:
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(merged).eval()

    def greedy(new: int) -> GenerationConfig:
        return GenerationConfig(do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)

    def call(prompt: list[int], new: int) -> tuple[list[int], float]:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            started = time.perf_counter()
            model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=greedy(1))
            first = time.perf_counter() - started
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=greedy(new))
        return out[0, len(prompt) :].tolist(), first

    return call


def adapt_call(path: Path) -> Call:
    import onnxruntime as ort

    from adapt.onnx_predict import generate_ids

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    kv_cache = json.loads((path.parent / "preprocess.json").read_text()).get("kv_cache", "appended")  # as predict.py

    def call(prompt: list[int], new: int) -> tuple[list[int], float]:
        started = time.perf_counter()
        generate_ids(session, prompt, -1, kv_cache, max_new_tokens=1)
        first = time.perf_counter() - started
        return generate_ids(session, prompt, -1, kv_cache, max_new_tokens=new), first  # end -1: never stops early

    return call


def genai_call(folder: Path) -> Call:
    import onnxruntime_genai as og

    model = og.Model(str(folder))

    def generate(prompt: list[int], new: int) -> list[int]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + new, min_length=len(prompt) + new)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        made: list[int] = []
        while not generator.is_done() and len(made) < new:
            generator.generate_next_token()
            made.append(int(generator.get_next_tokens()[0]))
        return made

    def call(prompt: list[int], new: int) -> tuple[list[int], float]:
        started = time.perf_counter()
        generate(prompt, 1)
        first = time.perf_counter() - started
        return generate(prompt, new), first

    return call


def folder_bytes(path: Path) -> int:
    """A model's bytes as shipped: the .onnx and its data files (genai: every .onnx* in its folder)."""
    from adapt.exporters.onnx_files import total_bytes

    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if ".onnx" in p.name)
    return total_bytes(path)


def take_turns(calls: dict[str, Call], prompt: list[int], new: int, rounds: int, runs: int) -> dict[str, dict]:
    """Each contender's tokens/s per round (median of its runs), first-token seconds and tokens."""
    found: dict[str, dict] = {name: {"rates": [], "first": [], "tokens": None} for name in calls}
    for name, call in calls.items():  # warm-up, and the tokens each one makes
        found[name]["tokens"] = call(prompt, new)[0]
    for _ in range(rounds):
        for name, call in calls.items():
            time.sleep(PAUSE_S)
            rates = []
            for _ in range(runs):
                started = time.perf_counter()
                tokens, first = call(prompt, new)
                rates.append(len(tokens) / (time.perf_counter() - started - first))
                found[name]["first"].append(first)
            found[name]["rates"].append(statistics.median(rates))
    return found


def agreement(tokens: list[int], reference: list[int]) -> dict[str, float | int | None]:
    same = [a == b for a, b in zip(tokens, reference)]
    return {
        "share": round(sum(same) / max(len(reference), 1), 3),
        "first_difference": same.index(False) if False in same else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-generation"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32)
    args = parser.parse_args()
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        sys.exit("bench/generation.py compares with onnxruntime-genai: pip install 'adapt-edge[bench]'")
    torch.set_num_threads(THREADS)
    work = args.work.resolve()
    run = adapt_run(work, checkpoint(work / "checkpoint"))
    report = json.loads((run / "report.json").read_text())
    files = {f"adapt {name}": run / path for name, path in report["forms"].items() if path.endswith(".onnx")}
    genai = {f"genai {p}": genai_build(run / "merged", work / f"genai-{p}", p) for p in ("fp32", "int4")}
    calls: dict[str, Call] = {"transformers": transformers_call(run / "merged")}
    calls.update({name: adapt_call(path) for name, path in files.items()})
    calls.update({name: genai_call(folder) for name, folder in genai.items()})
    prompt = torch.randint(10, 7000, (args.prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    found = take_turns(calls, prompt, args.new_tokens, args.rounds, args.runs)
    reference = found["transformers"]["tokens"]
    rows = {
        name: {
            "tokens_per_s": round(statistics.median(f["rates"]), 1),
            "range": [round(min(f["rates"]), 1), round(max(f["rates"]), 1)],
            "first_token_ms": round(1000 * statistics.median(f["first"]), 1),
            "bytes": folder_bytes({**files, **genai}[name]) if name != "transformers" else None,
            "agreement_with_transformers": agreement(f["tokens"], reference),
        }
        for name, f in found.items()
    }
    import onnxruntime
    import onnxruntime_genai

    print(json.dumps({
        "case": f"Llama shape 55M (random + 1 LoRA epoch), batch 1, prompt {args.prompt}, {args.new_tokens} new tokens, greedy, {THREADS} threads",
        "contenders": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu_flags": cpu_flags(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnxruntime_genai": onnxruntime_genai.__version__},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
