"""Generation speed of adapt's exported decoder against transformers' generate, in one run.

GPT-2-small shape (124M parameters, random weights, seeded), batch 1, a 128-token
prompt and exactly 64 new tokens (greedy; the end token is never chosen, so every
contender does the same work):

* ``transformers``: ``model.generate`` in PyTorch (eager mode, its default SDPA
  attention, its KV cache on): the baseline;
* ``onnx``, ``onnx_optimized``, ``onnx_int8``, ``onnx_int4``: the files adapt's ONNX
  exporter writes for a text-generation run (one cached decoder graph; the same
  ``export`` and ``derive`` code), run by adapt's numpy loop (adapt.onnx_predict.generate_ids,
  what the exported predict.py runs), ONNX Runtime with as many threads as torch;
* ``optimum``: Optimum's ORTModelForCausalLM, where it is installed.

The contenders take turns (``--rounds`` rounds, ``--runs`` generations each), so drift
of the machine reaches all alike; a ratio is the median of per-round ratios with their
range (``to_transformers``: tokens/s over transformers'). File sizes are reported with
their ratio to the fp32 file. The last line printed is one JSON object.

Usage: python bench/generation.py [--rounds N] [--runs N] [--new-tokens N] [--prompt N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from adapt.latency import cpu_flags

PAUSE_S = 0.5  # idle time before each turn, so the previous contender's threads stop spinning


def build(work: Path):
    """The random GPT-2-small as a text-generation BuiltModel, and the exported files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from adapt.export_stage import DeriveContext
    from adapt.host import make_host
    from adapt.interfaces import BuiltModel
    from adapt.plugins.transformers.cached_decoder import CausalLMWithCache

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(attn_implementation="eager")).eval()
    built = BuiltModel(CausalLMWithCache(model), "text-generation", 0)
    host = make_host(autoload=False)
    backbone, exporter = host.backbones.get("transformers"), host.exporters.get("onnx")
    inputs, io = backbone.example_inputs(built, 2), backbone.onnx_io(built)
    path = exporter.export(backbone.export_form(built.model, inputs, io), inputs, io, work / "model.onnx", None)  # as the export stage does
    threads = torch.get_num_threads()
    ctx = DeriveContext(work, {"quantization": "dynamic"}, "all", False, 1.0, [], lambda p: 1.0, lambda p: {"median": 0.0, "p90": 0.0, "threads": threads})
    derived = exporter.derive(path, ctx)
    files = {"onnx": path, **{f.name: f.path for f in derived.forms if f.runnable}}
    return model, files


def contenders(model, files: dict[str, Path], prompt: list[int], new_tokens: int) -> dict[str, Callable[[], int]]:
    """name -> a call that generates ``new_tokens`` tokens and returns how many it made."""
    import onnxruntime as ort
    from transformers import GenerationConfig

    from adapt.onnx_predict import generate_ids

    ids = torch.tensor([prompt])
    config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True, pad_token_id=0, eos_token_id=model.config.eos_token_id)

    def transformers_generate() -> int:
        with torch.no_grad():
            return int(model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config).shape[1] - len(prompt))

    calls: dict[str, Callable[[], int]] = {"transformers": transformers_generate}
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    for name, path in files.items():
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        calls[name] = lambda s=session: len(generate_ids(s, prompt, -1, max_new_tokens=new_tokens))  # eos -1: never stops early
    optimum = _optimum(model, files["onnx"].parent / "hf", ids, config)
    if optimum is not None:
        calls["optimum"] = optimum
    return calls


def _optimum(model, folder: Path, ids: torch.Tensor, config) -> Callable[[], int] | None:
    """Optimum's own export of the same weights (from a local folder) and its generate."""
    try:
        from optimum.onnxruntime import ORTModelForCausalLM
    except ImportError:
        return None
    model.save_pretrained(folder)
    ort_model = ORTModelForCausalLM.from_pretrained(folder, export=True, use_cache=True)
    return lambda: int(ort_model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config).shape[1] - ids.shape[1])


def take_turns(calls: dict[str, Callable[[], int]], rounds: int, runs: int) -> dict[str, list[float]]:
    """Each contender's median tokens/s in each round."""
    per_round: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(rounds):
        for name, call in calls.items():
            time.sleep(PAUSE_S)
            rates = []
            for _ in range(runs):
                started = time.perf_counter()
                made = call()
                rates.append(made / (time.perf_counter() - started))
            per_round[name].append(statistics.median(rates))
    return per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=128)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adapt-bench-gen-"))
    model, files = build(work)
    prompt = torch.randint(1000, 40000, (args.prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    per_round = take_turns(contenders(model, files, prompt, args.new_tokens), args.rounds, args.runs)
    ratios = {name: [a / b for a, b in zip(rates, per_round["transformers"])] for name, rates in per_round.items() if name != "transformers"}
    fp32 = files["onnx"].stat().st_size
    import onnxruntime

    print(json.dumps({
        "case": f"gpt2-small shape (124M, random), batch 1, prompt {args.prompt}, {args.new_tokens} new tokens, greedy",
        "tokens_per_s": {name: round(statistics.median(rates), 1) for name, rates in per_round.items()},
        "to_transformers": {name: {"ratio": round(statistics.median(r), 2), "range": [round(min(r), 2), round(max(r), 2)]} for name, r in ratios.items()},
        "bytes": {name: path.stat().st_size for name, path in files.items()},
        "size_to_fp32": {name: round(path.stat().st_size / fp32, 3) for name, path in files.items()},
        "optimum": "installed" if "optimum" in per_round else "not installed (not measured)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "cpu_flags": cpu_flags(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }))


if __name__ == "__main__":
    main()
