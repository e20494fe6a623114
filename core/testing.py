"""Test helpers for plugin authors: a host with inline plugins, and conformance
checks that run the same contract the built-in plugins pass.

    from adapt.testing import check_method, make_test_host, tiny_image_batch, tiny_image_model

    def test_my_method():
        host = make_test_host(MyPlugin())
        check_method(host.methods.get("scale"), build=tiny_image_model, batch=tiny_image_batch())

``tiny_image_model`` / ``tiny_text_model`` are small real models (a CNN with
depthwise and pointwise convolutions; a 2-layer BERT with its tokenizer, written
to a folder) with their target families, built in a blink and never downloaded.

Each check raises AssertionError with a message saying which part of the
contract failed. They import torch, so import this module in tests only.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from adapt.engine import freeze_frozen_norms
from adapt.errors import AdaptError
from adapt.host import Host, make_host
from adapt.interfaces import (
    SPLITS,
    Backbone,
    Batch,
    BuiltModel,
    DataRequest,
    DataSource,
    Exporter,
    MergeResult,
    Method,
    Task,
    declare,
)
from adapt.task_kit import cross_entropy


def make_test_host(*plugins: object, builtins: bool = True) -> Host:
    """A fresh host with ``plugins`` registered inline and no third-party autoloading."""
    return make_host(plugins, autoload=False, builtins=builtins)


def _logits_of(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The logits: the output, or its first item (a cached decoder returns its cache after them)."""
    return output[0] if isinstance(output, tuple) else output


def _task_fields(name: str) -> tuple[str, ...]:
    """The fields of the built-in task ``name``; none for a task adapt does not ship."""
    try:
        return tuple(declare(_registered("tasks", name), Task).fields)
    except AdaptError:
        return ()


def _registered(kind: str, name: str) -> Any:
    """The built-in plugin object ``name`` of ``kind`` (tasks, backbones), through a fresh host."""
    return make_host(autoload=False).registries()[kind].get(name)


def _check_user_error(action: Callable[[], Any], what: str) -> None:
    """``action`` must fail with an AdaptError carrying a message and a hint (the CLI's one clear message)."""
    try:
        action()
    except AdaptError as exc:
        assert str(exc).strip(), f"{what}: the error has no message"
        assert exc.hint, f"{what}: the error {exc} has no hint telling the user what to do"
        return
    except Exception as exc:  # noqa: BLE001 - any other exception would reach the user as a traceback
        raise AssertionError(
            f"{what} must raise an adapt.errors error with a hint, not {type(exc).__name__}: {exc}"
        ) from exc
    raise AssertionError(f"{what} was accepted; it must raise an adapt.errors error")


def _check_collated(backbone: Backbone, built: BuiltModel, task: Task, examples: Sequence[dict], options: Any) -> None:
    """The task's examples, flattened and collated as a run does, give logits the task's loss
    and decode take."""
    rows = list(task.flatten(examples))  # what the backbone's collator gets in a run
    batch = backbone.collator(built, options)(rows)
    assert "labels" in batch, "the collator must return labels when the examples have them"
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = _logits_of(built.model(**batch))
    assert logits.shape[0] == len(rows), (
        f"collated batch gives logits of shape {tuple(logits.shape)} for {len(rows)} examples"
    )
    loss = task.loss(logits, labels)
    assert torch.isfinite(loss).all(), (
        f"the task's loss on the collated batch is {loss}: labels and logits do not line up"
    )
    predictions, references = task.decode(logits, labels)
    assert len(predictions) == len(references) > 0, (
        "the task's decode of the collated batch gives a prediction per reference"
    )


