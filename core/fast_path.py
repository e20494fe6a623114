"""The training fast path: speed-ups that leave the maths alone, each switchable.

``prepare`` puts a built, adapted model into its fastest training form and
returns a ``FastPath``: what is on (for the log and the report) and ``restore``,
which undoes every change, so that the merge and the export see the model
exactly as the backbone built it; ``compiled`` wraps the module the loop calls.
The choices (``train.fast`` in the config, ``auto`` by default) are:

* ``attention``: transformers' scaled-dot-product attention (flash / memory-
  efficient kernels) while training. The backbones build eager attention because
  its ONNX graph is the one ONNX Runtime fuses; ``restore`` switches back.
* ``compile``: ``torch.compile`` of the whole model, forward and backward
  (``auto``: on CUDA, where fusing the many small kernels of a LoRA model pays;
  on 2 CPU cores compiling took 60-90 s and paid off only for MobileNetV3, so
  there it is opt-in; see docs/benchmarks.md).
* ``cuda_graphs``: compiled with CUDA graphs (``reduce-overhead``), which
  removes the kernel launch cost that dominates a LoRA step at small batches.
  Each new batch shape records a graph; text batches are padded to a multiple
  of 8 tokens, which keeps the shapes few.
* ``channels_last``: NHWC memory layout for convolutional models.
* ``cls_last_layer``: where the backbone offers it (``BuiltModel.switches``: the
  transformers backbone for a BERT-family sequence classifier), the last layer is
  computed for the [CLS] position only, the one its head reads (``adapt.plugins.transformers.cls_last_layer``,
  which checks that the logits are unchanged before keeping it). ``auto``: on a
  CPU, where it was measured; opt-in on CUDA until measured there.
* ``pin_memory``: batches are collated into pinned (page-locked) host memory on
  CUDA. A copy from ordinary memory makes the host wait until the GPU has finished
  all queued work before it starts, so the host could never prepare a step while the
  GPU runs the previous one; from pinned memory the copy is queued like a kernel.

Skipping gradient work for frozen parts needs nothing here: frozen weights have
``requires_grad=False``, so autograd computes no weight gradient for them and
stops below the lowest trained layer. LoRA on an ungrouped convolution trains
through a separate low-rank branch (see ``adapt.plugins.methods.lora_layers``), never a full-size
weight gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TYPE_CHECKING, cast

import torch
from torch import nn

from adapt.config import FastConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class FastPath:
    """What ``prepare`` turned on, for the log and the report."""

    attention: str | None = None
    compile: str | None = None
    channels_last: bool = False
    cls_last_layer: bool = False
    pin_memory: bool = False
    notes: list[str] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def describe(self) -> str:
        parts = [
            f"attention {self.attention}" if self.attention else "",
            f"torch.compile ({self.compile})" if self.compile else "",
            "channels-last" if self.channels_last else "",
            "last layer on [CLS] only" if self.cls_last_layer else "",
            "pinned batches" if self.pin_memory else "",
        ]
        return (", ".join(p for p in parts if p) or "off") + "".join(f"; {note}" for note in self.notes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "attention": self.attention,
            "compile": self.compile,
            "channels_last": self.channels_last,
            "cls_last_layer": self.cls_last_layer,
            "pin_memory": self.pin_memory,
            **({"notes": self.notes} if self.notes else {}),
        }

    def restore(self) -> None:
        """Undo every change, newest first."""
        while self.undo:
            self.undo.pop()()


def _transformers_model(model: nn.Module) -> PreTrainedModel | None:
    """The outermost transformers model inside ``model`` (its attention can be switched)."""
    found = next((m for m in model.modules() if hasattr(m, "set_attn_implementation") and hasattr(m, "config")), None)
    return cast("PreTrainedModel | None", found)


def _on(switch: bool | str, auto: bool) -> bool:
    """A ``train.fast`` switch: ``true``, ``false``, or ``auto`` (then: ``auto``)."""
    return switch is True or (switch == "auto" and auto)


def _can_pin() -> bool:
    """Page-locked memory needs a CUDA driver (even when this run trains on the CPU)."""
    return torch.cuda.is_available()


def _is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare(
    model: nn.Module,
    config: FastConfig,
    device: torch.device,
    switches: Mapping[str, Callable[[], tuple[Callable[[], None] | None, str]]] | None = None,
) -> FastPath:
    """Switch ``model`` (in place) to its fast training form; ``FastPath.restore`` undoes it.
    ``switches``: what the backbone offers for this model (``BuiltModel.switches``)."""
    switches = switches or {}
    fast = FastPath()
    top = _transformers_model(model)
    if top is not None and config.attention != "eager":
        before = top.config._attn_implementation
        if before != "sdpa":
            top.set_attn_implementation("sdpa")
            fast.undo.append(lambda: top.set_attn_implementation(before))
        fast.attention = "sdpa"

    if _on(config.channels_last, True) and _is_convolutional(model) and top is None:
        model.to(memory_format=torch.channels_last)
        fast.channels_last = True
        fast.undo.append(lambda: _contiguous(model))

    switch = switches.get("cls_last_layer")
    if switch is not None and _on(config.cls_last_layer, device.type == "cpu"):
        undo, note = switch()
        if undo is not None:
            fast.cls_last_layer = True
            fast.undo.append(undo)
        elif note:
            fast.notes.append(note)

    if _on(config.pin_memory, device.type == "cuda"):
        fast.pin_memory = _can_pin()

    if _on(config.compile, device.type == "cuda"):
        graphs = device.type == "cuda" and _on(config.cuda_graphs, True)
        fast.compile = "reduce-overhead" if graphs else "default"
    return fast


def _contiguous(model: nn.Module) -> None:
    model.to(memory_format=torch.contiguous_format)


def compiled(runner: nn.Module, fast: FastPath) -> nn.Module:
    """``runner`` (the model, or its DistributedDataParallel wrapper) under torch.compile if asked."""
    return cast(nn.Module, torch.compile(runner, mode=fast.compile)) if fast.compile else runner


def step_begins(fast: FastPath) -> None:
    """Tell CUDA graphs a new training step begins (the previous step's outputs may be overwritten)."""
    if fast.compile == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def pinned(batch: dict[str, torch.Tensor], fast: FastPath) -> dict[str, torch.Tensor]:
    """``batch`` in page-locked host memory (PyTorch's caching host allocator reuses the buffers)."""
    return {k: v.pin_memory() for k, v in batch.items()} if fast.pin_memory else batch


def channels_last_batch(batch: dict[str, torch.Tensor], fast: FastPath) -> dict[str, torch.Tensor]:
    if not fast.channels_last:
        return batch
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in batch.items()}
