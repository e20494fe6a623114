"""Training speed and memory of adapt against Hugging Face PEFT on the same model, in one run.

For each case, the same model (random weights, dropout 0), the same LoRA initial
weights (adapt writes its adapter in PEFT's layout and PEFT loads it), the same
batches in the same order and the same hyper-parameters (AdamW, lr 1e-3 with
linear decay, clipping at 1.0) are trained twice, each side in its own process:

* ``adapt``: adapt's own ``Trainer`` with the config's defaults, fast path included;
* ``peft``:  ``PeftModel`` in the training loop a PEFT user writes (transformers'
  default SDPA attention, autocast and fused AdamW on CUDA, foreach AdamW on CPU);
* ``full``:  full fine-tuning of the same model in that loop (BERT-base cases only).

Four epochs run on CUDA, the first two of them warm-up; two on a CPU, the first
warm-up (``--epochs``, ``--warmup-epochs``). Warm-up covers compilation, the
allocators and, on CUDA, the start of inductor's compile workers: a process per CPU
core that imports torch in the background, which slows a host-bound step loop for
some seconds even when every kernel comes from inductor's cache. Reported per side:
samples/s over the timed epochs (and each epoch's, ``epoch_samples_per_s``); peak memory while training (CUDA:
max allocated, the model included; CPU: the process's peak RSS, whose baseline
also holds each side's imports, PEFT's being ~200 MB larger); ``training_memory``,
that peak less the memory in use when training started (activations, gradients,
optimiser state: the part the two implementations differ in); the mean loss of
each epoch; the ratios adapt /
PEFT; and ``same_loss``: both sides' epoch losses agree (relative 1e-3 in fp32,
3e-2 under bf16), since a fast path that changes the maths is a bug.

Cases: BERT-base shape, LoRA r=8 on query/value, batch 32 and 128; MiniLM shape
(6 layers, 384 wide), batch 32; MobileNetV3-Large at 224, LoRA r=8 on the pointwise
convolutions, batch 128; causal LMs (text-generation, every token learnt): GPT-2
small (LoRA on the fused Conv1D ``c_attn``) and a SmolLM-135M-shaped Llama (LoRA on
q_proj/v_proj), batch 8 at 512 tokens. On CUDA when present; otherwise on the CPU
with batch 8 (128 tokens) and a few steps, so the script takes minutes on 2 cores.

Usage: python bench/train_vs_peft.py [--device cpu|cuda] [--cases NAME ...] [--epochs N]
       [--variant NAME:KEY=VALUE[,KEY=VALUE] ...] [--variant-cases NAME ...] [--out FILE]
       [--repeats N] [--logs DIR]
``--variant fast_off:fast.compile=false`` adds an adapt side with that train.* override.
``--repeats N`` runs every side N times, the sides taking turns, and reports the
run with the median speed (on a small shared CPU, epoch speeds move by 20%).
``--logs DIR`` keeps each side's stderr (with ``TORCH_LOGS=recompiles,perf_hints`` it
shows recompilations and skipped CUDA graphs).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NUM_LABELS = 4
LR = 1e-3
SEQ = 128
IMAGE = 224
PEFT_TARGETS = {"text": ["query", "value"], "image": r".*\.(conv_pw|conv_pwl)$", "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "qwen05": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # bert-base | minilm | mobilenetv3 | gpt2 | llama
    batch: int
    steps: int  # optimiser steps per epoch
    seq: int = SEQ  # tokens per text example
    checkpointing: bool = False  # gradient checkpointing on both sides (train.gradient_checkpointing)
    base: str = "full"  # "4bit": QLoRA's NF4 base on both sides (method.options.base; PEFT: BitsAndBytesConfig)

    @property
    def kind(self) -> str:
        return "image" if self.model == "mobilenetv3" else "lm" if self.model in DECODER_SHAPES else "text"


CUDA_CASES = [Case("bert_base_b32", "bert-base", 32, 120), Case("mobilenetv3_large_b128", "mobilenetv3", 128, 30), Case("bert_base_b128", "bert-base", 128, 30), Case("minilm_b32", "minilm", 32, 120), Case("gpt2_b8_seq512", "gpt2", 8, 60, 512), Case("llama_b8_seq512", "llama", 8, 60, 512),
              Case("qwen05_b8_seq512", "qwen05", 8, 20, 512), Case("qwen05_b8_seq512_ckpt", "qwen05", 8, 20, 512, checkpointing=True), Case("qwen05_b8_seq512_4bit", "qwen05", 8, 20, 512, base="4bit")]
CPU_CASES = [Case("bert_base_b8", "bert-base", 8, 5), Case("minilm_b8", "minilm", 8, 16), Case("mobilenetv3_large_b8", "mobilenetv3", 8, 12), Case("gpt2_b8", "gpt2", 8, 5), Case("llama_b8", "llama", 8, 5),
             Case("llama_b8_ckpt", "llama", 8, 5, checkpointing=True), Case("llama_b8_4bit", "llama", 8, 5, base="4bit")]
#: Peak dense bf16 tensor FLOP/s by GPU name, for model FLOPs utilisation (vendor figures, without sparsity).
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
#: Causal LM shapes (text-generation, LoRA on attention-qv): GPT-2 small (Conv1D projections)
#: and a Llama-family model the size of SmolLM-135M (grouped-query attention, SwiGLU).
DECODER_SHAPES = {
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "llama": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
    # Qwen2.5-0.5B's shape with an untied output matrix: 0.63B parameters (issue 29's decoder)
    "qwen05": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864, vocab_size=151936, tie_word_embeddings=False),
}
TEXT_SHAPES = {"bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072), "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)}


# -- the shared starting point ----------------------------------------------------


def write_base(case: Case, work: Path) -> Path:
    """A random base checkpoint on disk, as a user's would be: a transformers folder or a timm file."""
    import torch

    folder = work / case.model
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    if case.kind == "lm":
        _write_decoder(case.model, folder)
    elif case.kind == "text":
        from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

        vocab = folder / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(200))]) + "\n")
        BertTokenizer(vocab=str(vocab)).save_pretrained(folder)
        config = BertConfig(num_labels=NUM_LABELS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **TEXT_SHAPES[case.model])
        BertForSequenceClassification(config).save_pretrained(folder)
    else:
        import timm
        from safetensors.torch import save_file

        model = timm.create_model("mobilenetv3_large_100", num_classes=NUM_LABELS)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def _write_decoder(model: str, folder: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the team won the match and shares fell"] * 4, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(folder))
    GPT2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt")).save_pretrained(folder)
    shape = dict(DECODER_SHAPES[model])
    AutoModelForCausalLM.from_config(AutoConfig.for_model(shape.pop("model_type", model), **shape)).save_pretrained(folder)


def adapt_model(case: Case, base: Path):  # noqa: ANN201 - (host, built, method) of adapt's own plugins
    """Build the case's model and LoRA through adapt's real plugins (the ``adapt`` entry points)."""
    from adapt.host import make_host
    from adapt.plan import validate_options

    host = make_host()
    method = host.methods.get("lora")
    if case.kind == "lm":
        backbone = host.backbones.get("transformers")
        built = backbone.build("text-generation", 0, checkpoint=str(base), arch=None, options=validate_options(backbone, "b", {"max_length": case.seq}, "b"))
        targets = PEFT_TARGETS[case.model]
    elif case.kind == "text":
        backbone = host.backbones.get("bert")
        built = backbone.build("text-classification", NUM_LABELS, checkpoint=str(base), arch=None, options=validate_options(backbone, "b", {}, "b"))
        targets = ["query", "value"]
    else:
        backbone = host.backbones.get("mobilenet")
        built = backbone.build("image-classification", NUM_LABELS, checkpoint=str(base / "model.safetensors"), arch="mobilenetv3_large_100", options=validate_options(backbone, "b", {}, "b"))
        targets = PEFT_TARGETS["image"]
    options = validate_options(method, "m", {"r": 8, "alpha": 16, "targets": targets, "base": case.base}, "m")
    method.apply(built, options, backbone.default_targets("lora"))
    return host, built, method


def write_init(case: Case, base: Path, work: Path) -> Path:
    """The LoRA factors and head both sides start from, in PEFT's layout."""
    import torch

    from adapt.adapter_io import save_adapter

    folder = work / f"{case.model}-init"
    if not folder.exists():
        torch.manual_seed(1)
        _, built, method = adapt_model(case, base)
        with torch.no_grad():  # B is zero at the start; make it non-zero so the LoRA path matters from step 1
            for name, param in built.model.named_parameters():
                if name.endswith("lora_B"):
                    param.normal_(0, 0.01)
        save_adapter(method, built, folder)
    return folder


def batches_for(case: Case):  # noqa: ANN201 - (examples, collate): the same data for every side
    import torch

    generator = torch.Generator().manual_seed(2)
    n = case.batch * case.steps
    if case.kind == "lm":  # every token learnt, as plain text under text-generation
        ids = torch.randint(5, 290, (n, case.seq), generator=generator)
        data = {"input_ids": ids, "attention_mask": torch.ones(n, case.seq, dtype=torch.long), "position_ids": torch.arange(case.seq).expand(n, case.seq).clone(), "labels": ids.clone()}
    elif case.kind == "text":
        data = {"input_ids": torch.randint(5, 30000, (n, SEQ), generator=generator), "attention_mask": torch.ones(n, SEQ, dtype=torch.long), "token_type_ids": torch.zeros(n, SEQ, dtype=torch.long)}
    else:
        data = {"pixel_values": torch.randn(n, 3, IMAGE, IMAGE, generator=generator)}
    if "labels" not in data:
        data["labels"] = torch.randint(0, NUM_LABELS, (n,), generator=generator)

    def collate(examples: list[dict]) -> dict:
        index = torch.tensor([e["i"] for e in examples])
        return {k: v[index] for k, v in data.items()}

    return [{"i": i} for i in range(n)], collate


# -- one side, in its own process -------------------------------------------------


def reset_peak_memory(device: str) -> int:
    """Start measuring peak memory now; return the memory in use now (bytes)."""
    import torch

    from adapt import memory

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())
    memory.reset_peak()  # Linux: the peak RSS (VmHWM) starts again at the RSS now
    return int(memory.resident_mib() * memory.MIB)


