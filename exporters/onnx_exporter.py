"""``onnx``: the merged model as one ONNX graph, then ONNX Runtime's optimisations,
int8 quantisation behind an accuracy gate, and the ``.ort`` mobile format.

* Export: ``torch.onnx.export`` (TorchScript exporter, opset 17 by default) with
  dynamic batch (and sequence) axes, then ``onnx.checker`` with full checks. The
  model arrives in its backbone's export form (``Backbone.export_form``: layers that
  trace badly already swapped for equal ones). A decoder exports with a key/value cache.
* Optimise: transformers go through ONNX Runtime's transformer optimiser, which
  fuses attention, layer norm and GELU in the eager-attention graph the text
  backbones export; CNNs through ONNX Runtime's offline graph optimisation.
* int8: dynamic quantisation for transformers; static QDQ quantisation,
  per-channel, calibrated on training inputs, for CNNs. Each attempt is scored on
  the validation split; when one loses more than ``export.max_accuracy_drop``,
  the known remedies are tried in turn (more calibration data; keeping the
  sensitive layers, the first convolution, depthwise convolutions and the head, in
  fp32). If none passes, the int8 file is kept but not recommended.
* int4 (``export.quantize: int4`` or ``all``): weight-only 4-bit MatMul weights and
  embeddings (MatMulNBits, GatherBlockQuantized), gated the same way; of the
  quantised files within the budget, the smallest is recommended.
* Mobile: the recommended file in ONNX Runtime's ``.ort`` format, with the
  operator config for a reduced-size build and the mobile usability check.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import ExportError
from adapt.interfaces import Derived, DeriveContext, Exporter, Form
from adapt.exporters import int8_arithmetic, onnx_files
from adapt.latency import cpu_flags

if TYPE_CHECKING:
    import numpy as np
    import torch

    from adapt.interfaces import Batch, OnnxIO


class OnnxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    opset: int = Field(17, ge=14, le=23, description="ONNX opset version")
    calibration_examples: int = Field(
        100, ge=1, description="training inputs used to calibrate static int8 (CNNs); a remedy doubles it"
    )
    calibration_method: Literal["auto", "minmax", "percentile", "entropy"] = Field(
        "auto",
        description="how static int8 sets activation ranges from the calibration inputs (ONNX Runtime's "
        "CalibrationMethod); auto: each is tried and the one scoring best on the validation split is used",
    )
    int8_activations: Literal["auto", "int8", "uint8"] = Field(
        "auto",
        description="static int8's activation type; auto: both are timed at batch 1 and the faster is kept (a choice "
        "by timing: pin it where two exports of the same run must be identical)",
    )
    external_data: onnx_files.ExternalData = Field(
        "auto",
        description="where the weights go: auto keeps them in the .onnx file unless they pass 1.8 GB (protobuf's "
        "limit is 2 GB), then writes them to <file>.data beside it; always writes every file that way",
    )
    int8_format: Literal["auto", "qdq", "qoperator"] = Field(
        "auto",
        description="static int8's file format; auto: QOperator where timed more than 10% faster, else QDQ (pin it "
        "for identical exports)",
    )


#: Past this many bytes of fp32 graph, int8 for a transformer is weight-only (MatMulNBits, 8 bits) made from the
#: file: ONNX Runtime's dynamic quantiser holds four copies of the graph (10 GB for a 0.63B decoder).
DYNAMIC_INT8_MAX_BYTES = 1 << 30


def weight_only(source: Path, out: Path, bits: int, setting: str, exclude: Sequence[str] = ()) -> None:
    """ONNX Runtime's weight-only quantiser from the file: MatMul weights in ``bits`` (MatMulNBits,
    blocks of 32, symmetric, int8 compute) and, at 4 bits, the embedding tables (GatherBlockQuantized,
    which needs opset 21: the graph is converted without its weights, which the converter cannot
    serialise past 2 GB, and they are read in once afterwards)."""
    import logging

    import onnx
    from onnx import version_converter
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    graph = onnx.load(str(source), load_external_data=False)
    if bits == 4:
        graph = version_converter.convert_version(graph, 21)
    load_external_data_for_model(graph, str(source.parent))
    kinds = ("MatMul", "Gather") if bits == 4 else ("MatMul",)
    quantizer = MatMulNBitsQuantizer(
        graph,
        bits=bits,
        block_size=32,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_exclude=list(exclude),
        op_types_to_quantize=kinds,
        quant_axes=(("MatMul", 0), ("Gather", 1))[: len(kinds)],
    )
    _quietly(quantizer.process)
    quantizer.model.topological_sort()
    onnx_files.save(quantizer.model.model, out, setting)


def _weight_only_int8_attempts(
    base: Path, ctx: DeriveContext
) -> tuple[list[tuple[str, Callable[[Path], dict[str, Any] | None]]], dict[str, Any]]:
    """int8 for a transformer past DYNAMIC_INT8_MAX_BYTES: weight-only, the whole graph, then the head in fp32."""

    def make(exclude: list[str]) -> Callable[[Path], None]:
        return lambda out: weight_only(base, out, 8, _external(ctx), exclude)

    label = "int8 weight-only (MatMulNBits, 8 bits, block 32)"
    why = {
        "activations": {
            "chosen": "weight-only",
            "why": f"the fp32 graph passes {DYNAMIC_INT8_MAX_BYTES >> 20} MiB, and ONNX Runtime's dynamic quantiser "
            "would hold four copies of it; MatMulNBits is made from the file (activations int8 inside the kernel)",
            "cpu_flags": cpu_flags(),
        }
    }
    return [(label, make([])), (f"{label}, head in fp32", make(_head_nodes(base)))], why


def _dynamic_attempts(
    base: Path, ctx: DeriveContext
) -> tuple[list[tuple[str, Callable[[Path], dict[str, Any] | None]]], dict[str, Any]]:
    """Dynamic int8 (transformers: weights quantised, activations as they arrive): the whole graph,
    then with the head in fp32; 7-bit weights where the target CPU's int8 products saturate."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    safe = int8_arithmetic.settings(ctx.target)
    seven = safe["reduce_range"]["uint8"]  # dynamic int8 quantises activations to uint8
    external = _external_like(ctx, base)

    def dynamic(exclude: list[str]) -> Callable[[Path], None]:
        def make(out: Path) -> None:
            onnx_files.remove(out)  # ONNX Runtime appends to a data file left from an earlier attempt
            _quietly(
                quantize_dynamic,
                str(base),
                str(out),
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                reduce_range=seven,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                use_external_data_format=external,
            )

        return make

    label = "dynamic int8" + (" (7-bit weights)" if seven else "")
    probe = {"saturation_probe": safe["probe"]} if "probe" in safe else {}
    arithmetic = {
        "activations": {
            "chosen": "uint8",
            "reduce_range": seven,
            "arithmetic": safe["why"],
            "cpu_flags": cpu_flags(),
            **probe,
            "why": "dynamic int8 quantises activations to uint8 as they arrive",
        }
    }
    return [(label, dynamic([])), (f"{label}, head in fp32", dynamic(_head_nodes(base)))], arithmetic


