"""``adapt bench RUN_DIR``: time the run's model on the machine it runs on, now.

The run's merged model in PyTorch (eager) and every exported ONNX file take turns
(adapt.latency) on the same inputs with the same thread count, so the ratios compare
the files and not two moments of the machine. Inputs are the backbone's example inputs
at ``--batch-size``, texts stretched to ``--seq-len`` tokens (default: the run's
``max_length``, the longest it serves) and images resized to ``--image-size`` (default:
the run's). The result goes into report.json (``bench``) only with ``--save``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from adapt.errors import AdaptError
from adapt.host import Host
from adapt.latency import machine, summary, take_turns

#: Defaults of the command's options.
ROUNDS, RUNS = 5, 10


def bench_run(
    run_dir: Path,
    host: Host,
    *,
    threads: int | None = None,
    rounds: int = ROUNDS,
    runs: int = RUNS,
    batch_size: int = 1,
    seq_len: int | None = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Median ms of eager PyTorch and of each exported file, interleaved, with each file's
    ratio to eager (median and range of the per-round ratios) and the machine."""
    import torch

    from adapt.pipeline import restore
    from adapt.report import require_report

    session = restore(run_dir, host, need_data=False)
    if session.plan.task.postprocess.get("kind") == "generation":
        raise AdaptError(
            "adapt bench times one forward pass; a text generator's speed is new tokens per second",
            hint=f"see latency_ms.*.tokens_per_s in {run_dir / 'report.json'}, or run bench/generation.py",
        )
    files = _exported_files(run_dir, require_report(run_dir))
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _measure(session, files, rounds, runs, batch_size, seq_len, image_size)
    finally:
        torch.set_num_threads(before)


def _measure(
    session: Any,
    files: dict[str, Path],
    rounds: int,
    runs: int,
    batch_size: int,
    seq_len: int | None,
    image_size: int | None,
) -> dict[str, Any]:
    import torch

    threads = torch.get_num_threads()
    _check_request(session, files, batch_size, seq_len, image_size)
    inputs, shape = _inputs(session, batch_size, seq_len, image_size)
    model = session.plan.method.merge(session.built).model.eval()
    loader = next((e for e in session.plan.exporters if e.suffix == ".onnx"), None)
    if loader is None:
        raise AdaptError(
            f"the run's exporters ({', '.join(e.name for e in session.plan.exporters)}) write no .onnx file to time",
            hint="export with the onnx exporter (export.formats: [onnx])",
        )

    def eager() -> object:
        with torch.no_grad():
            return model(**inputs)

    contenders = {"pytorch": eager, **{name: _onnx_call(loader, path, inputs, threads) for name, path in files.items()}}
    _check_contenders(contenders, shape)
    per_round = take_turns(contenders, rounds, runs)
    return {**shape, "batch_size": batch_size, "runs": runs, **summary(per_round, "pytorch"), "machine": machine()}


def _exported_files(run_dir: Path, report: dict[str, Any]) -> dict[str, Path]:
    from adapt.report import report_forms

    files = {
        name: path for name, path in report_forms(run_dir, report).items() if path.suffix == ".onnx" and path.is_file()
    }
    if not files:
        raise AdaptError(
            f"{run_dir} has no exported .onnx file to time", hint=f"export it first: adapt export {run_dir}"
        )
    return files


def _inputs(
    session: Any, batch_size: int, seq_len: int | None, image_size: int | None
) -> tuple[dict[str, Any], dict[str, int]]:
    """The backbone's example inputs at ``batch_size``: sequence axes stretched (by
    repeating the tokens) to ``seq_len``, 4-D images resized to ``image_size``."""
    import torch

    backbone, built = session.plan.backbone, session.built
    inputs = backbone.example_inputs(built, batch_size)
    axes = backbone.onnx_io(built).dynamic_axes
    images = [n for n, v in inputs.items() if v.dim() == 4 and v.is_floating_point()]
    if images:
        side = image_size or int(inputs[images[0]].shape[-1])
        generator = torch.Generator().manual_seed(0)
        return {
            n: (torch.rand(v.shape[0], v.shape[1], side, side, generator=generator) if n in images else v)
            for n, v in inputs.items()
        }, {"image_size": side}
    sequences = [n for n, v in inputs.items() if 1 in axes.get(n, {}) and v.dim() == 2]
    if not sequences:  # neither images nor token sequences (item-table's ids): the inputs as they are
        return inputs, {}
    tokens = (
        seq_len
        or session.plan.backbone.sequence_length(session.built, session.plan.backbone_options)
        or int(inputs[sequences[0]].shape[1])
    )
    stretched = {}
    for name, value in inputs.items():
        if name in sequences:
            value = value.repeat(1, math.ceil(tokens / value.shape[1]))[:, :tokens]
        stretched[name] = value
    return stretched, {"seq_len": int(tokens)}