def peak_memory(device: str) -> int:
    """Bytes: CUDA max allocated, or the process's peak RSS, since ``reset_peak_memory``."""
    import torch

    from adapt import memory

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(memory.peak_mib() * memory.MIB)


def timed_speed(epoch_speeds: list[float], warmup: int) -> float:
    """Samples/s over the timed epochs (those after the warm-up ones): equal-sized
    epochs, so the harmonic mean of their speeds."""
    timed = epoch_speeds[warmup:] or epoch_speeds[-1:]
    return len(timed) / sum(1 / s for s in timed)


def run_adapt(case: Case, device: str, base: Path, init: Path, work: Path, overrides: list[str], epochs: int) -> dict:
    import yaml

    from adapt.adapter_io import load_adapter
    from adapt.config import TrainConfig
    from adapt.engine import Trainer

    host, built, method = adapt_model(case, base)
    load_adapter(method, built, init)
    examples, collate = batches_for(case)
    settings: dict = {"epochs": epochs, "batch_size": case.batch, "lr": LR, "device": device, "warmup": 0.0, "weight_decay": 0.01, "max_grad_norm": 1.0, "checkpoint_every": 0, "precision": "auto", "gradient_checkpointing": case.checkpointing}
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = settings
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    task = host.tasks.get({"image": "image-classification", "lm": "text-generation"}.get(case.kind, "text-classification"))
    built.model.to(device)  # as the PEFT side, the model is on the device before memory is measured
    trainer = Trainer(built=built, method=method, task=task, collate=collate, train=examples, val=[], label_names=[str(i) for i in range(NUM_LABELS)], config=TrainConfig(**settings), run_dir=work)
    at_start = reset_peak_memory(device)
    result = trainer.fit()
    rows = [row for row in result.history if row["kind"] == "epoch"]
    return {"epoch_samples_per_s": [row["samples_per_s"] for row in rows], "losses": [row["train_loss"] for row in rows], "memory_at_start": at_start}