class OnnxExporter(Exporter):
    name = "onnx"
    suffix = ".onnx"
    options_schema = OnnxOptions

    def export(self, model: torch.nn.Module, inputs: Batch, io: OnnxIO, path: Path, options: Any) -> Path:
        """torch's exporter writes into a fresh folder beside ``path`` (past 2 GB it writes one file
        per tensor there), then the graph moves to ``path`` with at most one data file."""
        import shutil

        import onnx

        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.parent / f".{path.stem}.torch-export"
        shutil.rmtree(scratch, ignore_errors=True)  # adapt's own scratch folder, from a run that was killed
        scratch.mkdir()
        try:
            self._trace(model, inputs, io, scratch / path.name, options.opset if options else 17)
            onnx_files.consolidate(scratch / path.name, path, options.external_data if options else "auto")
            onnx.checker.check_model(str(path), full_check=True)  # by path: a model past 2 GB is checked too
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - export failures come in many types
            raise ExportError(
                f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                hint="run with --debug for the full error; a plugin's custom layer may need an ONNX-exportable form",
            ) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return path

    @staticmethod
    def _trace(model: torch.nn.Module, inputs: Batch, io: OnnxIO, path: Path, opset: int) -> None:
        import torch

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.eval(),
                tuple(inputs[name] for name in io.input_names),
                str(path),
                input_names=list(io.input_names),
                output_names=list(io.output_names),
                dynamic_axes={k: dict(v) for k, v in io.dynamic_axes.items()},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
                custom_opsets={"com.microsoft": 1},  # ONNX Runtime's fused operators, where an export form uses them
            )

    def load(self, path: Path, threads: int | None = None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        """An ONNX Runtime CPU session as a function from named numpy inputs to logits."""
        run = self.load_outputs(path, threads)
        return lambda feed: next(iter(run(feed).values()))

    def load_outputs(
        self, path: Path, threads: int | None = None
    ) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """Like :meth:`load`, but the function returns every output of the graph by name
        (object-detection: ``logits`` and the final ``boxes``, ``scores``, ...), in graph order."""
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        kinds = {i.name: i.type for i in session.get_inputs()}
        shapes = {i.name: i.shape for i in session.get_inputs()}

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            batch = len(next(iter(feed.values())))
            arrays = {
                n: np.asarray(feed[n], dtype=np.int64 if "int64" in kinds[n] else np.float32)
                if n in feed
                else _empty_cache(shapes[n], batch, n)
                for n in names
            }
            return dict(zip(outputs, session.run(None, arrays)))

        return run

    def companions(self, path: Path) -> list[Path]:
        """The external data file of a model past 2 GB (``model.onnx.data``), else none."""
        return onnx_files.data_files(path) if path.suffix == ".onnx" else []

    # -- optimise, quantise, mobile --------------------------------------------

    def derive(self, path: Path, ctx: DeriveContext) -> Derived:
        result = Derived(deployable=path)
        optimised = self._optimise(path, ctx, result)
        base = optimised or path
        result.deployable = base
        passed = []
        if ctx.quantize in ("int8", "all"):
            passed.append(self._quantise(base, path, ctx, result))
        if ctx.quantize in ("int4", "all"):
            passed.append(self._quantise_int4(path, ctx, result))
        kept = [p for p in passed if p is not None]
        if kept:  # of the quantised files within the budget, the smallest
            result.deployable = min(kept, key=onnx_files.total_bytes)
        if ctx.prefer == "speed" and kept:
            result.deployable = _fastest([base, *kept], ctx, result)
        for made in [path, *(f.path for f in result.forms if f.path.suffix == ".onnx")]:
            stamp(made, ctx.metadata)
        if ctx.mobile:
            self._mobile(result.deployable, ctx, result)
        return result

    def _optimise(self, path: Path, ctx: DeriveContext, result: Derived) -> Path | None:
        out = path.with_name(path.stem + ".optimized.onnx")
        try:
            if ctx.model_info.get("model_type"):
                from onnxruntime.transformers.optimizer import optimize_model

                info = ctx.model_info
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optimised = optimize_model(
                        str(path),
                        model_type=info["model_type"],
                        num_heads=info.get("num_heads", 0),
                        hidden_size=info.get("hidden_size", 0),
                        opt_level=0,
                    )
                fusions = {k: v for k, v in optimised.get_fused_operator_statistics().items() if v}
                onnx_files.remove(out)
                # its own save adds the com.microsoft opset its fused nodes need; the data file is <out>.data as ours
                optimised.save_model_to_file(
                    str(out), use_external_data_format=onnx_files.wants_external(optimised.model, _external(ctx))
                )
                result.notes.append(
                    "transformer fusions: " + (", ".join(f"{k} {v}" for k, v in sorted(fusions.items())) or "none")
                )
                result.info["fusions"] = fusions
            else:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
                options.optimized_model_filepath = str(out)
                if _external_like(ctx, path):
                    onnx_files.remove(out)
                    options.add_session_config_entry(
                        "session.optimized_model_external_initializers_file_name", onnx_files.data_name(out)
                    )
                    options.add_session_config_entry(
                        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
                    )
                options.log_severity_level = 3
                ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                result.notes.append("ONNX Runtime offline graph optimisation (extended level, CPU)")
        except Exception as exc:  # noqa: BLE001 - an optimiser failure only costs the optimised form
            result.notes.append(f"optimisation failed and was skipped: {type(exc).__name__}: {exc}")
            return None
        result.forms.append(Form("onnx_optimized", out, exact=True))
        return out

    def quantize_keeping(self, path: Path, out: Path, keep: Sequence[str], target: str) -> dict[str, Any] | None:
        """Exporter.quantize_keeping: dynamic int8 of the MatMuls whose weights are constants (a
        transformer's projections), 7-bit where ``target``'s int8 products saturate; a graph with
        none (a CNN: its convolutions need static int8 and calibration) is not offered."""
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(str(path), load_external_data=False).graph
        constants = {i.name for i in graph.initializer} - set(keep)
        kept = [n.name for n in graph.node if any(name in keep for name in n.input)]
        if not any(n.op_type == "MatMul" and n.name not in kept and set(n.input) & constants for n in graph.node):
            return None
        safe = int8_arithmetic.settings(target)
        seven = safe["reduce_range"]["uint8"]
        _quietly(
            quantize_dynamic,
            str(path),
            str(out),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=kept,
            reduce_range=seven,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return {
            "kind": "dynamic int8" + (" (7-bit weights)" if seven else ""),
            "arithmetic": safe["why"],
            "float_nodes": len(kept),
        }

    def _quantise(self, base: Path, plain: Path, ctx: DeriveContext, result: Derived) -> Path | None:
        """Try int8 and its remedies in turn; return the first file within the accuracy budget."""
        baseline = ctx.score(base)
        attempts, choice = self._attempts(base, plain, ctx, baseline)
        for key, value in choice.items():  # int8_activations, int8_format, int8_calibration
            result.info[f"int8_{key}"] = value
        passed = None
        for number, (label, make) in enumerate(attempts, 1):
            out = base.with_name(f"model.int8{'' if number == 1 else f'.try{number}'}.onnx")
            try:
                extra: dict[str, Any] = make(out) or {}
            except Exception as exc:  # noqa: BLE001 - record and try the next remedy
                result.attempts.append({"attempt": label, "error": f"{type(exc).__name__}: {exc}"})
                continue
            gate = _gate(ctx, out, base, baseline)
            ok = gate["passed"]
            result.attempts.append(
                {
                    "attempt": label,
                    "file": out.name,
                    **gate,
                    "latency_ms": ctx.latency(out),
                    "bytes": onnx_files.total_bytes(out),
                    **extra,
                }
            )
            if number == 1 or ok:
                result.forms.append(Form("onnx_int8" if number == 1 else f"onnx_int8_try{number}", out, exact=False))
            if ok:
                passed = out
                result.info["int8_remedy"] = "none needed (the first attempt)" if number == 1 else label
                fp32 = ctx.latency(base)["median"]
                if result.attempts[-1]["latency_ms"]["median"] > fp32:
                    smaller = onnx_files.total_bytes(base) / onnx_files.total_bytes(out)
                    result.notes.append(
                        f"{out.name} keeps the accuracy and is {smaller:.1f}x "
                        f"smaller, but slower than fp32 on this CPU ({result.attempts[-1]['latency_ms']['median']:.2f} "
                        f"vs {fp32:.2f} ms at batch 1); deploy {base.name} where speed matters more than size"
                    )
                break
        onnx_files.remove(base.with_name("model.preprocessed.onnx"))
        if passed is None:
            result.info["int8_remedy"] = None
            undecided = [a for a in result.attempts if a.get("verdict") == "undecided"]
            result.notes.append(
                f"no int8 attempt kept the validation score within its budget ({ctx.max_accuracy_drop:.4g}; "
                "export.max_accuracy_drop, or max_perplexity_increase for a lower-is-better metric): the int8 file is "
                "kept but not recommended"
                + (
                    f"; {len(undecided)} attempt(s) were undecided, not rejected: {undecided[0]['why']}"
                    if undecided
                    else ""
                )
            )
        return passed

    def _quantise_int4(self, plain: Path, ctx: DeriveContext, result: Derived) -> Path | None:
        """4-bit weight-only quantisation of the MatMul weights and the embedding tables
        (ONNX Runtime's MatMulNBits and GatherBlockQuantized, blocks of 32, int8 compute),
        scored against the fp32 file within the same budget. The quantised embedding needs
        opset 21, so the graph is converted to it first."""
        out = plain.with_name("model.int4.onnx")
        label = "int4 weight-only (MatMulNBits + GatherBlockQuantized, block 32)"
        try:
            weight_only(plain, out, 4, _external(ctx))
        except Exception as exc:  # noqa: BLE001 - record it; the other forms stand
            result.attempts.append({"attempt": label, "error": f"{type(exc).__name__}: {exc}"})
            return None
        gate = _gate(ctx, out, plain, ctx.score(plain))
        ok = gate["passed"]
        result.attempts.append(
            {
                "attempt": label,
                "file": out.name,
                **gate,
                "latency_ms": ctx.latency(out),
                "bytes": onnx_files.total_bytes(out),
            }
        )
        result.forms.append(Form("onnx_int4", out, exact=False))
        if not ok:
            result.notes.append(
                f"{out.name} loses more than its budget ({ctx.max_accuracy_drop:.4g}) on the validation split: kept "
                "but not recommended"
            )
        return out if ok else None

    def _attempts(
        self, base: Path, plain: Path, ctx: DeriveContext, baseline: float
    ) -> tuple[list[tuple[str, Callable[[Path], dict[str, Any] | None]]], dict[str, Any]]:
        """The int8 attempts in the order they are tried, and (static int8) how its
        activation type, format and calibrator were chosen. ``baseline``: the fp32
        file's validation score, which an equalised file is held to."""
        if ctx.model_info.get("model_type") or ctx.model_info.get("quantization") == "dynamic":
            if onnx_files.total_bytes(base) > DYNAMIC_INT8_MAX_BYTES:
                return _weight_only_int8_attempts(base, ctx)
            return _dynamic_attempts(base, ctx)
        n = ctx.options.calibration_examples if ctx.options else 100
        static = _StaticInt8(plain, ctx, baseline)
        choice = {
            "activations": _choose_activations(
                {kind: static.maker(n, activation=kind) for kind in int8_arithmetic.ACTIVATIONS}, plain, ctx
            )
        }
        static.activation = choice["activations"]["chosen"]
        choice["format"] = _choose_format(
            {"qdq": static.maker(n), "qoperator": static.maker(n, fmt="qoperator")}, plain, ctx
        )
        static.format = choice["format"]["chosen"]
        wanted = ctx.options.calibration_method if ctx.options else "auto"
        choice["calibration"] = (
            _choose_calibration({m: static.maker(n, method=m) for m in _StaticInt8.METHODS}, plain, ctx)
            if wanted == "auto"
            else {"chosen": wanted, "why": "export.options.onnx.calibration_method"}
        )
        static.method = choice["calibration"]["chosen"]
        weights = ", 7-bit weights" if static.seven_bit[static.activation] else ""
        attempts: list[tuple[str, Callable[[Path], dict[str, Any] | None]]] = [
            (
                f"static {'QDQ' if static.format == 'qdq' else 'QOperator'} per-channel ({static.activation} "
                f"activations, {static.method} ranges{weights}), {n} calibration inputs",
                static.maker(n),
            ),
            (f"more calibration data ({2 * n} inputs)", static.maker(2 * n)),
            (f"{2 * n} inputs, cross-layer equalisation and bias correction", static.equalised(2 * n)),
        ]
        if ctx.qat is not None:
            attempts.append((f"quantisation-aware fine-tuning (export.qat), {2 * n} inputs", static.after_qat(2 * n)))
        return [
            *attempts,
            (
                f"{2 * n} inputs, first conv, depthwise convs and head in fp32",
                static.maker(2 * n, keep_sensitive_in_fp32=True),
            ),
        ], choice

    def _mobile(self, path: Path, ctx: DeriveContext, result: Derived) -> None:
        folder = ctx.out_dir / "mobile"
        folder.mkdir(parents=True, exist_ok=True)
        source = onnx_files.copy(path, folder / "model.onnx")
        convert = subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxruntime.tools.convert_onnx_models_to_ort",
                str(source),
                "--output_dir",
                str(folder),
                "--optimization_style",
                "Fixed",
            ],
            capture_output=True,
            text=True,
        )
        onnx_files.remove(source)
        check = subprocess.run(
            [sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(path)],
            capture_output=True,
            text=True,
        )
        lines = [line.split(":", 1)[-1].strip() for line in (check.stdout + check.stderr).splitlines()]
        result.info["mobile_usability"] = [
            line
            for line in lines
            if line.startswith(("Model should", "Model is", "Model has", "Partition", "CoreML", "NNAPI"))
        ][:8]
        ort_files = sorted(folder.glob("*.ort"))
        if convert.returncode != 0 or not ort_files:
            result.notes.append(
                f"conversion to .ort failed: {(convert.stderr or convert.stdout).strip().splitlines()[-1:]}"
            )
            return
        result.forms.append(Form("ort_mobile", ort_files[0], exact=False, runnable=False))
        result.info["mobile_from"] = path.name
        result.info["mobile_operators"] = required_operators(folder)
        result.notes.append(
            f"mobile: {ort_files[0].name} from {path.name}, with the operator config for a reduced ONNX Runtime build"
        )


