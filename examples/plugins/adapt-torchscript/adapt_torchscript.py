"""A TorchScript exporter for adapt, written against adapt's public surface only.

Writes the merged model as a traced, frozen TorchScript file that LibTorch (C++)
and PyTorch Mobile load without Python. adapt checks it like every export: the
file is run through ``load`` on the test split and compared with the merged
PyTorch model (parity and metrics in the report).

Use it in a config::

    export:
      formats: [onnx, torchscript]
      options: {torchscript: {freeze: true}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import ExportError
from adapt.interfaces import Batch, OnnxIO


class TorchScriptOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    freeze: bool = Field(
        True, description="inline the weights as constants and fold what can be folded (torch.jit.freeze)"
    )


class TorchScriptExporter:
    name = "torchscript"
    suffix = ".pt"
    options_schema = TorchScriptOptions

    def export(self, model: Any, inputs: Batch, io: OnnxIO, path: Path, options: TorchScriptOptions | None) -> Path:
        import torch

        options = options or TorchScriptOptions()
        model.eval()
        try:
            with torch.no_grad():
                traced = torch.jit.trace(model, example_kwarg_inputs=dict(inputs), check_trace=False)
                if options.freeze:
                    traced = torch.jit.freeze(traced)
        except Exception as exc:  # noqa: BLE001 - tracing failures come in many types
            raise ExportError(
                f"torch.jit.trace failed on this model: {type(exc).__name__}: {exc}",
                hint="drop torchscript from export.formats; the ONNX export does not need tracing",
            ) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        traced.save(str(path))
        return path

    def load(self, path: Path, threads: int | None = None) -> Callable[[dict[str, Any]], Any]:
        import torch

        if threads:
            torch.set_num_threads(threads)
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run(feed: dict[str, Any]) -> Any:
            with torch.no_grad():
                return module(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()

        return run


@hookimpl
def adapt_register_exporters(register: Any) -> None:
    register(TorchScriptExporter())