def loop_model(case: Case, base: Path, init: Path, full: bool):  # noqa: ANN201 - (model, forward, loss)
    """The PEFT side's model as a PEFT user loads it, its forward and its loss."""
    import torch.nn.functional as F

    loss_of = lambda logits, labels: F.cross_entropy(logits.float(), labels)  # noqa: E731
    if case.kind == "lm":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, use_cache=False, **_quantisation(case))  # default attention (SDPA)
        if case.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        forward = lambda batch: model(**batch).logits  # noqa: E731
        loss_of = lambda logits, labels: F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())  # noqa: E731
    elif case.kind == "text":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(base)  # transformers' default attention (SDPA)
        forward = lambda batch: model(**batch).logits  # noqa: E731
    else:
        import timm
        from safetensors.torch import load_file

        model = timm.create_model("mobilenetv3_large_100", num_classes=NUM_LABELS)
        model.load_state_dict(load_file(str(base / "model.safetensors")))
        forward = lambda batch: model(batch["pixel_values"])  # noqa: E731
    if not full:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(init), is_trainable=True)
    return model, forward, loss_of


def _quantisation(case: Case) -> dict:
    """QLoRA as a PEFT user loads it: transformers' bitsandbytes config (NF4, every Linear but lm_head)."""
    if case.base != "4bit":
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)}