def _check_graph_io(backbone: Backbone, built: BuiltModel, inputs: Batch) -> None:
    """ONNX input names are the model's first forward parameters, keyed as example_inputs, with a
    dynamic batch axis on every input and output."""
    io = backbone.onnx_io(built)
    signature = inspect.signature(built.model.forward).parameters
    named = [n for n, p in signature.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in signature.values())  # a cached decoder's *past
    shown = io.input_names[: len(named)] if variadic else io.input_names
    assert named[: len(shown)] == list(shown), (
        f"ONNX inputs {io.input_names} are not the first forward parameters {named}"
    )
    assert list(io.input_names) == list(inputs), "example_inputs must be keyed by the ONNX input names, in order"
    assert set(io.dynamic_axes) == set(io.input_names) | set(io.output_names), (
        "every input and output needs dynamic axes"
    )
    assert all(axes.get(0) == "batch" for axes in io.dynamic_axes.values()), "axis 0 must be the dynamic batch axis"


def check_backbone(
    backbone: Any,
    *,
    task: str,
    examples: Sequence[dict],
    checkpoint: str | None = None,
    arch: str | None = None,
    options: Any = None,
    num_labels: int = 3,
    methods: Sequence[str] = ("lora",),
    bad_checkpoint: str | None = None,
    task_plugin: Any = None,
) -> BuiltModel:
    """Build for ``task`` as a run does (the task's ``head_size`` and ``wrap_model``: ``task_plugin``,
    else the built-in task of that name), and check the logits' batch size, the collator on
    the task's ``examples`` (after its ``flatten``, as a run collates them: the task's loss
    finite, its decode giving predictions), ONNX
    I/O names, head, blocks and default targets; with ``bad_checkpoint`` (a path that is not
    a valid checkpoint), that building from it gives a clear error."""
    backbone = declare(backbone, Backbone)
    assert task in backbone.tasks, f"{backbone.name} does not list task {task!r}"
    if bad_checkpoint is not None:
        _check_user_error(
            lambda: backbone.build(task, num_labels, checkpoint=bad_checkpoint, arch=arch, options=options),
            f"building from checkpoint {bad_checkpoint!r}",
        )
    task_object = declare(task_plugin if task_plugin is not None else _registered("tasks", task), Task)
    torch.manual_seed(0)
    built = backbone.build(task, task_object.head_size(num_labels), checkpoint=checkpoint, arch=arch, options=options)
    built = task_object.wrap_model(built, num_labels)  # a head the task adds (a detector's, an embedding's)
    built.model.eval()
    inputs = backbone.example_inputs(built, batch_size=2)
    with torch.no_grad():
        first = _logits_of(built.model(**inputs))
    assert first.shape[0] == next(iter(inputs.values())).shape[0], (
        "example_inputs' logits do not have the batch's size first"
    )
    _check_collated(backbone, built, task_object, examples, options)
    _check_graph_io(backbone, built, inputs)
    modules = dict(built.model.named_modules())
    params = dict(built.model.named_parameters())
    assert built.head or not built.num_labels, "a classifier's head (the modules its task adds) must be named"
    assert all(h in modules for h in built.head), f"head {built.head} names no module"
    assert all(b in modules for b in built.blocks), "a block names no module"
    assert all(p in params for p in built.new_parameters), "a new parameter names no parameter"
    declared = set(backbone.families)
    for family, names in built.families.items():
        assert names and all(n in modules for n in names), f"target family {family!r} names no module of the model"
        assert not declared or family in declared, (
            f"family {family!r} is not in the backbone's `families` {sorted(declared)}"
        )
    for method in methods:
        for target in backbone.default_targets(method):
            assert any(n == target or n.endswith("." + target) for n in modules), (
                f"default {method} target {target!r} matches no module"
            )
    return built


#: How far :func:`perturb` moves each trainable parameter (standard deviation of the noise).
PERTURBATION = 0.05


