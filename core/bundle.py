"""``adapt bundle RUN_DIR... --out DIR``: several runs on one checkpoint as one base ONNX
graph and one ONNX Runtime adapter per run, switched at run time.

The graph holds the checkpoint's weights once; every layer some run adapted gets a
low-rank branch whose factors are graph inputs, and each task kind's head takes its
weights as inputs (adapt.bundle_model, adapt.bundle_graph). A run's ``.onnx_adapter``
holds its factors and its head; its labels and pre- and post-processing sit in
``tasks/<name>/preprocess.json``, and ``bundle.json`` names them all. Before the bundle
is swapped into ``--out``, every run is proven on its own test split: the bundle with its
adapter active against the run's merged model (the export's parity tolerance, the same
labels) and the same test metric (adapt.bundle_checks).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from adapt.errors import AdaptError, ConfigError, ExportError, RunDirError
from adapt.interfaces import LowRank

#: What marks a folder as a bundle adapt wrote (adapt replaces only such a folder).
BUNDLE_MARKER = ".adapt-bundle.json"
MANIFEST = "bundle.json"
MODEL_FILE = "model.onnx"
ADAPTER_DIR = "adapters"
TASKS_DIR = "tasks"
REJECTED_SUFFIX = ".rejected"
#: The post-processing kinds whose model is one graph from inputs to logits, which a bundle carries.
BUNDLED_POSTPROCESS = ("softmax-top-k", "sigmoid-threshold", "token-tags")


class BundleError(AdaptError):
    """Runs that cannot share one bundle, or a bundle that fails its checks."""


@dataclass
class BundledRun:
    """One run as the bundle needs it: its restored session, its updates and its head."""

    name: str
    path: Path
    session: Any
    updates: dict[str, LowRank]
    head: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.session.config.task)


def bundle_command(run_dirs: Sequence[Path], out: Path, host: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """Build, verify and write the bundle of ``run_dirs`` into ``out``; return its report."""
    from adapt.bundle_checks import verify_bundle
    from adapt.rundir import staged_folder, swap_in

    check_out(out, run_dirs)
    runs = [load_run(path, host) for path in run_dirs]
    check_names(runs)
    check_same_base(runs)
    base = " ".join(str(k) for k in _base_key(runs[0]) if k)
    say(f"bundle: {len(runs)} runs on {base}: {', '.join(r.name for r in runs)}")
    with staged_folder(out) as staging:
        manifest = write_bundle(runs, staging, say)
        try:
            report = verify_bundle(runs, staging, manifest, say)
        except BundleError as exc:
            exc.hint = keep_rejected(staging, out) + (f"; {exc.hint}" if exc.hint else "")
            raise
        from adapt.bundle_checks import write_bundle_report
        from adapt.rundir import atomic_write_json

        atomic_write_json(staging / MANIFEST, {**manifest, "model": report["deployable"]})  # what predict.py runs
        write_bundle_report(staging, report)
        swap_in(staging, out)
    return report


def keep_rejected(staging: Path, out: Path) -> str:
    """Move a bundle that failed its check to ``DIR.rejected`` (replacing only a rejected bundle
    adapt wrote there, never a link or a folder of the user's); say where it is."""
    from adapt.rundir import remove

    rejected = out.with_name(out.name + REJECTED_SUFFIX)
    ours = rejected.is_dir() and not rejected.is_symlink() and (rejected / BUNDLE_MARKER).is_file()
    if rejected.exists() or rejected.is_symlink():
        if not ours:
            return f"{rejected} exists and is not adapt's, so the failed bundle was not kept; {out} is untouched"
        remove(rejected)
    staging.rename(rejected)
    return f"the bundle is kept in {rejected} for inspection; {out} is untouched"


def check_out(out: Path, run_dirs: Sequence[Path]) -> None:
    """``out`` must be nothing, an empty folder or a bundle adapt wrote, and no run's folder."""
    if out.is_symlink():
        raise RunDirError(f"{out} is a symbolic link; adapt does not write through links", hint="give another --out")
    if out.exists() and not (out.is_dir() and ((out / BUNDLE_MARKER).is_file() or not any(out.iterdir()))):
        raise RunDirError(
            f"{out} exists and is not a bundle made by adapt (no {BUNDLE_MARKER}); adapt leaves it alone",
            hint="give --out a new folder",
        )
    resolved = out.resolve()
    for run in run_dirs:
        if resolved == run.resolve() or run.resolve() in resolved.parents:
            raise RunDirError(f"--out {out} lies inside the run {run}", hint="write the bundle beside the runs")


def load_run(path: Path, host: Any) -> BundledRun:
    """A run restored with its data, refused with the reason where its model cannot be bundled."""
    from adapt.onnx_predict import postprocess_of
    from adapt.pipeline import restore

    session = restore(path, host)
    plan = session.plan
    post = postprocess_of({"postprocess": dict(plan.task.postprocess)})["kind"]
    if post not in BUNDLED_POSTPROCESS or plan.task.graph_outputs(session.built.model) is not None:
        raise BundleError(
            f"{path}: task {session.config.task!r} ({post} after the graph) is not one a bundle carries",
            hint=f"bundle runs whose task's post-processing is one of {', '.join(BUNDLED_POSTPROCESS)}",
        )
    try:
        updates = plan.method.low_rank_updates(session.built)
    except ConfigError as exc:
        raise BundleError(f"{path}: {exc.message}", hint=exc.hint) from None
    if updates is None:
        raise BundleError(
            f"{path}: method {plan.method.name!r} does not give low-rank updates (Method.low_rank_updates), so its "
            "adaptation cannot be switched at run time",
            hint="bundle runs trained with method lora; deploy the others as their own merged export",
        )
    adapted = tuple(f"{name}." for name in updates)
    head = {
        name: param.detach().float().clone()
        for name, param in session.built.model.named_parameters()
        if param.requires_grad and not name.startswith(adapted)
    }
    return BundledRun(path.name, path, session, updates, head)


def check_names(runs: Sequence[BundledRun]) -> None:
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BundleError(
            f"two runs share the folder name {twice[0]!r}, which names their task in the bundle",
            hint="give each run a distinct name (--set name=...)",
        )


def check_same_base(runs: Sequence[BundledRun]) -> None:
    """Every run on the same backbone, architecture and checkpoint, and none whose frozen
    weights moved away from it (compared with the first run's, tensor by tensor)."""
    first = runs[0]
    key = _base_key(first)
    for run in runs[1:]:
        if _base_key(run) != key:
            raise BundleError(
                f"{run.path} is not on the base of {first.path}: backbone {_base_key(run)} against {key}",
                hint="a bundle holds runs fine-tuned from one checkpoint of one backbone",
            )
    reference = _frozen_state(first)
    for run in runs[1:]:
        for name, tensor in _frozen_state(run).items():
            if name in reference and not _equal(reference[name], tensor):
                raise BundleError(
                    f"{run.path}'s frozen weight {name} differs from {first.path}'s: the runs did not start from the "
                    "same weights",
                    hint="a bundle holds runs fine-tuned from one checkpoint; check backbone.checkpoint of each",
                )


def _base_key(run: BundledRun) -> tuple[str, str | None, str | None]:
    backbone = run.session.config.backbone
    return (backbone.name, run.session.built.checkpoint or backbone.checkpoint, backbone.arch)


def _frozen_state(run: BundledRun) -> dict[str, Any]:
    """The run's weights that the bundle takes from the checkpoint (outside the head), by the
    checkpoint's own names (a wrapped layer's ``base_layer.`` dropped). A low-rank layer's own
    weight is left out: a principal start (pissa) keeps a residual there."""
    adapted = tuple(f"{name}." for name in run.updates)
    state = {}
    for name, tensor in run.session.built.model.state_dict().items():
        if name in run.head or name.startswith(adapted) or not tensor.is_floating_point():
            continue
        state[name] = tensor
    return state


def _equal(a: Any, b: Any) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def write_bundle(runs: Sequence[BundledRun], folder: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The graph, the adapters, each task's preprocessing, predict.py and the manifest into ``folder``."""
    from adapt import onnx_predict
    from adapt.bundle_graph import merge_graphs, write_adapter
    from adapt.rundir import atomic_write_json

    kinds: dict[str, list[BundledRun]] = {}
    for run in runs:
        kinds.setdefault(run.kind, []).append(run)
    targets = sorted({name for run in runs for name in run.updates})
    graphs, models = {}, {}
    for kind, members in kinds.items():
        models[kind], graphs[kind] = kind_graph(members, targets, folder)
        say(f"bundle: {kind} graph traced ({len(models[kind].branches)} low-rank branches, heads as inputs)")
    outputs = {kind: f"{kind}:logits" for kind in kinds}
    merged = merge_graphs(graphs, outputs)
    save_graph(merged, folder / MODEL_FILE)
    (folder / ADAPTER_DIR).mkdir()
    tasks = {}
    for run in runs:
        values = models[run.kind].feed(run.updates, run.head)
        values = {
            (name if name in models[run.kind].branch_inputs else f"{run.kind}:{name}"): v for name, v in values.items()
        }
        adapter = f"{ADAPTER_DIR}/{run.name}.onnx_adapter"
        write_adapter(folder / adapter, values)
        tasks[run.name] = {
            "task": run.kind,
            "adapter": adapter,
            "output": outputs[run.kind],
            "preprocess": write_preprocessing(run, folder / TASKS_DIR / run.name),
            "run": str(run.path.resolve()),
        }
    shutil.copyfile(onnx_predict.__file__, folder / "predict.py")
    manifest = {"model": MODEL_FILE, "tasks": tasks, "inputs": _model_inputs(runs[0])}
    manifest["web"] = write_web_page(runs, folder, manifest)
    atomic_write_json(folder / MANIFEST, manifest)
    atomic_write_json(folder / BUNDLE_MARKER, {"written_by": "adapt bundle"})
    return manifest


def write_web_page(runs: Sequence[BundledRun], folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """web/ for the bundle: every task's recorded test examples, each run with its adapter
    active (adapt.web_export); the report's ``web`` entry."""
    from adapt import web_export
    from adapt.onnx_predict import AdapterSession, open_session, read_spec

    web, base = folder / web_export.WEB_DIR, open_session(folder / MODEL_FILE)
    tasks, skipped = {}, []
    for run in runs:
        entry = manifest["tasks"][run.name]
        spec_path = folder / entry["preprocess"]
        spec = read_spec(spec_path)
        session = AdapterSession(base, folder / entry["adapter"], entry["output"], manifest["inputs"])
        images = spec["kind"] == "image"
        task, test = run.session.plan.task, run.session.splits.test
        sources = web_export.example_inputs(task, test, web, images, f"examples/{run.name}")
        page = web_export.page_task(session, spec, spec_path.parent, web, sources, entry["output"])
        if page is None:
            skipped.append(run.name)
            continue
        tasks[run.name] = {**page, "adapter": f"../{entry['adapter']}"}
    found = web_export.write_web(folder, {"model": f"../{MODEL_FILE}", "tasks": tasks}) if tasks else {}
    if skipped:
        found["note"] = f"the page does not prepare the inputs of {', '.join(skipped)}; use predict.py for them"
    return found


def _model_inputs(run: BundledRun) -> list[str]:
    plan = run.session.plan
    return list(plan.backbone.onnx_io(run.session.built).input_names)


def kind_graph(members: Sequence[BundledRun], targets: Sequence[str], folder: Path) -> tuple[Any, Any]:
    """One task kind's model (checkpoint weights, branches on ``targets``, heads as inputs),
    exported by the runs' ONNX exporter and given its inputs (adapt.bundle_graph.with_inputs)."""
    import onnx
    import torch

    from adapt.bundle_graph import with_inputs
    from adapt.bundle_model import BundleModel
    from adapt.interfaces import OnnxIO
    from adapt.pipeline import build_model

    from adapt.engine import seed_everything

    first = members[0]
    plan = first.session.plan
    seed_everything(plan.config.train.seed)  # a backbone without a checkpoint starts from the runs' seeded weights
    built = build_model(plan, first.session.built.num_labels)
    fresh = built.model.state_dict()
    for name, tensor in _frozen_state(first).items():
        if name in fresh and not _equal(fresh[name], tensor):
            raise BundleError(
                f"{first.path}'s frozen weight {name} differs from the checkpoint's as the backbone builds it now",
                hint="the checkpoint changed since the run was trained; train the run again on it",
            )
    names = {n for n, _ in built.model.named_modules()}
    head = sorted({name for run in members for name in run.head})
    model = BundleModel(built.model, [t for t in targets if t in names], head)
    inputs = plan.backbone.example_inputs(built, 2)
    io = plan.backbone.onnx_io(built)
    with torch.no_grad():
        rank = model.model(**{n: inputs[n] for n in io.input_names if n in inputs}).dim()
    logits = io.output_names[0]
    axes = {**io.dynamic_axes, logits: {**io.dynamic_axes.get(logits, {}), rank - 1: "labels"}}
    io = OnnxIO(io.input_names, io.output_names[:1], axes)
    exporter = next((e for e in plan.exporters if e.suffix == ".onnx"), None)
    if exporter is None:
        raise BundleError(f"{first.path} exports no ONNX file (export.formats)", hint="bundle runs exported to onnx")
    scratch = folder / f".{first.kind}.trace.onnx"
    exporter.export(plan.backbone.export_form(model.model, inputs, io), inputs, io, scratch, None)
    graph = onnx.load(str(scratch))
    for traced in (scratch, *exporter.companions(scratch)):  # adapt's own trace in the staged folder
        traced.unlink(missing_ok=True)
    graph = with_inputs(graph, [i for i in model.inputs() if i.name in model.branch_inputs])
    graph = with_inputs(graph, [i for i in model.inputs() if i.name not in model.branch_inputs], f"{first.kind}:")
    return model, graph


def save_graph(model: Any, path: Path) -> None:
    import onnx

    if model.ByteSize() > (2 << 30) - (64 << 20):
        raise ExportError(
            "the bundle's graph passes ONNX's 2 GB limit for one file",
            hint="bundles of models this large are not supported yet; deploy each run's own export",
        )
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def write_preprocessing(run: BundledRun, folder: Path) -> str:
    """The run's preprocess.json (and its tokenizer) in ``folder``, as its export writes them."""
    from adapt.export_stage import PREPROCESS_FILE
    from adapt.rundir import atomic_write_json

    session, plan = run.session, run.session.plan
    folder.mkdir(parents=True)
    spec = plan.backbone.save_preprocessing(session.built, plan.backbone_options, folder)
    if spec is None:
        raise BundleError(
            f"{run.path}: backbone {plan.backbone.name!r} cannot describe its preprocessing (save_preprocessing), so a "
            "device could not prepare the bundle's inputs",
            hint="bundle runs of a backbone with save_preprocessing",
        )
    atomic_write_json(
        folder / PREPROCESS_FILE,
        {**spec, "labels": session.label_names, "task": run.kind, "postprocess": dict(plan.task.postprocess)},
    )
    return (folder / PREPROCESS_FILE).relative_to(folder.parent.parent).as_posix()


def read_manifest(folder: Path) -> dict[str, Any]:
    """A bundle's bundle.json, or a clear error."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{folder} is not a bundle (no {MANIFEST})", hint="make one with adapt bundle") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is damaged: {exc}", hint="make the bundle again with adapt bundle") from None
    return manifest