def model_flops_utilisation(case: Case, samples_per_s: float, gpu: str | None) -> float | None:
    """Model FLOPs per second over the GPU's bf16 peak: 4 N FLOPs a token for LoRA (forward 2N, backward
    to the activations 2N; the frozen weights get no gradients), N the model's parameters. Recomputation
    under checkpointing is not counted, as MFU's definition says."""
    peak = next((v for k, v in PEAK_BF16.items() if gpu and k in gpu), None)
    if peak is None or case.kind != "lm":
        return None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(DECODER_SHAPES[case.model])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(shape.pop("model_type", case.model), **shape))
    parameters = sum(p.numel() for p in model.parameters())
    return round(4 * parameters * samples_per_s * case.seq / peak, 4)


def run_loop(case: Case, device: str, base: Path, init: Path, full: bool, epochs: int) -> dict:
    """The loop a PEFT user writes: PeftModel (or the plain model, for full fine-tuning), AdamW, autocast."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from adapt.distributed import Dist
    from adapt.engine import epoch_batches

    model, forward, loss_of = loop_model(case, base, init, full)
    if case.base == "full":  # a bitsandbytes model is placed by from_pretrained and refuses .to()
        model.to(device)
    model.train()
    if case.kind == "image":  # frozen BatchNorms keep their statistics, as adapt does, or the two would compute different things
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    cuda = device == "cuda"
    optimiser = torch.optim.AdamW(params, lr=LR, weight_decay=0.01, fused=cuda or None, foreach=None if cuda else True)
    scheduler = get_linear_schedule_with_warmup(optimiser, 0, epochs * case.steps)
    examples, collate = batches_for(case)
    dtype = torch.bfloat16 if cuda else None
    losses, speeds = [], []
    at_start = reset_peak_memory(device)
    for epoch in range(epochs):
        if cuda:
            torch.cuda.synchronize()
        tick, total = time.perf_counter(), []
        for indices in epoch_batches(len(examples), case.batch, 0, epoch, Dist()):
            batch = {k: v.to(device, non_blocking=True) for k, v in collate([examples[i] for i in indices]).items()}
            labels = batch.pop("labels")
            with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                loss = loss_of(forward(batch), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            scheduler.step()
            optimiser.zero_grad(set_to_none=True)
            total.append(loss.detach())
        mean = float(torch.stack(total).mean())  # syncs
        speeds.append(len(examples) / (time.perf_counter() - tick))
        losses.append(mean)
    return {"epoch_samples_per_s": speeds, "losses": losses, "memory_at_start": at_start}


def child(args: argparse.Namespace) -> None:
    import torch

    case = next(c for c in CUDA_CASES + CPU_CASES if c.name == args.case)
    work = Path(args.work)
    base, init = work / case.model, work / f"{case.model}-init"
    torch.manual_seed(0)
    side = args.child.partition(":")[0]
    if side == "adapt":
        run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"{case.name}-{args.child.replace(':', '-')}-"))
        out = run_adapt(case, args.device, base, init, run_dir, args.override, args.epochs)
    else:
        out = run_loop(case, args.device, base, init, full=side == "full", epochs=args.epochs)
    out["samples_per_s"] = timed_speed(out["epoch_samples_per_s"], args.warmup_epochs)
    peak = peak_memory(args.device)
    out["peak_memory_mb"] = round(peak / 2**20, 1)
    out["training_memory_mb"] = round((peak - out.pop("memory_at_start")) / 2**20, 1)
    print(json.dumps(out))


# -- the parent: every side of every case, then the ratios --------------------------


def run_side(case: Case, side: str, args: argparse.Namespace, work: Path, overrides: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", side, "--case", case.name, "--device", args.device, "--work", str(work), "--epochs", str(args.epochs), "--warmup-epochs", str(args.warmup_epochs)]
    for item in overrides:
        command += ["--override", item]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
        Path(args.logs, f"{case.name}-{side.replace(':', '-')}.log").write_text(done.stderr)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1], "seconds": round(time.perf_counter() - started, 1)}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def median_run(results: list[dict]) -> dict:
    """The run with the median speed (its own figures, whole), and every run's speed."""
    done = sorted((r for r in results if "samples_per_s" in r), key=lambda r: r["samples_per_s"])
    if not done:
        return results[-1]
    chosen = dict(done[(len(done) - 1) // 2])
    if len(results) > 1:
        chosen["repeats_samples_per_s"] = [r.get("samples_per_s") for r in results]
    return chosen


def same_loss(a: dict, b: dict, tolerance: float) -> bool | None:
    if "losses" not in a or "losses" not in b:
        return None
    return all(abs(x - y) <= tolerance * max(abs(x), abs(y), 1e-6) for x, y in zip(a["losses"], b["losses"]))


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    parser.add_argument("--cases", nargs="*", help="case names (default: all for the device)")
    parser.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE[,KEY=VALUE]: an extra adapt side with train.* overrides")
    parser.add_argument("--variant-cases", nargs="*", help="cases that get the variants (default: all)")
    parser.add_argument("--no-full", action="store_true", help="skip the full fine-tuning side")
    parser.add_argument("--epochs", type=int, help="epochs per side (default: 4 on CUDA, 2 on a CPU)")
    parser.add_argument("--warmup-epochs", type=int, help="untimed epochs at the start (default: 2 on CUDA, 1 on a CPU)")
    parser.add_argument("--repeats", type=int, default=1, help="run every side this many times, taking turns, and keep the median run")
    parser.add_argument("--out", help="also write the JSON object here (rewritten after each case)")
    parser.add_argument("--logs", help="keep each side's stderr in this folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    args.epochs = args.epochs or (4 if cuda else 2)
    args.warmup_epochs = min(args.epochs - 1, args.warmup_epochs if args.warmup_epochs is not None else (2 if cuda else 1))
    return args


def run_case(case: Case, args: argparse.Namespace, work: Path, variants: list[tuple[str, list[str]]]) -> dict:
    """Every side of one case, taking turns, and the ratios against PEFT."""
    base = write_base(case, work)
    write_init(case, base, work)
    sides: dict[str, list[str]] = {"peft": [], "adapt": []}
    if case.model == "bert-base" and not args.no_full:
        sides["full"] = []
    if not args.variant_cases or case.name in args.variant_cases:
        sides.update({f"adapt:{name}": overrides for name, overrides in variants})
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.repeats):  # the sides take turns, so a machine's drift reaches them alike
        for side, overrides in sides.items():
            runs[side].append(run_side(case, side, args, work, overrides))
    figures = {side: median_run(side_runs) for side, side_runs in runs.items()}
    peft = figures["peft"]
    tolerance = 3e-2 if args.device == "cuda" else 1e-3
    row: dict = {"batch": case.batch, "steps_per_epoch": case.steps, "sides": figures}
    for side, fig in figures.items():
        if side.startswith("adapt") and "samples_per_s" in fig and "samples_per_s" in peft:
            key = side.replace("adapt:", "adapt_")
            row[f"{key}_speed_vs_peft"] = round(fig["samples_per_s"] / peft["samples_per_s"], 3)
            row[f"{key}_step_time_vs_peft"] = round(peft["samples_per_s"] / fig["samples_per_s"], 3)
            row[f"{key}_memory_vs_peft"] = round(fig["peak_memory_mb"] / peft["peak_memory_mb"], 3)
            row[f"{key}_training_memory_vs_peft"] = round(fig["training_memory_mb"] / max(peft["training_memory_mb"], 1e-9), 3)
            row[f"{key}_same_loss"] = same_loss(fig, peft, tolerance)
    gpu = machine(args.device).get("gpu")
    for fig in figures.values():
        if "samples_per_s" in fig and (mfu := model_flops_utilisation(case, fig["samples_per_s"], gpu)) is not None:
            fig["mfu"] = mfu
    if "full" in figures and "samples_per_s" in figures["full"] and "samples_per_s" in figures["adapt"]:
        row["adapt_speed_vs_full"] = round(figures["adapt"]["samples_per_s"] / figures["full"]["samples_per_s"], 3)
    print(f"{case.name}: " + ", ".join(f"{s} {f.get('samples_per_s', 0):.1f} samples/s {f.get('peak_memory_mb', 0):.0f} MB losses {f.get('losses')}" if "error" not in f else f"{s} failed: {f['error']}" for s, f in figures.items()), flush=True)
    return row


def machine(device: str) -> dict:
    import torch

    found = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device == "cuda":
        found["gpu"] = torch.cuda.get_device_name(0)
    try:
        import peft
        import transformers

        found.update(peft=peft.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    return found


def main() -> None:
    args = parse_arguments()
    if args.child:
        child(args)
        return
    cases = CUDA_CASES if args.device == "cuda" else CPU_CASES
    if args.cases:
        cases = [c for c in cases if c.name in args.cases]
    variants = [(v.partition(":")[0], v.partition(":")[2].split(",")) for v in args.variant]
    work = Path(tempfile.mkdtemp(prefix="adapt-train-bench-"))  # this script's own folder, removed at the end
    results: dict = {"device": args.device, "epochs": args.epochs, "warmup_epochs": args.warmup_epochs, "cases": {}}
    started = time.perf_counter()
    for case in cases:
        results["cases"][case.name] = run_case(case, args, work, variants)
        if args.out:
            Path(args.out).write_text(json.dumps(results) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = machine(args.device)
    line = json.dumps(results)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
