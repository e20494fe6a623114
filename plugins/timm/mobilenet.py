"""``mobilenet``: timm's mobile CNNs (MobileNetV2/V3, EfficientNet-Lite, or any
timm model named in ``backbone.arch``) for image classification.

Checkpoints:

* none: random initialisation (tests, or training from scratch);
* ``timm``: timm's own pretrained weights for ``arch`` (needs a model hub);
* ``hf-hub:<repo>``: a timm model on the Hugging Face hub (``arch`` may be left out);
* a local ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file, or a ``pkg:`` path to one,
  in timm's own layout or in another layout with the same tensors in the same
  order (torchvision's MobileNetV2 file, the EfficientNet-Lite0 package), which is
  mapped onto timm's names by position after checking every shape.

Preprocessing is timm's own data config for the model (input size,
interpolation, mean/std); grey images become three channels.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import CheckpointError, ConfigError, DataError
from adapt.interfaces import Backbone, Batch, BuiltModel, Example, MergedFolder, OnnxIO
from adapt.paths import resolve_checkpoint

if TYPE_CHECKING:
    import torch

HUB_CHECKPOINTS = ("timm",)
DETECTION = "object-detection"
HUB_PREFIX = "hf-hub:"


class DetectionHeadOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: int = Field(64, ge=8, le=512, description="width of the FPN laterals and the shared head tower")
    depth: int = Field(2, ge=1, le=6, description="depthwise-separable blocks in the shared head tower")
    levels: int = Field(
        3, ge=1, le=4, description="feature levels the head reads, coarsest last (3: strides 8, 16, 32)"
    )


class MobileNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_size: int | None = Field(
        None, ge=16, le=1024, description="square input size; default: the model's own (224 for most)"
    )
    head: DetectionHeadOptions = Field(
        default_factory=lambda: DetectionHeadOptions(),
        description="object-detection: the feature levels the head reads and the head the task puts on them",
    )


@dataclass
class ImagePreprocessor:
    """timm's eval transform for the model, and the input size it produces."""

    transform: Callable[[Any], torch.Tensor]
    input_size: tuple[int, int, int]
    data_config: dict[str, Any]


