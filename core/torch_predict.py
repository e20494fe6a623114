"""``adapt predict`` with PyTorch: the run's trained model behind the task's ``predict``.

The task decides how an input becomes an example (``read_input``) and what a prediction
is (``predict``); by default its declared post-processing (``postprocess``) turns the
model's named outputs into a row, through the very function the exported predict.py
runs (adapt.onnx_predict.finish_row), so the PyTorch and ONNX paths print alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from adapt.interfaces import IGNORE_INDEX, BuiltModel, Example


class TorchPredictor:
    """The :class:`adapt.interfaces.Predictor` of a restored run (``session``, adapt.pipeline.restore)."""

    def __init__(self, session: Any, export_dir: Path | None) -> None:
        self.session, self.export_dir = session, export_dir
        self.built: BuiltModel = session.built
        self.label_names: list[str] = list(session.label_names)
        model = self.built.model.eval()
        extended = session.plan.task.graph_outputs(model)
        self.module, self.names = (model, ()) if extended is None else (extended[0].eval(), tuple(extended[1]))
        self.input_names = session.plan.backbone.onnx_io(self.built).input_names
        #: the backbone's own collator: read_input gives one example as the backbone reads it
        #: (not the task's ``flatten``, which lays out a training batch)
        self.collate = session.plan.backbone.collator(self.built, session.plan.backbone_options)
        self._batch: dict[str, Any] = {}

    def outputs(self, example: Example) -> dict[str, Any]:
        import torch

        batch = self.collate([example])
        self._batch = batch
        inputs = {n: batch[n] for n in self.input_names if n in batch}
        with torch.no_grad():
            if self.names:  # the graph's module takes its inputs in the graph's order
                result = self.module(*inputs.values())
            else:
                result = self.module(**inputs)
        values = result if isinstance(result, (tuple, list)) else (result,)
        return {name: value.detach().float().numpy() for name, value in zip(("logits", *self.names), values)}

    def finish(
        self, source: str, example: Example, outputs: dict[str, Any], settings: Mapping[str, Any]
    ) -> dict[str, Any]:
        from adapt.onnx_predict import finish_row

        labels = self._batch.get("labels")
        first = (
            (labels[0] != IGNORE_INDEX).nonzero().flatten().tolist() if labels is not None and labels.dim() == 2 else []
        )
        pixels = self._batch.get("pixel_values")
        spec = {"labels": self.label_names, "postprocess": dict(self.session.plan.task.postprocess)}
        if pixels is not None:
            spec["input_size"] = list(pixels.shape[1:])
        context = {
            "image": example.get("image"),
            "words": example.get("tokens", []),
            "first": first,
            "folder": self.export_dir,
        }
        return finish_row(source, outputs, spec, context, dict(settings))