def required_operators(folder: Path) -> dict[str, list[str]]:
    """The operators a reduced ONNX Runtime build needs for the .ort file (the converter's
    ``*.required_operators.config``: ``domain;opset;Op,Op`` lines), as ``{"ai.onnx 17":
    [ops], "com.microsoft 1": [...]}``: for an int8 file, its QLinear/QDQ operators too."""
    found: dict[str, list[str]] = {}
    for config in sorted(folder.glob("*.required_operators.config")):
        for line in config.read_text(encoding="utf-8").splitlines():
            parts = line.strip().split(";")
            if len(parts) == 3 and not line.startswith("#"):
                found.setdefault(f"{parts[0]} {parts[1]}", []).extend(op for op in parts[2].split(",") if op)
    return {key: sorted(set(ops)) for key, ops in found.items()}


def _empty_cache(shape: list[Any], batch: int, name: str) -> np.ndarray:
    """A length-0 cache for a cached decoder's ``past_key_values.*`` input, which batches
    do not hold (adapt.onnx_predict.empty_cache); any other missing input is an error."""
    from adapt.onnx_predict import empty_cache

    if not name.startswith("past_key_values.") or len(shape) != 4:
        raise ExportError(
            f"the ONNX graph needs input {name!r}, which the batches do not hold",
            hint="the backbone's onnx_io names inputs its collator does not make",
        )
    return empty_cache(shape, batch)