def perturb(model: torch.nn.Module, scale: float = PERTURBATION, seed: int = 0) -> None:
    """Add seeded Gaussian noise to every trainable parameter. A freshly applied adapter
    is often zero (LoRA's B, an adapter's up-projection) or the identity, and a few
    training steps leave it near there, so a merge that folds it wrongly still matches;
    with every factor moved, a wrong fold shows whatever the method's initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)


def _train_steps(
    built: BuiltModel,
    inputs: Batch,
    labels: torch.Tensor,
    steps: int,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """A few AdamW steps on one batch, as the engine trains (frozen BatchNorms keep their statistics)."""
    params = [p for p in built.model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-2)
    built.model.train()
    freeze_frozen_norms(built.model)
    for _ in range(steps):
        value = loss(built.model(**inputs), labels)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()


def _check_merged(
    merged: MergeResult, adapted: torch.Tensor, folded: torch.Tensor, base: BuiltModel, atol: float
) -> None:
    """The merge reproduces the adapted model in fp32; a folded one keeps the base's size and module kinds."""
    diff = float((adapted - folded).abs().max())
    assert diff <= atol, f"merged model differs from the adapted one by {diff:.3g} > {atol}"
    assert torch.equal(adapted.argmax(-1), folded.argmax(-1)), "merged model predicts other labels"
    assert all(p.dtype == torch.float32 for p in merged.model.parameters()), "merge must give an fp32 model"
    if merged.folded:
        count = sum(p.numel() for p in merged.model.parameters())
        want = sum(p.numel() for p in base.model.parameters())
        assert count == want, f"a folded merge must keep the base parameter count ({count} != {want})"
        assert {type(m) for m in merged.model.modules()} <= {type(m) for m in base.model.modules()}, (
            "a folded merge left method modules behind"
        )


