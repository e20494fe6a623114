"""Inference latency of adapt's exports against PyTorch eager, measured in one run.

Cases (batch 1, on the CPU this runs on, ONNX Runtime with as many threads as torch):

* BERT-base shape (random weights), sequence length 128: PyTorch eager vs
  ONNX fp32, ONNX optimised (fused) and dynamic int8, the files adapt deploys;
* MobileNetV3-Large at 224: PyTorch eager vs ONNX fp32;
* a folded-LoRA MobileNetV3-Large against its base model, both exported: the merged
  model must cost what the base costs.

Usage: python bench/export_latency.py [--runs N]. The last line printed is one
JSON object with every figure and ratio, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from adapt.export_stage import DeriveContext, measure
from adapt.host import make_host
from adapt.interfaces import BuiltModel
from adapt.plan import validate_options


def eager(model: torch.nn.Module, inputs: dict, runs: int) -> float:
    model.eval()
    with torch.no_grad():
        return measure(lambda: model(**inputs), runs)["median"]


def onnx_latency(exporter, path: Path, inputs: dict, runs: int, threads: int) -> float:
    run = exporter.load(path, threads)
    feed = {k: v.numpy() for k, v in inputs.items()}
    return measure(lambda: run(feed), runs)["median"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
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
    base = eager(bert, inputs, args.runs)
    forms = {"onnx": path, **{f.name: f.path for f in derived.forms if f.runnable}}
    bert_ms = {"pytorch": base, **{name: onnx_latency(onnx, p, inputs, args.runs, threads) for name, p in forms.items()}}
    results["bert_base_seq128"] = {"ms": bert_ms, "ratio_to_eager": {k: round(v / base, 3) for k, v in bert_ms.items()}, "fusions": derived.info.get("fusions"), "bytes": {k: p.stat().st_size for k, p in forms.items()}}

    # MobileNetV3-Large at 224, and a folded LoRA model against its base
    mobilenet = host.backbones.get("mobilenet")
    options = validate_options(mobilenet, "b", {}, "b")
    built = mobilenet.build("image-classification", 10, checkpoint=None, arch="mobilenetv3_large_100", options=options)
    built.model.eval()
    image = {"pixel_values": torch.randn(1, 3, 224, 224)}
    io = mobilenet.onnx_io(built)
    base_path = onnx.export(built.model, image, io, work / "mnv3" / "base.onnx", None)
    base = eager(built.model, image, args.runs)
    lora = host.methods.get("lora")
    adapted = mobilenet.build("image-classification", 10, checkpoint=None, arch="mobilenetv3_large_100", options=options)
    lora.apply(adapted, validate_options(lora, "m", {"r": 8}, "m"), mobilenet.default_targets("lora"))
    merged = lora.merge(adapted).model
    merged_path = onnx.export(merged, image, io, work / "mnv3" / "merged.onnx", None)
    base_onnx = onnx_latency(onnx, base_path, image, args.runs, threads)
    merged_onnx = onnx_latency(onnx, merged_path, image, args.runs, threads)
    results["mobilenetv3_large_224"] = {
        "ms": {"pytorch": base, "onnx": base_onnx, "onnx_merged_lora": merged_onnx},
        "ratio_onnx_to_eager": round(base_onnx / base, 3),
        "ratio_merged_lora_to_base_onnx": round(merged_onnx / base_onnx, 3),
    }
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