def _external(ctx: DeriveContext) -> str:
    """``export.options.onnx.external_data`` (auto unless set)."""
    return ctx.options.external_data if ctx.options else "auto"


def _external_like(ctx: DeriveContext, source: Path) -> bool:
    """Whether a file made from ``source`` by a tool that cannot say its size before writing it
    (ONNX Runtime's quantisers and session optimiser) gets a data file: where ``source`` has
    one, or ``external_data: always``."""
    return _external(ctx) == "always" or bool(onnx_files.data_files(source))


def _gate(ctx: DeriveContext, candidate: Path, reference: Path, baseline: float) -> dict[str, Any]:
    """The accuracy gate of a quantised file against the file it was made from: paired
    over the validation examples with an interval where the task allows (ctx.judge,
    adapt.paired), else the two scores' difference against the budget. NaN fails."""
    judged = ctx.judge(candidate, reference) if ctx.judge is not None else None
    if judged is not None:
        return judged
    score = ctx.score(candidate)
    drop = baseline - score
    return {"val_score": score, "val_drop": drop, "passed": bool(math.isfinite(drop) and drop <= ctx.max_accuracy_drop)}


def _fastest(files: list[Path], ctx: DeriveContext, result: Derived) -> Path:
    """``export.prefer: speed``: the file that runs fastest at batch 1 here, fp32 included."""
    timings = {
        f: ctx.latency(f)["median"] for f in files
    }  # timed together, not taken from the attempts: times from other moments do not compare
    fastest = min(timings, key=lambda f: timings[f])
    result.info["prefer_speed"] = {f.name: t for f, t in timings.items()}
    if fastest == files[0]:
        result.notes.append(
            f"export.prefer: speed: {fastest.name} ({timings[fastest]:.2f} ms) is faster at batch 1 on this CPU than "
            "the quantised files that kept the accuracy, so it is deployed"
        )
    return fastest


