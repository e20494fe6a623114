"""Inference latency of adapt's exports against PyTorch eager, measured in one run.

Cases (batch 1, on the CPU this runs on, ONNX Runtime with as many threads as torch):

* BERT-base shape (random weights), sequence length 128: PyTorch eager vs
  ONNX fp32, ONNX optimised (fused) and dynamic int8, the files adapt deploys;
* MobileNetV3-Large at 224: PyTorch eager vs ONNX fp32;
* a folded-LoRA MobileNetV3-Large against its base model, both exported: the merged
  model must cost what the base costs.

The contenders of a case take turns (``--rounds`` rounds of ``--runs`` timed calls
each), so that drift of the machine (other load, clock changes) reaches all of them
alike; a ratio is the median of the per-round ratios, with their range
(``to_pytorch``: latency over PyTorch eager's).

Usage: python bench/export_latency.py [--runs N] [--rounds N]. The last line printed
is one JSON object with every figure and ratio, and the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Callable

import torch

from adapt.export_stage import DeriveContext
from adapt.host import make_host
from adapt.latency import machine, ratio, summary, take_turns
from adapt.interfaces import BuiltModel
from adapt.plan import validate_options


def eager(model: torch.nn.Module, inputs: dict) -> Callable[[], object]:
    model.eval()

    def call() -> object:
        with torch.no_grad():
            return model(**inputs)

    return call


def onnx_call(exporter, path: Path, inputs: dict, threads: int) -> Callable[[], object]:
    run = exporter.load(path, threads)
    feed = {k: v.numpy() for k, v in inputs.items()}
    return lambda: run(feed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="timed calls per contender per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds in which the contenders take turns")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    host = make_host(autoload=False)
    onnx = host.exporters.get("onnx")
    results: dict = {}
    work = Path(tempfile.mkdtemp(prefix="adapt-bench-"))

    # BERT-base shape, random weights, eager attention as the bert backbone builds it
    from transformers import BertConfig, BertForSequenceClassification

    from adapt.wrappers import LogitsOnly

    torch.manual_seed(0)
    bert = LogitsOnly(BertForSequenceClassification(BertConfig(num_labels=5, attn_implementation="eager"))).eval()
    backbone = host.backbones.get("bert")
    inputs = {"input_ids": torch.randint(1000, 20000, (1, 128)), "attention_mask": torch.ones(1, 128, dtype=torch.long), "token_type_ids": torch.zeros(1, 128, dtype=torch.long)}
    io = backbone.onnx_io(BuiltModel(bert, "text-classification", 5))
    path = onnx.export(bert, inputs, io, work / "bert" / "model.onnx", None)
    ctx = DeriveContext(path.parent, {"model_type": "bert", "num_heads": 12, "hidden_size": 768}, "int8", False, 1.0, [], lambda p: 1.0, lambda p: {"median": 0.0, "p90": 0.0, "threads": threads})
    derived = onnx.derive(path, ctx)
    forms = {"onnx": path, **{f.name: f.path for f in derived.forms if f.runnable}}
    contenders = {"pytorch": eager(bert, inputs), **{name: onnx_call(onnx, p, inputs, threads) for name, p in forms.items()}}
    results["bert_base_seq128"] = {**summary(take_turns(contenders, args.rounds, args.runs), "pytorch"), "fusions": derived.info.get("fusions"), "bytes": {k: p.stat().st_size for k, p in forms.items()}}

    # MobileNetV3-Large at 224, and a folded LoRA model against its base
    mobilenet = host.backbones.get("mobilenet")
    options = validate_options(mobilenet, "b", {}, "b")
    built = mobilenet.build("image-classification", 10, checkpoint=None, arch="mobilenetv3_large_100", options=options)
    built.model.eval()
    image = {"pixel_values": torch.randn(1, 3, 224, 224)}
    io = mobilenet.onnx_io(built)
    base_path = onnx.export(built.model, image, io, work / "mnv3" / "base.onnx", None)
    lora = host.methods.get("lora")
    # the same base weights with a LoRA as training leaves it (B non-zero), then folded: the
    # two files must differ only in their values (two random models can differ in speed
    # by 10-30% on their own: activations that decay into denormal floats are slow)
    adapted = copy.deepcopy(built)
    lora.apply(adapted, validate_options(lora, "m", {"r": 8}, "m"), mobilenet.default_targets("lora"))
    with torch.no_grad():
        for name, param in adapted.model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.01)
    merged = lora.merge(adapted).model
    merged_path = onnx.export(merged, image, io, work / "mnv3" / "merged.onnx", None)
    contenders = {"pytorch": eager(built.model, image), "onnx": onnx_call(onnx, base_path, image, threads), "onnx_merged_lora": onnx_call(onnx, merged_path, image, threads)}
    per_round = take_turns(contenders, args.rounds, args.runs)
    results["mobilenetv3_large_224"] = {**summary(per_round, "pytorch"), "merged_lora_to_base_onnx": ratio(per_round, "onnx_merged_lora", "onnx")}
    results["machine"] = machine()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