def _check_contenders(contenders: dict[str, Any], shape: dict[str, int]) -> None:
    """One call of each before timing: a file that cannot take these inputs (a graph
    with a fixed image size) is one message naming it, not a traceback mid-measurement."""
    for name, call in contenders.items():
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime and torch raise their own types
            first = " ".join(str(exc).split())[:300] or type(exc).__name__
            given = ", ".join(f"{k} {v}" for k, v in shape.items()) or "the backbone's example inputs"
            raise AdaptError(
                f"{name} cannot run on the bench inputs ({given}): {first}",
                hint="leave out --image-size / --seq-len to use the run's own size (some graphs fix it)",
            ) from None


#: A request's inputs times this is taken as the least memory the model's activations need
#: (a rough lower bound for CNNs and transformers; it only stops requests that cannot fit).
ACTIVATION_FACTOR = 16


def _check_request(
    session: Any, files: dict[str, Path], batch_size: int, seq_len: int | None, image_size: int | None
) -> None:
    """Before anything is allocated: the requested size fits every file's fixed input
    sizes, and the inputs (times :data:`ACTIVATION_FACTOR`) fit the memory available."""
    from adapt.latency import available_memory

    one = session.plan.backbone.example_inputs(session.built, 1)
    for name, path in files.items():
        for graph_input, fixed in _fixed_dims(path).items():
            value = one.get(graph_input)
            asked = _requested_axes(value, seq_len, image_size) if value is not None else {}
            for axis, size in asked.items():
                if fixed.get(axis, size) != size:
                    raise AdaptError(
                        f"{name} ({path.name}) fixes input {graph_input!r} at {fixed[axis]} along axis {axis}; the "
                        f"bench asked for {size}",
                        hint="leave out --image-size / --seq-len to use the run's own size",
                    )
    need = batch_size * ACTIVATION_FACTOR * sum(_input_bytes(v, seq_len, image_size) for v in one.values())
    have = available_memory()
    if have is not None and need > have:
        asked_for = (
            f"batch {batch_size}"
            + (f", {image_size} px" if image_size else "")
            + (f", {seq_len} tokens" if seq_len else "")
        )
        raise AdaptError(
            f"the bench inputs ({asked_for}) need about {need / 2**30:.1f} GiB with the model's activations; "
            f"{have / 2**30:.1f} GiB is available",
            hint="ask for a smaller --batch-size, --image-size or --seq-len",
        )


def _requested_axes(value: Any, seq_len: int | None, image_size: int | None) -> dict[int, int]:
    """The axes of one example input that the request sets: an image's height and width, a sequence's length."""
    if value.dim() == 4 and image_size:
        return {2: image_size, 3: image_size}
    if value.dim() == 2 and seq_len:
        return {1: seq_len}
    return {}


def _input_bytes(value: Any, seq_len: int | None, image_size: int | None) -> float:
    """Bytes of one example input at the requested size."""
    scale = {axis: size / value.shape[axis] for axis, size in _requested_axes(value, seq_len, image_size).items()}
    return value.numel() * value.element_size() * math.prod(scale.values())


def _fixed_dims(path: Path) -> dict[str, dict[int, int]]:
    """Each graph input's axes that the file fixes to a size (read from the file's graph;
    weights in external data files are not loaded)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file raises protobuf's own errors
        raise AdaptError(
            f"{path} cannot be read as an ONNX model (truncated, damaged or another format): {type(exc).__name__}",
            hint=f"export the run again: adapt export {path.parent.parent}",
        ) from None
    if not model.graph.input:
        raise AdaptError(
            f"{path} holds no graph (an empty or damaged ONNX file)",
            hint=f"export the run again: adapt export {path.parent.parent}",
        )
    return {
        i.name: {axis: d.dim_value for axis, d in enumerate(i.type.tensor_type.shape.dim) if d.dim_value > 0}
        for i in model.graph.input
    }


def _onnx_call(loader: Any, path: Path, inputs: dict[str, Any], threads: int) -> Any:
    try:
        run = loader.load(path, threads)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for a bad file
        first = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise AdaptError(
            f"{path} cannot be loaded by ONNX Runtime: {first}",
            hint=f"export the run again: adapt export {path.parent.parent}",
        ) from None
    feed = {k: v.numpy() for k, v in inputs.items()}
    return lambda: run(feed)


def bench_table(result: dict[str, Any]) -> str:
    """Markdown: each contender's median ms, spread of its rounds, and ratio to eager with its range."""
    ratios = result.get("to_pytorch", {})
    rows = ["| form | median ms | rounds' spread | vs PyTorch eager (range) |", "|---|---|---|---|"]
    for name, ms in result["ms"].items():
        entry = ratios.get(name)
        versus = (
            "1.00x"
            if name == "pytorch"
            else (f"{entry['ratio']:.3f}x ({entry['range'][0]:.3f}-{entry['range'][1]:.3f})" if entry else "-")
        )
        rows.append(f"| {name} | {ms:.2f} | {result['spread'][name]:.2f}x | {versus} |")
    return "\n".join(rows)