def _choose_activations(makers: dict[str, Callable[[Path], None]], plain: Path, ctx: DeriveContext) -> dict[str, Any]:
    """S8S8 or U8S8 activations for static int8 (weights int8 per channel either way),
    each with the weight range that is exact on the export's target CPU
    (adapt.exporters.int8_arithmetic: 7-bit weights where the products saturate).
    Among those safe settings, where the export is for this machine's CPU family, both
    are made and timed at batch 1 and the faster is used; for another family (an ARM
    phone from an x86 build machine), S8S8, ONNX Runtime's usual QDQ choice there,
    unmeasured. ``export.options.onnx.int8_activations`` pins the type instead of timing.
    The report's ``export.onnx.int8_activations`` says which, why, and the probe's figures."""
    safe = int8_arithmetic.settings(ctx.target)
    target, machine = _families(ctx)
    arithmetic = {
        "target": ctx.target if ctx.target != "auto" else target,
        "arithmetic": safe["why"],
        "cpu_flags": cpu_flags(),
        **({"saturation_probe": safe["probe"]} if "probe" in safe else {}),
    }

    def chosen(kind: str, why: str, **extra: Any) -> dict[str, Any]:
        return {"chosen": kind, "reduce_range": safe["reduce_range"][kind], **extra, **arithmetic, "why": why}

    pinned = ctx.options.int8_activations if ctx.options else "auto"
    if pinned != "auto":
        return chosen(pinned, "export.options.onnx.int8_activations")
    if not safe["measurable"]:
        return chosen(
            "int8",
            f"the export is for {target}, this machine is {machine}: not measured; S8S8 is the usual choice there",
        )
    try:
        timings = _timed_probes(makers, plain, ctx, "activations")
    except RuntimeError as exc:
        return chosen("int8", f"{exc}; S8S8 without measuring")
    return chosen(
        min(timings, key=lambda k: timings[k]), f"the faster at batch 1 on this {machine} CPU", latency_ms=timings
    )


