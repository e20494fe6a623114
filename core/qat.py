"""Quantisation-aware fine-tuning (``export.qat``), the last remedy of static int8 before
layers are left in fp32.

A copy of the merged model trains for a few epochs while every convolution and linear
layer computes as ONNX Runtime's static int8 will: weights rounded per output channel,
symmetric over [-127, 127] (a parametrisation, so the layer's own forward, "same"
padding included, stays as it is), and the layer's input rounded per tensor to 256
levels over a moving-average range (a forward pre-hook); gradients pass straight
through the rounding. BatchNorm keeps its statistics (eval mode): the export folds it
into the convolution, and per-channel rounding does not change under that per-channel
scale. Afterwards the parametrisations and hooks are removed, leaving an ordinary fp32
model whose weights have learnt the rounding; the exporter quantises it like any other
file and the same validation gate judges it.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn


class _RoundedWeight(nn.Module):
    """The weight as int8 per output channel gives it back (straight-through gradient)."""

    def __init__(self) -> None:
        super().__init__()
        from torch.ao.quantization import FakeQuantize, PerChannelMinMaxObserver

        self.fake = FakeQuantize(
            observer=PerChannelMinMaxObserver,
            quant_min=-127,
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
        )

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.fake(weight)


def _rounded_input() -> nn.Module:
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    return FakeQuantize(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )


def simulate_int8(model: nn.Module) -> Callable[[], int]:
    """Make ``model``'s conv and linear layers compute with int8 rounding; returns the
    function that takes the rounding out again (and says how many layers had it)."""
    from torch.nn.utils import parametrize

    layers = [
        m
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(getattr(m, "weight", None), nn.Parameter)
    ]
    hooks = []
    for layer in layers:
        device = layer.weight.device  # the observers' scales live beside the weights (CUDA too)
        parametrize.register_parametrization(layer, "weight", _RoundedWeight().to(device))
        rounding = _rounded_input().to(device)
        layer.add_module("input_rounding", rounding)
        hooks.append(layer.register_forward_pre_hook(lambda module, args: (module.input_rounding(args[0]), *args[1:])))

    def remove() -> int:
        for hook in hooks:
            hook.remove()
        for layer in layers:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
            del layer.input_rounding
        return len(layers)

    return remove


def finetune(
    model: nn.Module,
    examples: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    task: Any,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str = "auto",
    say: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned copy of ``model`` (``model`` itself is untouched) and what was done."""
    from adapt.engine import epoch_batches, resolve_device, to_device
    from adapt.distributed import Dist

    target = resolve_device(device)
    tuned = copy.deepcopy(model).to(target)
    for parameter in tuned.parameters():
        parameter.requires_grad_(True)
    remove = simulate_int8(tuned)
    optimiser = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    started, losses = time.perf_counter(), []
    for epoch in range(epochs):
        tuned.train()
        for module in tuned.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()  # statistics stay as exported: the export folds them
        epoch_losses = []
        for indices in epoch_batches(len(examples), batch_size, seed, epoch, Dist()):
            batch = to_device(collate([examples[i] for i in indices]), target)
            labels = batch.pop("labels")
            loss = task.loss(tuned(**batch).float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} in epoch {epoch + 1} of quantisation-aware fine-tuning; lower "
                    "export.qat.lr"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            epoch_losses.append(loss.item())
        losses.append(sum(epoch_losses) / max(1, len(epoch_losses)))
        say(f"export: quantisation-aware fine-tuning epoch {epoch + 1}/{epochs}: train_loss {losses[-1]:.4f}")
    layers = remove()
    return tuned.cpu().eval(), {
        "epochs": epochs,
        "lr": lr,
        "layers": layers,
        "train_loss": [round(x, 6) for x in losses],
        "seconds": round(time.perf_counter() - started, 2),
    }
