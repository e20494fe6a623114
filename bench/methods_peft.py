"""PEFT's side of bench/methods.py: the job of an adapt run (its base model, splits,
collator and schedule) trained with PEFT's implementation of the run's method, merged
with ``merge_and_unload`` and exported with ``torch.onnx.export``. Run in a process of its
own (bench/methods.py starts it) so its memory peak is its own."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

#: PEFT's config class for each peft_type adapt writes.
PEFT_CONFIGS = {
    "LORA": "LoraConfig",
    "IA3": "IA3Config",
    "LOHA": "LoHaConfig",
    "LOKR": "LoKrConfig",
    "VERA": "VeraConfig",
    "OFT": "OFTConfig",
}


def peft_config(adapter_config: dict[str, Any]) -> Any:
    """PEFT's config equal to the adapter_config.json adapt wrote (the fields PEFT's class has)."""
    import dataclasses

    import peft

    kind = getattr(peft, PEFT_CONFIGS[adapter_config["peft_type"]])
    # rank_pattern / alpha_pattern encode adapt's per-group LoRA of a grouped conv for PEFT's
    # loader; a PEFT user gives the rank itself (a fresh PEFT conv LoRA is dense, not grouped)
    skipped = {"peft_type", "task_type", "inference_mode", "base_model_name_or_path", "rank_pattern", "alpha_pattern"}
    names = {f.name for f in dataclasses.fields(kind)} - skipped
    return kind(**{k: v for k, v in adapter_config.items() if k in names})


def run_peft(adapt_run: Path, out: Path) -> dict[str, Any]:
    from peft import get_peft_model

    from adapt.host import make_host
    from adapt.pipeline import _flattened, build_model, load_data, plan_from_run
    from adapt.plugins.methods.lora import inner_prefix

    plan = plan_from_run(adapt_run, make_host())
    splits = load_data(plan)
    torch.manual_seed(plan.config.train.seed)
    built = build_model(plan, len(splits.label_names))
    collate = _flattened(plan.backbone.collator(built, plan.backbone_options), plan.task)
    config = peft_config(json.loads((adapt_run / "adapter" / "adapter_config.json").read_text()))
    wrapped = bool(inner_prefix(built.model))
    try:
        peft_model = get_peft_model(built.model.model if wrapped else built.model, config)
    except Exception as exc:  # PEFT refusing the method on these layers is a result here
        return {"error": f"get_peft_model: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    if wrapped:
        built.model.model = peft_model
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    result: dict[str, Any] = {"trainable": trainable, **train(built.model, splits.train, collate, plan)}
    result.update(merge_and_export(built, peft_model, wrapped, splits, collate, plan, out))
    return result


def train(model: torch.nn.Module, examples: list[Any], collate: Any, plan: Any) -> dict[str, Any]:
    """The loop a PEFT user writes, with the job's settings; samples/s per epoch, peak RSS."""
    from adapt import memory

    cfg = plan.config.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total, warm = per_epoch * cfg.epochs, max(1, int(per_epoch * cfg.epochs * cfg.warmup))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))
    )
    memory.reset_peak()
    speeds = []
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(examples)))
        random.Random(cfg.seed + epoch).shuffle(order)
        started = time.perf_counter()
        for start in range(0, len(order), cfg.batch_size):
            batch = collate([examples[i] for i in order[start : start + cfg.batch_size]])
            labels = batch.pop("labels")
            loss = plan.task.loss(model(**batch), labels)
            optimiser.zero_grad()
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimiser.step()
            schedule.step()
        speeds.append(len(order) / (time.perf_counter() - started))
    return {"samples_per_s": round(sorted(speeds)[len(speeds) // 2], 2), "train_peak_mib": round(memory.peak_mib(), 1)}


def merge_and_export(
    built: Any, peft_model: Any, wrapped: bool, splits: Any, collate: Any, plan: Any, out: Path
) -> dict[str, Any]:
    """Test metric after merging, the merge's largest logit difference, the ONNX file."""
    from adapt.engine import evaluate

    device, eval_batch = torch.device("cpu"), plan.config.train.eval_batch
    test, labels = splits.test, splits.label_names
    built.model.eval()
    unmerged = evaluate(
        built.model, test, collate, plan.task, labels, batch_size=eval_batch, device=device, keep_logits=True
    )
    found: dict[str, Any] = {"test_unmerged": unmerged.metrics.get(plan.task.primary_metric)}
    try:
        merged_inner = peft_model.merge_and_unload()
    except Exception as exc:
        found["merge"] = f"refused: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        found["test"] = found["test_unmerged"]
        return found
    if wrapped:
        built.model.model = merged_inner
        model = built.model
    else:
        model = merged_inner
    model.eval()
    merged = evaluate(model, test, collate, plan.task, labels, batch_size=eval_batch, device=device, keep_logits=True)
    found["test"] = merged.metrics.get(plan.task.primary_metric)
    found["merge"] = "folded"
    found["merge_diff"] = max(float((a - b).abs().max()) for a, b in zip(unmerged.logits, merged.logits))
    found["onnx"] = export(model, collate(test[:2]), out / "model.onnx")
    return found


def export(model: torch.nn.Module, batch: dict[str, torch.Tensor], path: Path) -> str:
    """``torch.onnx.export`` as a PEFT user exports the merged model (batch axis dynamic)."""
    import inspect

    order = list(inspect.signature(model.forward).parameters)
    names = sorted((k for k in batch if k != "labels"), key=order.index)
    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(batch[n] for n in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{n: {0: "batch"} for n in names}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return str(path)