def _families(ctx: DeriveContext) -> tuple[str, str]:
    """The CPU family the export is for (``export.target``) and this machine's."""
    machine = int8_arithmetic.machine_family()
    return (machine if ctx.target == "auto" else ctx.target.split("-")[0]), machine


def _choose_format(makers: dict[str, Callable[[Path], None]], plain: Path, ctx: DeriveContext) -> dict[str, Any]:
    """QDQ (QuantizeLinear/DequantizeLinear around float operators, which ONNX Runtime
    fuses into int8 kernels) or QOperator (QLinearConv and the like in the file itself),
    timed at batch 1 where the activation type was (the export is for this machine's
    CPU family), QOperator only where clearly faster; otherwise QDQ, the format
    mobile execution providers take."""
    target, machine = _families(ctx)
    pinned = ctx.options.int8_format if ctx.options else "auto"
    if pinned != "auto":
        return {"chosen": pinned, "why": "export.options.onnx.int8_format"}
    if target != machine:
        return {
            "chosen": "qdq",
            "why": (
                f"the export is for {target}, this machine is {machine}: not measured; "
                "QDQ, the format NNAPI, XNNPACK and Core ML take"
            ),
        }
    try:
        timings = _timed_probes(makers, plain, ctx, "format")
    except RuntimeError as exc:
        return {"chosen": "qdq", "why": f"{exc}; QDQ without measuring"}
    if timings["qoperator"] < 0.9 * timings["qdq"]:
        return {"chosen": "qoperator", "latency_ms": timings, "why": "more than 10% faster at batch 1 on this CPU"}
    return {
        "chosen": "qdq",
        "latency_ms": timings,
        "why": (
            "QOperator is not more than 10% faster here (timings move that much between calls); "
            "QDQ is the format more execution providers take (NNAPI, XNNPACK, Core ML)"
        ),
    }