def check_method(
    method: Any,
    *,
    build: Callable[[], BuiltModel],
    batch: Batch,
    options: Any = None,
    default_targets: Sequence[str] = (),
    steps: int = 3,
    atol: float = 1e-5,
    tmp_path: Path | None = None,
    bad_options: Any = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> MergeResult:
    """Apply, move every trainable parameter off its initialisation (:func:`perturb`),
    train a few steps, merge, and check the merge reproduces the adapted model (and, when
    folded, the base architecture and parameter count); round-trip the adapter.
    With ``bad_options`` (say, targets that match nothing), check applying them gives a
    clear error. ``loss``: the task's (``task.loss``); cross-entropy when not given."""
    method = declare(method, Method)
    schema = method.options_schema
    if options is None and schema is not None:
        options = schema()  # the method's defaults, as a config without options gives it
    if not default_targets:
        from adapt.families import default_target_names

        default_targets = default_target_names(build().families, tuple(method.default_families or ()))
    if bad_options is not None:
        _check_user_error(
            lambda: method.apply(build(), bad_options, list(default_targets)),
            f"applying {method.name} with {bad_options!r}",
        )
    base = build()
    built = build()
    trainable = method.apply(built, options, list(default_targets))
    assert trainable, "apply left nothing trainable"
    assert set(built.new_parameters) <= set(trainable), "parameters the checkpoint lacked must stay trainable"
    perturb(built.model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    _train_steps(built, inputs, batch["labels"], steps, loss or cross_entropy)
    built.model.eval()
    merged = method.merge(built)
    with torch.no_grad():
        adapted, folded = built.model(**inputs), merged.model(**inputs)
    _check_merged(merged, adapted, folded, base, atol)
    fresh = build()
    method.apply(fresh, options, list(default_targets))
    method.load_adapter_state(fresh, method.adapter_state(built))
    fresh.model.eval()
    with torch.no_grad():
        reloaded = fresh.model(**inputs)
    assert float((reloaded - adapted).abs().max()) == 0.0, "adapter_state / load_adapter_state do not round-trip"
    return merged


def check_exporter(
    exporter: Any,
    *,
    model: torch.nn.Module,
    inputs: Batch,
    io: Any,
    path: Path,
    options: Any = None,
    atol: float = 1e-4,
) -> Path:
    """Export, run the file through ``load`` and compare the logits with the model's. A
    model with several outputs (a task's ``graph_outputs``: logits, then boxes after NMS
    or an embedding) must also give every other output by name through
    ``load_outputs``, with the model's rank and trailing sizes; their values are
    compared by the task's ``agreement`` in the export stage (a near-tie can reorder
    boxes), not here."""
    model.eval()
    written = exporter.export(model, inputs, io, path, options)
    assert Path(written).exists(), "export wrote no file"
    feed = {k: v.numpy() for k, v in inputs.items()}
    with torch.no_grad():
        output = model(**inputs)
    outputs = list(output) if isinstance(output, (tuple, list)) else [output]
    expected = outputs[0].numpy()
    got = exporter.load(written)(feed)
    assert tuple(got.shape) == tuple(expected.shape), (
        f"exported output shape {tuple(got.shape)} != {tuple(expected.shape)}"
    )
    diff = float(abs(got - expected).max())
    assert diff <= atol, f"exported file differs from the model by {diff:.3g} > {atol}"
    if len(outputs) > 1:
        load_outputs = declare(exporter, Exporter).load_outputs(written)
        assert load_outputs is not None, (
            "a graph with several outputs needs the exporter's load_outputs(path) to be checked"
        )
        named = load_outputs(feed)
        for name, want in zip(io.output_names[1:], outputs[1:]):
            assert name in named, f"the exported file has no output {name!r} (it has {sorted(named)})"
            assert named[name].ndim == want.dim() and tuple(named[name].shape[1:]) == tuple(want.shape[1:]), (
                f"exported output {name!r} has shape {tuple(named[name].shape)}, the model's {tuple(want.shape)}"
            )
    return Path(written)


def check_data_source(source: Any, request: DataRequest) -> dict[str, list[dict]]:
    """Read and check the splits and the examples' fields: those the request asks for
    (``request.fields``, which the source must declare it gives), else the request's task's."""
    source = declare(source, DataSource)
    if request.fields:
        missing = [f for f in request.fields if f not in source.fields]
        assert not missing, f"{source.name} does not declare the fields {missing} in its `fields`"
    else:
        assert request.task in source.tasks, f"{source.name} does not list task {request.task!r}"
    wanted = request.fields or _task_fields(request.task)
    splits = source.read(request)
    assert "train" in splits and set(splits) <= set(SPLITS), (
        f"splits must be train and optionally val, test; got {sorted(splits)}"
    )
    for name, examples in splits.items():
        assert examples, f"split {name} is empty"
        for example in examples:
            missing = [f for f in wanted if f not in example]
            assert not missing, f"an example of split {name} lacks {missing}"
    return splits


class TinyCNN(torch.nn.Module):
    """stem -> depthwise block -> pointwise block -> pooled linear head, on images of any size
    (``channels``: 3 for RGB, 1 for grey)."""

    def __init__(self, num_labels: int = 3, width: int = 8, channels: int = 3) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.BatchNorm2d(width), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU()),
        )
        self.head = nn.Linear(width, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(pixel_values)).mean(dim=(2, 3)))


def tiny_image_model(num_labels: int = 3, task: str = "") -> BuiltModel:
    """A seeded :class:`TinyCNN` as a backbone would build it: head, blocks and target families
    (``task``: the name it records; nothing in a method's checks reads it)."""
    torch.manual_seed(0)
    families = {"depthwise-conv": ["blocks.0.0"], "pointwise-conv": ["blocks.1.0"]}
    return BuiltModel(
        TinyCNN(num_labels),
        task,
        num_labels,
        head=("head",),
        new_parameters=("head.weight", "head.bias"),
        blocks=("blocks.0", "blocks.1"),
        families=families,
    )


def tiny_image_batch(size: int = 6, num_labels: int = 3, pixels: int = 8) -> Batch:
    """Random images and labels for :func:`tiny_image_model`."""
    generator = torch.Generator().manual_seed(1)
    return {
        "pixel_values": torch.randn(size, 3, pixels, pixels, generator=generator),
        "labels": torch.arange(size) % num_labels,
    }