@dataclass
class DetectionPreprocessor:
    """object-detection: the whole image resized to ``size`` x ``size`` (no crop, so no box
    is cut), then normalised; adapt.onnx_predict.stretch_image does it for a device too."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "detection",
            "input_names": ["pixel_values"],
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def read_state_dict(path: Path, checkpoint: str) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, never unpickling arbitrary objects."""
    import torch

    from adapt.checkpoint import load_tensors

    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_tensors(path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(
            f"cannot read checkpoint {checkpoint!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            hint="the file is corrupt, truncated or not a weights file; download or copy it again",
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"checkpoint {checkpoint!r} is not a dictionary of tensors",
            hint="save the model's state_dict(), not the model object",
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def map_onto(
    model: torch.nn.Module, state: dict[str, torch.Tensor], head: str, checkpoint: str, *, ordered: bool
) -> dict[str, torch.Tensor]:
    """Rename ``state`` into ``model``'s names: by name when they already match,
    else by position (only for ``ordered`` files: a pickle keeps the order it was
    saved in, safetensors does not). The head is taken only when its shape fits
    the label count."""
    target = model.state_dict()
    head_keys = [k for k in target if k.startswith(head + ".")]
    body = [k for k in target if k not in head_keys]
    if set(body) <= set(state):
        pairs = [(k, k) for k in target if k in state]
    elif not ordered:
        missing = next(k for k in body if k not in state)
        raise CheckpointError(
            f"checkpoint {checkpoint!r} has no tensor {missing!r}, and a safetensors file cannot be mapped by position",
            hint="save it with timm's tensor names (timm.create_model(...).state_dict()), or use the original .pth "
            "file",
        )
    else:
        source = list(state)
        if len(source) == len(target):
            pairs = list(zip(source, target))
        elif len(source) == len(body):
            pairs = list(zip(source, body))
        else:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} has {len(source)} tensors; the model has {len(target)} ({len(body)} "
                "without its head), and the names differ",
                hint="is it a checkpoint of another architecture? check backbone.arch",
            )
    mapped = {}
    for src, dst in pairs:
        found, expected = tuple(state[src].shape), tuple(target[dst].shape)
        if found != expected:
            if dst in head_keys:
                continue  # a head for another label count: the new head stays
            raise CheckpointError(
                f"checkpoint {checkpoint!r} does not fit {type(model).__name__}: tensor {src!r} has shape {found}, "
                f"the model's {dst!r} expects {expected}",
                hint="is it a checkpoint of another architecture? check backbone.arch",
            )
        mapped[dst] = state[src]
    return mapped


class MobileNet(Backbone):
    name = "mobilenet"
    tasks = ("image-classification", "object-detection", "image-embedding")
    #: Target families (adapt.families) of timm's mobile blocks.
    families = ("pointwise-conv", "depthwise-conv")
    #: what a method that names no default families adapts: every convolution of the blocks
    recommended_families = ("pointwise-conv", "depthwise-conv")
    options_schema = MobileNetOptions

    def build(
        self, task: str, num_labels: int, *, checkpoint: str | None, arch: str | None, options: Any
    ) -> BuiltModel:
        model, head, new = self._classifier(num_labels, checkpoint, arch)
        if task == DETECTION:
            return self._features(model, task, num_labels, new, options)
        from adapt.wrappers import PixelClassifier

        wrapped = PixelClassifier(model)
        blocks = tuple(_blocks(model))
        return BuiltModel(
            model=wrapped,
            task=task,
            num_labels=num_labels,
            head=(f"model.{head}",),
            new_parameters=tuple(f"model.{n}" for n in new),
            blocks=blocks,
            preprocessor=self._preprocessor(model, options),
            families=_families(wrapped, blocks),
        )

    def _classifier(
        self, num_labels: int, checkpoint: str | None, arch: str | None
    ) -> tuple[torch.nn.Module, str, list[str]]:
        """timm's classifier for ``arch`` with the checkpoint's weights; its head's name and
        the parameters the checkpoint did not provide."""
        import timm

        hub = checkpoint is not None and (checkpoint in HUB_CHECKPOINTS or checkpoint.startswith(HUB_PREFIX))
        name = checkpoint if checkpoint is not None and hub and checkpoint.startswith(HUB_PREFIX) else arch
        if not name:
            raise ConfigError(
                "backbone 'mobilenet' needs backbone.arch, the timm model name",
                hint="for example arch: mobilenetv2_100 (or mobilenetv3_small_100, mobilenetv3_large_100, "
                "tf_efficientnet_lite0)",
            )
        if not name.startswith(HUB_PREFIX) and not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            raise ConfigError(
                f"backbone.arch: timm has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""),
                hint="`python -c \"import timm; print(timm.list_models('*mobilenet*'))\"` lists names",
            )
        try:
            model = timm.create_model(name, pretrained=hub, num_classes=max(1, num_labels))
        except Exception as exc:  # noqa: BLE001 - hub and download failures vary
            raise CheckpointError(
                f"cannot load timm weights for {name!r}: {type(exc).__name__}: {exc}",
                hint="timm's pretrained weights need a model hub; use a local weights file instead",
            ) from None
        head = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
        new: list[str] = [n for n, _ in model.named_parameters() if n.startswith(head + ".")]
        if checkpoint and not hub:
            path = Path(resolve_checkpoint(checkpoint))
            if path.is_dir():
                raise CheckpointError(
                    f"checkpoint {checkpoint!r} is a folder; backbone 'mobilenet' reads one weights file",
                    hint="point at the .safetensors or .pth file inside it",
                )
            mapped = map_onto(
                model, read_state_dict(path, checkpoint), head, checkpoint, ordered=path.suffix != ".safetensors"
            )
            model.load_state_dict(mapped, strict=False)
            new = [n for n, _ in model.named_parameters() if n not in mapped]
        return model, head, new

    def _features(self, classifier: Any, task: str, num_labels: int, new: list[str], options: Any) -> BuiltModel:
        """object-detection: the classifier's body as a multi-scale feature extractor (timm's
        ``features_only``, the levels ``options.head.levels`` asks for), its levels' channels
        and strides in ``pyramid``: the task puts its head on it (``Task.wrap_model``)."""
        import timm

        head_options = options.head if options is not None else DetectionHeadOptions()
        name = classifier.pretrained_cfg.get("architecture") or type(classifier).__name__
        count = len(classifier.feature_info)
        levels = tuple(range(count - head_options.levels, count))
        features: Any = timm.create_model(name, features_only=True, out_indices=levels)
        missing, _ = features.load_state_dict(classifier.state_dict(), strict=False)
        if missing:
            raise CheckpointError(
                f"the feature extractor of {name!r} lacks {len(missing)} tensors of its classifier (first: "
                f"{missing[0]})",
                hint="report this: timm's features_only model should share the classifier's names",
            )
        info = features.feature_info
        unloaded = set(new)
        blocks = tuple(b.removeprefix("model.") for b in _blocks(features))
        size = getattr(options, "image_size", None) or int(
            classifier.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        )
        config = {**classifier.pretrained_cfg, "input_size": (3, size, size)}
        return BuiltModel(
            model=features,
            task=task,
            num_labels=num_labels,
            new_parameters=tuple(n for n, _ in features.named_parameters() if n in unloaded),
            blocks=blocks,
            preprocessor=DetectionPreprocessor(
                size, tuple(config.get("mean", (0.485, 0.456, 0.406))), tuple(config.get("std", (0.229, 0.224, 0.225)))
            ),
            families=_families(features, blocks),
            pyramid=tuple(zip(info.channels(), info.reduction())),
            head_options={"channels": head_options.channels, "depth": head_options.depth},
        )

    @staticmethod
    def _preprocessor(model: torch.nn.Module, options: Any) -> ImagePreprocessor:
        from timm.data import create_transform, resolve_data_config

        config = resolve_data_config({}, model=model)
        size = getattr(options, "image_size", None)
        if size:
            config.update(input_size=(3, size, size), crop_pct=1.0)
        return ImagePreprocessor(create_transform(**config, is_training=False), tuple(config["input_size"]), config)

    def collator(self, built: BuiltModel, options: Any) -> Callable[[Sequence[Example]], Batch]:
        import torch
        from PIL import Image

        from adapt.web_export import rgb_picture

        transform = built.preprocessor.transform if isinstance(built.preprocessor, ImagePreprocessor) else None

        def to_rgb(image: Any) -> Image.Image:
            if not isinstance(image, (str, Path)):
                return rgb_picture(image)
            try:
                return rgb_picture(image)
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
                raise DataError(
                    f"cannot read image {image}: {type(exc).__name__}: {exc}", hint="replace or remove the file"
                ) from None

        if isinstance(built.preprocessor, DetectionPreprocessor):
            return _box_collator(built.preprocessor, to_rgb)

        assert transform is not None

        def collate(examples: Sequence[Example]) -> Batch:
            batch = {"pixel_values": torch.stack([transform(to_rgb(e["image"])) for e in examples])}
            if examples and "label" in examples[0]:
                batch["labels"] = torch.tensor([e["label"] for e in examples])
            return batch

        return collate

    def example_inputs(self, built: BuiltModel, batch_size: int = 2) -> Batch:
        import torch

        return {
            "pixel_values": torch.randn(
                batch_size, *built.preprocessor.input_size, generator=torch.Generator().manual_seed(0)
            )
        }

    def save_merged(
        self, model: torch.nn.Module, built: BuiltModel, folder: Path, label_names: Sequence[str], options: Any
    ) -> MergedFolder | None:
        """Backbone.save_merged: a classifier's timm network under timm's own tensor names, which
        ``timm.create_model(arch, pretrained_cfg_overlay=dict(file=...))`` loads; None for the
        other models (a detector, an embedding model), which adapt writes in its own layout."""
        from safetensors.torch import save

        from adapt.wrappers import PixelClassifier

        if type(model) is not PixelClassifier:
            return None
        state = {k: v.detach().cpu().contiguous() for k, v in model.model.state_dict().items()}
        (folder / "model.safetensors").write_bytes(save(state, metadata={"format": "pt", "layout": "network"}))
        network: Any = model.model
        arch, labels = network.pretrained_cfg.get("architecture") or "ARCH", max(1, len(label_names))
        return MergedFolder(
            "timm",
            [
                "```python",
                "import timm",
                f'model = timm.create_model("{arch}", pretrained=True, num_classes={labels},',
                " " * 26 + f'pretrained_cfg_overlay=dict(file="merged/model.safetensors", num_classes={labels}))',
                "```",
                "(`num_classes` in the overlay too: else timm drops the trained head as not fitting ImageNet's 1000 "
                "classes.)",
            ],
        )

    def export_form(self, model: torch.nn.Module, inputs: Batch, io: OnnxIO) -> torch.nn.Module:
        """Backbone.export_form: with the image size fixed in the graph (only the batch varies),
        timm's run-time "same" padding as constants (:func:`static_same_padding`)."""
        if any(set(io.dynamic_axes.get(name, {})) - {0} for name in io.input_names):
            return model
        return static_same_padding(model, tuple(inputs[name] for name in io.input_names))

    def onnx_io(self, built: BuiltModel) -> OnnxIO:
        if built.task == DETECTION:  # one square size: the head's locations are fixed
            return OnnxIO(("pixel_values",), ("logits",), {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
        return OnnxIO(("pixel_values",), ("logits",), {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})

    def save_preprocessing(self, built: BuiltModel, options: Any, folder: Path) -> dict[str, Any]:
        """timm's data config, enough to prepare images with PIL and numpy alone."""
        if isinstance(built.preprocessor, DetectionPreprocessor):
            return built.preprocessor.spec()
        config = built.preprocessor.data_config
        return {
            "kind": "image",
            "input_names": ["pixel_values"],
            "input_size": list(config["input_size"]),
            "interpolation": config.get("interpolation", "bicubic"),
            "mean": list(config["mean"]),
            "std": list(config["std"]),
            "crop_pct": config.get("crop_pct", 1.0),
        }

    def default_targets(self, method: str) -> list[str]:
        # pointwise (expand, project) and depthwise convolutions of every inverted-residual block
        return {"lora": ["conv_pw", "conv_dw", "conv_pwl"]}.get(method, [])


def _box_collator(
    preprocessor: DetectionPreprocessor, to_rgb: Callable[[Any], Any]
) -> Callable[[Sequence[Example]], Batch]:
    """Images stretched to the input size; ``labels`` rows ``class, x1, y1, x2, y2`` in
    fractions of each image's width and height, padded with class -100 (adapt.plugins.detection.loss)."""
    import numpy as np
    import torch

    from adapt.interfaces import IGNORE_INDEX
    from adapt.onnx_predict import stretch_image

    spec = preprocessor.spec()

    def collate(examples: Sequence[Example]) -> Batch:
        arrays, rows = [], []
        for example in examples:
            image = to_rgb(example["image"])
            arrays.append(stretch_image(image, spec))
            scale = np.array([image.width, image.height, image.width, image.height], dtype=np.float32)
            rows.append(
                [
                    [float(c), *(np.asarray(b, dtype=np.float32) / scale)]
                    for b, c in zip(example.get("boxes", []), example.get("labels", []))
                ]
            )
        labels = torch.full((len(examples), max([1, *map(len, rows)]), 5), float(IGNORE_INDEX))
        for i, found in enumerate(rows):
            if found:
                labels[i, : len(found)] = torch.tensor(found, dtype=torch.float32)
        return {"pixel_values": torch.from_numpy(np.stack(arrays)), "labels": labels}

    return collate


#: timm's names for the convolutions of its mobile blocks (InvertedResidual, DepthwiseSeparable, EdgeResidual).
POINTWISE, DEPTHWISE = ("conv_pw", "conv_pwl"), ("conv_dw",)


def _families(model: torch.nn.Module, blocks: Sequence[str]) -> dict[str, list[str]]:
    """Pointwise (expand, project) and depthwise convolutions of every block."""
    inside = [n for n, _ in model.named_modules() if any(n.startswith(b + ".") for b in blocks)]
    found = {
        "pointwise-conv": [n for n in inside if n.rsplit(".", 1)[-1] in POINTWISE],
        "depthwise-conv": [n for n in inside if n.rsplit(".", 1)[-1] in DEPTHWISE],
    }
    return {family: names for family, names in found.items() if names}


def _blocks(model: torch.nn.Module) -> list[str]:
    """Every block of timm's ``blocks`` stages, input side first."""
    stages = getattr(model, "blocks", None)
    if stages is None:
        return []
    return [f"model.blocks.{i}.{j}" for i, stage in enumerate(stages) for j in range(len(stage))]


@hookimpl
def adapt_register_backbones(register: Any) -> None:
    register(MobileNet())


def static_same_padding(model: torch.nn.Module, args: tuple[Any, ...]) -> torch.nn.Module:
    """``model``, or a copy in which timm's ``Conv2dSame`` layers (the ``tf_*`` models:
    EfficientNet-Lite) pad by a constant. Conv2dSame computes TensorFlow's "same"
    padding from the input's shape at run time, which exports as some 30 small shape
    arithmetic nodes per strided conv (Shape, Gather, Div, Ceil, Clip, Concat) before a
    Pad; with the image's height and width fixed in the graph, as adapt exports them,
    that padding is a constant, found by running the model once on ``args``. The same
    maths (the export's parity check compares it with the merged model), less work:
    ONNX Runtime folds a constant Pad into the conv."""
    import copy

    import torch
    import torch.nn.functional as F

    from adapt.targets import replace_module

    names = [n for n, m in model.named_modules() if type(m).__name__ == "Conv2dSame" and isinstance(m, torch.nn.Conv2d)]
    if not names:
        return model
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda module, inputs, name=n: sizes.__setitem__(name, tuple(inputs[0].shape[-2:]))
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for hook in hooks:
            hook.remove()

    class StaticPadConv(torch.nn.Module):
        def __init__(self, conv: torch.nn.Conv2d, pads: tuple[int, int, int, int]) -> None:
            super().__init__()
            self.conv, self.pads = conv, pads

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            conv = self.conv
            return F.conv2d(F.pad(x, self.pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    model = copy.deepcopy(model)
    for name in names:
        conv = model.get_submodule(name)
        assert isinstance(conv, torch.nn.Conv2d)
        pad_h, pad_w = (
            _same_padding(size, k, s, d)
            for size, k, s, d in zip(sizes[name], conv.kernel_size, conv.stride, conv.dilation)
        )
        replace_module(
            model, name, StaticPadConv(conv, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        )
    return model


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """TensorFlow's "same" padding along one axis (timm's get_same_padding)."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