def _timed_probes(
    makers: dict[str, Callable[[Path], None]], plain: Path, ctx: DeriveContext, what: str
) -> dict[str, float]:
    """Each maker's file timed at batch 1, then removed; RuntimeError naming the one that failed."""
    timings = {}
    for name, make in makers.items():
        out = plain.with_name(f"model.{name}-{what}.onnx")  # a probe in adapt's own staging folder
        try:
            make(out)
            timings[name] = ctx.latency(out)["median"]
        except Exception as exc:  # noqa: BLE001 - the attempts proper record their own failures
            raise RuntimeError(f"measuring the {name} {what} failed ({type(exc).__name__}: {exc})") from exc
        finally:
            onnx_files.remove(out)
    return timings


def _choose_calibration(makers: dict[str, Callable[[Path], None]], plain: Path, ctx: DeriveContext) -> dict[str, Any]:
    """``calibration_method: auto``: which way of setting the activation ranges keeps the
    most accuracy for this model, measured: one int8 file per calibrator (MinMax,
    percentile, entropy), each scored on the validation split; every attempt then uses
    the best (ties: the earlier, cheaper one). The report's
    ``export.onnx.int8_calibration`` says which won, with every calibrator's score."""
    scores: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name, make in makers.items():
        out = plain.with_name(f"model.{name}-ranges.onnx")  # a probe in adapt's own staging folder
        try:
            make(out)
            scores[name] = ctx.score(out)
        except Exception as exc:  # noqa: BLE001 - a calibrator that fails is only left out
            errors[name] = f"{type(exc).__name__}: {exc}"
        finally:
            onnx_files.remove(out)
    measured = {k: v for k, v in scores.items() if math.isfinite(v)}
    if not measured:
        return {
            "chosen": "minmax",
            "val_score": scores,
            "errors": errors,
            "why": "no calibrator gave a finite score; MinMax without measuring",
        }
    best = max(measured, key=lambda k: (measured[k], -list(makers).index(k)))
    return {
        "chosen": best,
        "val_score": scores,
        **({"errors": errors} if errors else {}),
        "why": "the best validation score of the calibrators",
    }