def _check_task_declaration(task: Any) -> Task:
    """A task's declared members: no misspelt member, a name, a primary metric, fields of names,
    a post-processing kind predict.py implements (JSON, as preprocess.json holds it)."""
    import json

    from adapt.interfaces import POSTPROCESS_KINDS, undeclared_members

    misspelt = undeclared_members(task, Task)
    assert not misspelt, (
        f"members adapt never reads (misspelt?): {', '.join(f'{a} (did you mean {m}?)' for a, m in misspelt)}"
    )
    declared = declare(task, Task)
    assert isinstance(declared.name, str) and declared.name, "a task needs a non-empty string `name`"
    assert isinstance(declared.primary_metric, str) and declared.primary_metric, "a task needs a `primary_metric`"
    assert all(isinstance(f, str) for f in declared.fields), "`fields` must be a tuple of field names"
    assert declared.postprocess.get("kind") in POSTPROCESS_KINDS, (
        f"postprocess kind {declared.postprocess.get('kind')!r} is not one of {POSTPROCESS_KINDS}"
    )
    json.dumps(dict(declared.postprocess))  # preprocess.json holds it
    return declared


def check_task(
    task: Any, *, examples: Sequence[dict] = (), logits: torch.Tensor | None = None, labels: torch.Tensor | None = None
) -> None:
    """The task contract (adapt.interfaces.Task), as timm checks every model: its declared
    members (a name, a primary metric, the fields it needs, a post-processing kind predict.py
    implements, no misspelt member); with ``examples``, label names and encoding; with
    ``logits`` for those examples (and ``labels``, else each encoded ``label`` stacked), a
    finite loss with a gradient, ``decode``, ``metrics`` holding the primary metric, and
    ``example_scores`` whose mean is it; and the row predict.py prints for one of them."""
    import json
    import math

    from adapt.onnx_predict import finish_row

    task = _check_task_declaration(task)
    if not examples:
        return
    for i, example in enumerate(examples):
        missing = [f for f in task.fields if f not in example]
        assert not missing, f"example {i} lacks the fields {missing} the task declares"
    names = task.label_names(examples)
    assert names == sorted(names) and all(isinstance(n, str) for n in names), "label_names must return sorted names"
    assert not task.labelled or len(names) >= task.min_labels, (
        f"{len(names)} labels in the examples, fewer than min_labels {task.min_labels}"
    )
    encoded = [task.encode(e, {n: i for i, n in enumerate(names)}) for e in examples]
    if logits is None:
        return
    if labels is None:
        labels = torch.tensor([e["label"] for e in encoded])
    logits = logits.clone().requires_grad_(True)
    loss = task.loss(logits, labels)
    assert loss.dim() == 0 and math.isfinite(float(loss)), f"the loss must be a finite scalar, got {loss}"
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all(), (
        "the loss gives no finite gradient to the logits"
    )
    predictions, references = task.decode(logits.detach(), labels)
    assert len(predictions) == len(references) == len(examples), (
        "decode must give one prediction and one reference per example"
    )
    metrics = task.metrics(predictions, references, names)
    assert task.primary_metric in metrics, f"metrics lack the primary metric {task.primary_metric!r}: {sorted(metrics)}"
    scores = task.example_scores(predictions, references, names)
    if scores is not None:
        assert len(scores) == len(examples) and math.isclose(
            sum(scores) / len(scores), metrics[task.primary_metric], abs_tol=1e-6
        ), "example_scores' mean must be the primary metric"
    if task.postprocess["kind"] in ("softmax-top-k", "sigmoid-threshold", "outputs"):
        row = finish_row(
            "an input",
            {"logits": logits.detach()[:1].numpy()},
            {"labels": names, "postprocess": dict(task.postprocess)},
            {},
            {},
        )
        json.dumps(row)


def __getattr__(name: str) -> Any:
    """The tiny text-model helpers moved to adapt.plugins.transformers.testing (adapt.moved)."""
    from adapt.moved import moved_attribute

    return moved_attribute(__name__, name)