class _StaticInt8:
    """Static QDQ int8 (per-channel int8 weights; activations and calibrator as chosen)
    of the plain fp32 file, and the remedies that change its weights before quantising."""

    METHODS = ("minmax", "percentile", "entropy")

    def __init__(self, plain: Path, ctx: DeriveContext, baseline: float) -> None:
        self.plain, self.ctx, self.baseline = plain, ctx, baseline
        self.activation, self.method, self.format = "int8", "minmax", "qdq"
        #: per activation type: 7-bit weights where the target CPU's int8 products saturate
        #: (adapt.exporters.int8_arithmetic)
        self.seven_bit: dict[str, bool] = int8_arithmetic.settings(ctx.target)["reduce_range"]

    def quantise(
        self,
        source: Path,
        out: Path,
        examples: int,
        keep_sensitive_in_fp32: bool = False,
        activation: str | None = None,
        method: str | None = None,
        fmt: str | None = None,
    ) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = source.with_name(
            "model.preprocessed.onnx" if source == self.plain else f"{source.stem}.preprocessed.onnx"
        )
        external = _external_like(self.ctx, source)
        if not prepared.exists() or source != self.plain:
            quant_pre_process(
                str(source),
                str(prepared),
                skip_symbolic_shape=True,
                save_as_external_data=external,
                all_tensors_to_one_file=True,
                external_data_location=onnx_files.data_name(prepared),
            )
        exclude = (
            shape_nodes(prepared)
            + tail_nodes(prepared)
            + (_sensitive_nodes(prepared) if keep_sensitive_in_fp32 else [])
        )
        activation = activation or self.activation
        kind = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activation]

        ranges = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[method or self.method]
        _quietly(
            quantize_static,
            str(prepared),
            str(out),
            _Reader(self.ctx.calibration[:examples]),
            quant_format={"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[fmt or self.format],
            per_channel=True,
            activation_type=kind,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=ranges,
            reduce_range=self.seven_bit[activation],
            use_external_data_format=external,
        )
        if source != self.plain:
            onnx_files.remove(prepared)

    def maker(
        self,
        examples: int,
        keep_sensitive_in_fp32: bool = False,
        activation: str | None = None,
        method: str | None = None,
        fmt: str | None = None,
    ) -> Callable[[Path], None]:
        return lambda out: self.quantise(self.plain, out, examples, keep_sensitive_in_fp32, activation, method, fmt)

    def equalised(self, examples: int) -> Callable[[Path], dict[str, Any]]:
        """Cross-layer equalisation, then int8, then bias correction measured against that
        int8 file and int8 again (adapt.exporters.equalise). The equalised fp32 file's
        validation score is reported: where a ReLU6 became a ReLU it is not the same
        function, and where that costs more than the accuracy budget only the pairs
        joined by a ReLU or by nothing are equalised (the fp32 function unchanged)."""
        from adapt.exporters.equalise import correct_bias, equalise

        def make(out: Path) -> dict[str, Any]:
            equal, corrected = (out.with_name(f"{out.stem}.{part}.onnx") for part in ("equalised", "corrected"))
            try:
                info = equalise(self.plain, equal)
                info["fp32_val_score"] = self.ctx.score(equal)
                if info["relu6_replaced"] and self.baseline - info["fp32_val_score"] > self.ctx.max_accuracy_drop:
                    # ReLU6 -> ReLU changed what the network computes: only the exact pairs
                    info = {
                        **equalise(self.plain, equal, relu6_to_relu=False),
                        "relu6_to_relu_val_score": info["fp32_val_score"],
                    }
                    info["fp32_val_score"] = self.ctx.score(equal)
                self.quantise(equal, out, examples)
                info["biases_corrected"] = correct_bias(equal, out, self.ctx.calibration[:examples], corrected)
                self.quantise(corrected, out, examples)
            finally:  # intermediate files of this attempt, in adapt's own staging folder
                onnx_files.remove(equal)
                onnx_files.remove(corrected)
            return {"equalisation": info}

        return make

    def after_qat(self, examples: int) -> Callable[[Path], dict[str, Any]]:
        """Quantisation-aware fine-tuning (the pipeline's ``ctx.qat``) writes an fp32 file
        whose weights have learnt int8's rounding; that file is quantised like the others."""

        fine_tune = self.ctx.qat
        assert fine_tune is not None, "after_qat is only offered when ctx.qat is set"

        def make(out: Path) -> dict[str, Any]:
            tuned = out.with_name(f"{out.stem}.qat-fp32.onnx")
            try:
                info = fine_tune(tuned)
                info["fp32_val_score"] = self.ctx.score(tuned)
                self.quantise(tuned, out, examples)
            finally:
                onnx_files.remove(tuned)
            return {"qat": info}

        return make


def stamp(path: Path, metadata: dict[str, str]) -> None:
    """Write ``metadata`` (labels, preprocessing) into the file's ``metadata_props``, so
    an app on a device needs only the .onnx file (``session.get_modelmeta().custom_metadata_map``)."""
    import onnx

    if not metadata:
        return
    model = onnx.load(str(path), load_external_data=False)  # the weights stay where they are
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx_files.save_graph(model, path)


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an ONNX Runtime quantisation call without its advice on the root logger or
    its progress prints (the histogram calibrators print to stdout)."""
    import contextlib
    import io
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*args, **kwargs)
    finally:
        root.setLevel(level)


class _Reader:
    """Calibration inputs for static quantisation."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self._items = iter(batches)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._items, None)


def _head_nodes(path: Path) -> list[str]:
    """The last MatMul/Gemm of the graph: the classification head."""
    import onnx

    nodes = [
        n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type in ("MatMul", "Gemm")
    ]
    return nodes[-1:]


def shape_nodes(path: Path) -> list[str]:
    """Nodes that compute from tensor shapes, not on activations: the arithmetic of dynamic
    "same" padding (timm's tf_* models: Shape -> Gather -> Div, Ceil, Sub, Max (some in
    float) -> Concat -> the pads of Pad). ONNX Runtime's static quantiser treats the float
    steps and the Concat as activations and quantises them, which corrupts every strided
    convolution's padding: that collapsed EfficientNet-Lite0 from 98% to 21-28%. A node
    is shape-derived when its inputs are shape-derived or constant; such nodes stay exact."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constant = {t.name for t in graph.initializer}
    derived: set[str] = set()
    names = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant":
            constant.update(node.output)
        elif node.op_type in ("Shape", "Size") or (
            inputs and all(i in derived or i in constant for i in inputs) and any(i in derived for i in inputs)
        ):
            derived.update(node.output)
            names.append(node.name)
    return names


#: Operators that carry weights: int8 pays off in them.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def tail_nodes(path: Path) -> list[str]:
    """Nodes after the last weighted layer: no Conv, MatMul or Gemm depends on them (an
    object detector's box decoding, scores and NMS). They are cheap, so int8 gains nothing
    there, and one activation scale across their mixed columns (pixels, logits) costs
    accuracy: a detector's boxes moved by 8% of the image and lost 8 points of mAP@.5.
    They stay in fp32; the weighted layers' own outputs are still quantised."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    feeds: dict[str, bool] = {}  # tensor name -> a weighted node depends on it
    tail = []
    for node in reversed(graph.node):
        weighted = node.op_type in WEIGHTED_OPS or any(feeds.get(o, False) for o in node.output)
        if not weighted:
            tail.append(node.name)
        for name in node.input:
            feeds[name] = feeds.get(name, False) or weighted
    return tail[::-1]


def _sensitive_nodes(path: Path) -> list[str]:
    """Nodes that int8 MobileNets are known to be sensitive in: the first conv, depthwise convs, the head."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    names = [convs[0].name] if convs else []
    for node in convs:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1:
            names.append(node.name)
    names += [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")][-1:]
    return names


@hookimpl
def adapt_register_exporters(register: Any) -> None:
    register(OnnxExporter())
