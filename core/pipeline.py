"""The stages of a run, each writing into the run directory.

``adapt run``: load -> adapt -> train -> evaluate -> merge -> verify merge ->
export (where exporters are configured) -> report. ``adapt train``, ``eval``,
``merge`` and ``predict`` run single stages against an existing run directory:
they rebuild the model from the saved config and load the saved adapter, so a
run can be stopped, inspected and continued.

Each stage returns its section of report.json (``train_stage`` -> ``training``,
``merge_stage`` -> metrics, parity, merge check; ``export_stage`` -> the export's
entries); a stage that fails after measuring carries its section on the error
(``AdaptError.report``). Only the orchestrating functions here add sections to the
run's report (``add_section``) and write it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click

from adapt import distributed
from adapt.config import RunConfig, load_config
from adapt.data import Splits, load_splits
from adapt.export_stage import export_stage
from adapt.errors import AdaptError, CheckpointError, DataError, MergeError, RunDirError
from adapt.host import Host
from adapt.interfaces import BuiltModel, Example, Task
from adapt.plan import Plan, make_plan, model_task
from adapt.report import add_section, agreement_text, plot_curve, read_report, write_report
from adapt.memory import give_back
from adapt.rundir import CONFIG_FILE, RunDir, already_a_run, atomic_write_json, check_target, hold_lock, require_run

LABELS_FILE = "labels.json"
MERGED_DIR = "merged"


def count_parameters(model: Any) -> dict[str, int]:
    total = sum(logical_numel(p) for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def logical_numel(parameter: Any) -> int:
    """How many weights a parameter stands for: a packed one (a 4-bit weight stores two per
    byte) says its unpacked shape in ``quant_state.shape``, as bitsandbytes' do."""
    shape = getattr(getattr(parameter, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else int(parameter.numel())


#: How many modules the start-up message names one by one.
SUMMARY_MODULES = 6


def summarise(names: Sequence[str]) -> str:
    """Parameter names grouped by their module: ``model.classifier (weight, bias)``; past
    :data:`SUMMARY_MODULES` modules, by their top-level module: ``head (32 tensors in 20 modules)``."""
    modules: dict[str, list[str]] = {}
    for name in names:
        module, _, leaf = name.rpartition(".")
        modules.setdefault(module, []).append(leaf)
    if len(modules) <= SUMMARY_MODULES:
        return ", ".join(f"{m} ({', '.join(leaves)})" if m else ", ".join(leaves) for m, leaves in modules.items())
    tops: dict[str, list[str]] = {}
    for module in modules:
        tops.setdefault(module.split(".")[0], []).append(module)
    return ", ".join(
        f"{top} ({sum(len(modules[m]) for m in inner)} tensors in {len(inner)} module{'s' if len(inner) > 1 else ''})"
        for top, inner in tops.items()
    )


def load_data(plan: Plan) -> Splits:
    return load_splits(plan.source, plan.data_request(), plan.task, plan.config.data.split)


def build_model(plan: Plan, num_labels: int) -> BuiltModel:
    from adapt.paths import resolve_checkpoint

    cfg, task = plan.config.backbone, plan.task
    outputs = task.head_size(num_labels)  # an embedding head has `dim` outputs
    built = plan.backbone.build(
        model_task(plan.backbone, task, plan.config.task),
        outputs,
        checkpoint=cfg.checkpoint,
        arch=cfg.arch,
        options=plan.backbone_options,
    )
    if cfg.checkpoint and built.checkpoint is None:
        found = resolve_checkpoint(cfg.checkpoint)
        built.checkpoint = str(Path(found).resolve()) if Path(found).exists() else found
    return task.wrap_model(built, num_labels)


def default_targets(plan: Plan, built: BuiltModel) -> list[str]:
    """The modules a method adapts when the config names none (see :func:`chosen_targets`)."""
    return chosen_targets(plan, built)[0]


def chosen_targets(plan: Plan, built: BuiltModel) -> tuple[list[str], str | None]:
    """The modules a method adapts when the config names none, and a note where they come
    from the backbone rather than the method: those of the method's default families the
    model has, else the backbone's older per-method list, else, for a method without a
    ``default_families`` member (a plugin written before it existed; ``()`` says "none"),
    those of the backbone's ``recommended_families``."""
    from adapt.families import default_target_names

    declared = plan.method.default_families  # () : the method adapts no family (freeze)
    names = default_target_names(built.families, tuple(declared or ()))
    names = names or list(plan.backbone.default_targets(plan.method.name))
    recommended = tuple(plan.backbone.recommended_families)
    if names or declared is not None or not recommended:
        return names, None
    names = default_target_names(built.families, recommended)
    note = (
        f"method {plan.method.name!r} declares no default target families: it gets backbone {plan.backbone.name!r}'s "
        f"recommended {', '.join(recommended)}"
        if names
        else None
    )
    return names, note


def adapt_model(plan: Plan, built: BuiltModel) -> list[str]:
    """Apply the method; an error now (before any run directory) if it trains nothing."""
    from adapt.engine import nothing_trainable

    targets, note = chosen_targets(plan, built)
    if note:
        click.echo(f"adapt: {note}", err=True)
    trained = plan.method.apply(built, plan.method_options, targets)
    if not any(p.requires_grad for p in built.model.parameters()):
        raise nothing_trainable(built)
    return trained


def check_targets(plan: Plan) -> list[str]:
    """For ``--dry-run``: build the model (two labels stand in for the data's) and apply
    the method, so a target that matches nothing is an error now (and where the targets
    come from the backbone's recommendation, it says so); return the trainable parameter names."""
    built = build_model(plan, 2)
    return adapt_model(plan, built)


@dataclass
class Session:
    """What the stages share: the plan, the data, the adapted model and its collate function."""

    plan: Plan
    run: RunDir
    splits: Splits | None
    label_names: list[str]
    built: BuiltModel
    collate: Any
    dist: distributed.Dist

    @property
    def config(self) -> RunConfig:
        return self.plan.config

    def say(self, text: str) -> None:
        if self.dist.main:
            click.echo(text)


def read_labels(run_dir: Path) -> list[str] | None:
    """The label names saved with a run (None if it has none yet); a damaged file is named."""
    saved = run_dir / LABELS_FILE
    if not saved.exists():
        return None
    try:
        labels = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(
            f"{saved} is damaged: {exc}",
            hint="it holds the run's label names; restore it from a copy, or train the run again (adapt run CONFIG "
            "--overwrite)",
        ) from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise RunDirError(
            f"{saved} is damaged: it should hold a list of label names",
            hint="restore it from a copy, or train the run again (adapt run CONFIG --overwrite)",
        )
    return labels


def prepare(
    plan: Plan, run: RunDir, *, need_data: bool = True, fresh: bool = False, dist: distributed.Dist | None = None
) -> Session:
    """Load the data and build and adapt the model, seeded by ``train.seed``.
    ``fresh``: a new run, so labels saved at ``run`` (by a run it will replace) are not compared."""
    from adapt.engine import seed_everything

    dist = dist or distributed.Dist()
    seed_everything(plan.config.train.seed)
    splits = load_data(plan) if need_data else None
    saved = None if fresh else read_labels(run.path)
    if splits is not None:
        labels = splits.label_names
        if saved is not None and saved != labels:
            raise DataError(
                f"the data's labels differ from those saved in {run.path / LABELS_FILE}",
                hint="the data changed since this run was made; start a new run",
            )
    elif saved is not None:
        labels = saved
    else:
        raise RunDirError(f"{run.path} has no {LABELS_FILE}", hint="is it a run directory made by `adapt run`?")
    seed_everything(plan.config.train.seed)
    built = build_model(plan, len(labels))
    adapt_model(plan, built)
    collate = _flattened(plan.backbone.collator(built, plan.backbone_options), plan.task)
    return Session(plan, run, splits, labels, built, collate, dist)


def _flattened(collate: Callable[[Sequence[Example]], Any], task: Task) -> Callable[[Sequence[Example]], Any]:
    """The backbone's collator behind the task's ``flatten`` (text-embedding: a batch of
    pairs is collated as its queries, then its positives)."""
    return lambda examples: collate(task.flatten(examples))


def base_report(session: Session) -> dict[str, Any]:
    config, splits = session.config, session.splits
    report = read_report(session.run.path, damaged_ok=True)
    report.update(
        name=config.name,
        task=config.task,
        backbone=config.backbone.name,
        arch=config.backbone.arch,
        method=config.method.name,
        params=count_parameters(session.built.model),
        new_parameters=list(session.built.new_parameters),
        primary_metric=session.plan.task.primary_metric,
        lower_is_better=session.plan.task.lower_is_better,
        postprocess=dict(session.plan.task.postprocess),
        pipeline_tag=session.plan.task.pipeline_tag,
        checkpoint=config.backbone.checkpoint,
    )
    if splits is not None:
        report["data"] = {
            "source": config.data.source,
            "sizes": splits.sizes(),
            "labels": splits.label_names,
            "skipped": splits.skipped,
        }
    return report


# -- stages ---------------------------------------------------------------------


def _epoch_ended(host: Host, run_dir: Path, epoch: int, metrics: dict[str, float]) -> None:
    host.call("adapt_epoch_ended", run_dir=run_dir, epoch=epoch, metrics=metrics)


def train_stage(session: Session, host: Host, *, resume: bool) -> dict[str, Any]:
    """Train (or resume) the adapted model; the report's ``training`` section."""
    from adapt.engine import Trainer

    assert session.splits is not None
    config = session.config
    trainer = Trainer(
        built=session.built,
        method=session.plan.method,
        task=session.plan.task,
        collate=session.collate,
        train=session.splits.train,
        val=session.splits.val,
        label_names=session.label_names,
        config=config.train,
        run_dir=session.run.path,
        on_epoch=lambda epoch, metrics: _epoch_ended(host, session.run.path, epoch, metrics),
        dist=session.dist,
        sequence_length=session.plan.backbone.sequence_length(session.built, session.plan.backbone_options),
    )
    baseline = _baseline_metrics(session)
    result = trainer.fit(resume=resume)
    section = {
        "best_epoch": result.best_epoch,
        "best_val": result.best_metric,
        "epochs_run": sum(1 for r in result.history if r.get("kind") == "epoch"),
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "stopped_early": result.stopped_early,
        "device": result.device,
        "precision": result.precision,
        "processes": session.dist.world,
        "fast_path": result.fast_path,
    }
    if session.dist.active:
        section["strategy"] = config.train.strategy
        if trainer.sharded_bytes:
            section["sharded_mib"] = round(trainer.sharded_bytes / 2**20, 1)
    if trainer.sharded_bytes and session.dist.main:
        whole_again(session)
    if session.dist.main:
        plot_curve(session.run.path, result.history, session.plan.task.primary_metric)
        for path in sorted(p for p in (session.run.path / "adapter").rglob("*") if p.is_file()):
            host.call("adapt_artifact_exported", run_dir=session.run.path, path=path, kind="adapter")
    return {"training": section, **({"metrics": {"baseline": baseline}} if baseline else {})}


def whole_again(session: Session) -> None:
    """After sharded training, the model as one piece for the merge and the export: the base
    built again from its checkpoint (training never changed it) with the best epoch's adapter."""
    from adapt.adapter_io import load_adapter
    from adapt.engine import ADAPTER_DIR

    plan = session.plan
    built = build_model(plan, len(session.label_names))
    adapt_model(plan, built)
    load_adapter(plan.method, built, session.run.path / ADAPTER_DIR)
    session.built = built
    gc.collect()
    give_back()


def _baseline_metrics(session: Session) -> dict[str, Any]:
    """The report's ``metrics.baseline``, for a task that asks for one, so that a gain is
    measured in the same run: a model-free one (``baseline_metrics(train, test)``:
    recommendation's popularity ranking), or with ``baseline = True`` (text-embedding)
    the test metrics of the model before training (fresh adapters change nothing)."""

    from adapt.engine import evaluate

    task, splits = session.plan.task, session.splits
    if splits is None or not splits.test:
        return {}
    model_free = task.baseline_metrics(splits.train, splits.test)
    if model_free is not None:
        metrics, what = model_free, f"baseline ({task.baseline_name}):"
    elif not task.baseline:
        return {}
    else:
        model = session.built.model.eval()
        metrics = evaluate(
            model,
            splits.test,
            session.collate,
            task,
            session.label_names,
            batch_size=session.config.train.eval_batch,
            device=next(model.parameters()).device,
        ).metrics
        what = "baseline: the untuned model's"
    session.say(f"{what} test {task.primary_metric} {metrics.get(task.primary_metric, float('nan')):.4f}")
    return _clean(metrics)


@dataclass
class Merged:
    """The merge stage's outcome: the merge, the merged model's test evaluation (logits
    kept: the export's reference) and the report section (metrics, parity, merge check)."""

    result: Any
    evaluation: Any
    section: dict[str, Any]


def merge_stage(session: Session) -> Merged:
    """Test the adapted and the merged model and gate their parity (a MergeError,
    carrying the section, when the merge does not reproduce the adapted model)."""
    import torch

    from adapt.engine import evaluate
    from adapt.parity import compare

    assert session.splits is not None
    plan, config, test = session.plan, session.config, session.splits.test
    device = torch.device("cpu")  # merge and its check run in fp32 on the CPU, whatever training used
    session.built.model.to(device)

    def run(model: Any) -> Any:
        return evaluate(
            model,
            test,
            session.collate,
            plan.task,
            session.label_names,
            batch_size=config.train.eval_batch,
            device=device,
            keep_logits=True,
        )

    adapted = run(session.built.model)
    merged = plan.method.merge(session.built)
    merged_eval = run(merged.model)
    task = session.plan.task
    parity = compare(
        adapted.logits,
        merged_eval.logits,
        adapted.predictions,
        merged_eval.predictions,
        task.agreement,
        task.agreement_name,
    )
    section: dict[str, Any] = {
        "metrics": {"adapted": _clean(adapted.metrics), "merged": _clean(merged_eval.metrics)},
        "merge": "folded" if merged.folded else "inline",
        "merge_note": merged.note,
    }
    if merged.folded:
        section["params"] = {"merged_total": sum(p.numel() for p in merged.model.parameters())}
    gate, failure = gate_merge(session, merged, parity)
    section.update(gate)
    if failure is not None:
        failure.report = section
        raise failure
    section.update(_pictures(session, merged_eval.predictions))
    primary = plan.task.primary_metric
    session.say(
        f"test: adapted {primary} {adapted.metrics.get(primary, float('nan')):.4f}, merged "
        f"{merged_eval.metrics.get(primary, float('nan')):.4f}; merge "
        f"{section['merge']}{' (approximate)' if merged.tolerance is not None else ''} verified: max abs diff "
        f"{parity.max_abs_diff:.2e} (allowed {gate['parity']['merged']['bound']:.1e}), "
        f"{agreement_text(parity.agreement_of, parity.label_agreement)}"
    )
    return Merged(merged, merged_eval, section)


#: The run directory's folder for the task's pictures (``Task.draw``).
PICTURES_DIR = "pictures"


def _pictures(session: Session, predictions: Sequence[Any]) -> dict[str, Any]:
    """The task's pictures of the test split and the merged model's predictions on it (its
    optional ``draw``), written into ``<run>/pictures/``; the report's ``pictures`` entry."""
    test = session.splits.test if session.splits is not None else []
    if not test:
        return {}
    folder = session.run.path / PICTURES_DIR
    folder.mkdir(exist_ok=True)
    written = session.plan.task.draw(test, predictions, session.label_names, folder)
    if not written:
        return {}
    return {"pictures": {name: str(Path(path).relative_to(session.run.path)) for name, path in written.items()}}


def gate_merge(session: Session, merged: Any, parity: Any) -> tuple[dict[str, Any], MergeError | None]:
    """Whether the merged model reproduces the adapted one: every logit finite, and the
    max abs difference within ``merge.tolerance`` (or the method's declared bound) times
    max(1, largest logit). Returns the check's report entries, and the error to stop with."""
    from adapt.parity import report_entry, verdict

    declared = merged.tolerance
    tolerance = session.config.merge.tolerance if declared is None else declared
    bound = tolerance * max(1.0, parity.scale)
    problem = verdict(parity, bound, reference="the adapted model", candidate="the merged model")
    least = session.plan.task.min_agreement  # e.g. image-embedding: cosine 0.9999
    if not problem and least is not None and not parity.label_agreement >= least:
        problem = f"{session.plan.task.agreement_name} {parity.label_agreement:.6f} < {least} required"
    entries = {
        "parity": {"merged": report_entry(parity, bound, verified=not problem)},
        "merge_check": {
            "tolerance": tolerance,
            "approximate": declared is not None,
            "logit_scale": parity.scale,
            "verified": not problem,
        },
    }
    if not problem:
        return entries, None
    method = f"method {session.config.method.name!r} ({session.plan.owners.get('method', 'its plugin')})"
    if parity.nonfinite == "reference":
        return entries, MergeError(
            f"the merge cannot be checked: {problem} on the test split",
            hint="training produced a broken model; lower train.lr or use train.precision: fp32, and train again",
        )
    return entries, MergeError(
        f"{method}: the merged model does not reproduce the adapted one: {problem} "
        f"({'folded' if merged.folded else 'inline'} merge, {parity.examples} test examples); merged/ was not written",
        hint="the merge of that method is wrong: report it to the plugin's authors. If the method is approximate by "
        "design it must say so (MergeResult.tolerance); raise merge.tolerance only if that difference is "
        "acceptable",
    )


@contextlib.contextmanager
def recording(report: dict[str, Any]) -> Iterator[None]:
    """Add the section a failing stage carries (AdaptError.report) to ``report``."""
    try:
        yield
    except AdaptError as exc:
        if exc.report:
            add_section(report, exc.report)
        raise


def merge_and_save(session: Session, report: dict[str, Any]) -> Merged:
    """The merge stage, its section added to ``report``, and merged/ written (with its card)."""
    with recording(report):
        merged = merge_stage(session)
    add_section(report, merged.section)
    save_merged(merged.result.model, session, session.run.path / MERGED_DIR, folded=merged.result.folded, report=report)
    # the adapter is saved and the merge verified: the adapted copy's memory goes to the export
    # (a 0.6B decoder is 2.5 GB per copy); the backbone's members read the same config from the merged one
    session.built.model = merged.result.model
    gc.collect()
    give_back()
    return merged


def export_and_record(session: Session, merged: Merged, report: dict[str, Any], host: Host) -> None:
    """The export stage; its section replaces the previous export's in ``report``."""
    from adapt.export_stage import with_export

    with recording(report):
        section = export_stage(session, merged.result.model, merged.evaluation, report, host)
    if section:
        exported = with_export(report, section)
        report.clear()
        report.update(exported)


def _clean(metrics: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}


def save_merged(model: Any, session: Session, folder: Path, *, folded: bool, report: dict[str, Any]) -> None:
    """The merged model: when folded, the folder its library's own loader opens, where the
    backbone writes one (``Backbone.save_merged``: a transformers folder with the run's
    label names and tokenizer); else ``model.safetensors`` (the network's own tensor names
    when folded, adapt's when adapters stay inline or the wrapper adds layers of its own,
    such as an embedding projection). With a model card (README.md) naming the library
    that opens it (``merged_library`` in the report). Swapped in whole."""
    from safetensors.torch import save

    from adapt.report import model_card
    from adapt.rundir import atomic_folder

    plan = session.plan
    with atomic_folder(folder) as partial:
        written = (
            plan.backbone.save_merged(model, session.built, partial, session.label_names, plan.backbone_options)
            if folded
            else None
        )
        if written is None:
            inner = getattr(model, "model", model)
            own = [n for n, _ in model.named_parameters() if not n.startswith("model.")] if inner is not model else []
            source = inner if folded and not (own and hasattr(inner, "save_pretrained")) else model
            state = {k: v.detach().cpu().contiguous() for k, v in source.state_dict().items()}
            (partial / "model.safetensors").write_bytes(
                save(state, metadata={"format": "pt", "layout": "network" if folded else "adapt-inline"})
            )
        report["merged_library"] = written.library if written else "adapt"
        report["merged_usage"] = written.usage if written else []
        (partial / "README.md").write_text(model_card(report, "merged"), encoding="utf-8")


# -- commands -------------------------------------------------------------------


def check_resumable(config: RunConfig, path: Path) -> None:
    """A run can be continued only with the config it was started with (where it lies,
    ``output_dir`` and ``name``, is ``path`` itself: a moved run continues)."""
    before = load_config(path / CONFIG_FILE).model_dump(mode="json")
    now = config.model_dump(mode="json")
    changed = [k for k in _flat_keys(now) if k not in ("output_dir", "name") and _get(before, k) != _get(now, k)]
    if changed:
        raise RunDirError(
            f"cannot resume {path}: the config differs from the saved one at {', '.join(changed[:5])}",
            hint="resume with the same config (or `adapt train RUN_DIR`), or start over with --overwrite",
        )


def inputs_inside(config: RunConfig, path: Path) -> list[str]:
    """Config keys whose files lie inside the run directory ``path`` (which --overwrite would replace)."""
    from adapt.paths import is_package_path

    root = path.resolve()
    found = []
    for key, value in (("data.path", config.data.path), ("backbone.checkpoint", config.backbone.checkpoint)):
        local = Path(value).expanduser() if value and not is_package_path(value) else None
        if local is not None and local.exists() and local.resolve().is_relative_to(root):
            found.append(f"{key} ({value})")
    return found


def check_run_target(config: RunConfig, *, overwrite: bool, resume: bool) -> bool:
    """Before anything is loaded or written: may this run use its directory? Returns
    True when it starts afresh (False: it continues the run found there)."""
    path = config.run_dir()
    found = check_target(path)  # refuses links and folders adapt did not make
    if found == "new":
        return True
    if resume and (path / CONFIG_FILE).exists():
        check_resumable(config, path)
        return False
    if not overwrite:
        raise already_a_run(path)
    inside = inputs_inside(config, path)
    if inside:
        raise RunDirError(
            f"{', '.join(inside)} lies inside {path}, which --overwrite would replace",
            hint="move the data or checkpoint out of the run directory, or give the new run another name (--set "
            "name=...)",
        )
    return True


def _flat_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        keys += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return keys


def _get(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return data


def run_pipeline(plan: Plan, host: Host, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Run every stage of ``plan``; return the run directory (locked while this process writes it).
    An existing run is replaced only once the new run's data and model have loaded."""
    config = plan.config
    dist = distributed.from_environment()
    fresh = check_run_target(config, overwrite=overwrite, resume=resume) if dist.main else not resume
    with hold_lock(config.run_dir()) if dist.main else contextlib.nullcontext():
        return _run_stages(plan, host, dist, fresh=fresh, resume=resume)


def _start_run(plan: Plan, host: Host, dist: distributed.Dist, *, fresh: bool) -> Session:
    """Load data and model (checking both), and only then make (or replace) the run directory."""
    config = plan.config
    path = config.run_dir()
    session = prepare(plan, RunDir(path), fresh=fresh, dist=dist)
    if dist.main:
        if fresh:
            run = RunDir.create(path, overwrite=True)  # check_run_target allowed it; deletes only what adapt wrote
            if run.kept:
                click.echo(f"overwrite: kept {len(run.kept)} item(s) adapt did not write: {', '.join(run.kept[:10])}")
            session.run = run
        session.run.write_config(config.model_dump(mode="json"))
        atomic_write_json(path / LABELS_FILE, session.label_names)
        host.call("adapt_run_started", run_dir=path, config=config.model_dump(mode="json"))
        click.echo(f"run directory: {path}")
    distributed.barrier(dist)
    return session


@contextlib.contextmanager
def _finishing(session: Session, host: Host, report: dict[str, Any]) -> Iterator[None]:
    """Call adapt_run_finished once the stages end, with the error they ended with (if any)."""
    error: str | None = None
    try:
        yield
    except BaseException as exc:
        error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if session.dist.main:
            host.call("adapt_run_finished", run_dir=session.run.path, report=report, error=error)


class Stopwatch:
    """Wall seconds and peak resident memory per stage of a run (the report's ``timings`` and
    ``memory``), so a user sees where the time and the memory go."""

    def __init__(self) -> None:
        from adapt.memory import StagePeaks

        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.memory = StagePeaks()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        begun = time.perf_counter()
        self.memory.begin()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - begun, 2)
            self.memory.end(stage)

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.started, 2)}


def _run_stages(plan: Plan, host: Host, dist: distributed.Dist, *, fresh: bool, resume: bool) -> Path:
    from adapt.engine import resolve_device

    config = plan.config
    distributed.init(dist, resolve_device(config.train.device).type)
    clock = Stopwatch()
    try:
        with clock("load"):
            session = _start_run(plan, host, dist, fresh=fresh)
        run, splits = session.run, session.splits
        assert splits is not None
        session.say(
            f"load: {config.data.source} -> "
            + ", ".join(f"{k} {v}" for k, v in splits.sizes().items())
            + f"; {len(splits.label_names)} labels"
            + (
                f"; skipped {len(splits.skipped)} unreadable item(s), e.g. {splits.skipped[0]}"
                if splits.skipped
                else ""
            )
        )
        if session.built.new_parameters:
            session.say(
                f"load: not in the checkpoint, so trained under every method: {summarise(session.built.new_parameters)}"
            )
        report = base_report(session)
        params = report["params"]
        session.say(
            f"adapt: {config.method.name} on {config.backbone.name}: {params['trainable']:,} of {params['total']:,} "
            f"parameters trainable ({params['trainable'] / max(params['total'], 1):.2%})"
        )
        report["timings"] = clock.seconds
        with _finishing(session, host, report):
            if dist.main:
                write_report(run.path, report)
            with clock("train"):
                add_section(report, train_stage(session, host, resume=resume))
            if dist.main:
                try:
                    with clock("merge"):
                        merged = merge_and_save(session, report)
                    write_report(run.path, report)
                    with clock("export"):
                        export_and_record(session, merged, report, host)
                finally:
                    report["timings"] = clock.total()
                    report["memory"] = clock.memory.section(4 * int(report["params"]["total"]))
                    if host.warnings:  # observers that raised (adapt_run_finished's come after this write)
                        report["plugin_warnings"] = list(host.warnings)
                    write_report(run.path, report)
                _say_where_it_went(session, report)
        distributed.barrier(dist)
        return run.path
    finally:
        distributed.shutdown(dist)


def _say_where_it_went(session: Session, report: dict[str, Any]) -> None:
    """The run's last lines: each stage's seconds and peak memory, and where the report is."""
    session.say("timings: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report["timings"].items()))
    session.say(
        "peak memory: "
        + ", ".join(f"{stage} {mib:,.0f} MiB" for stage, mib in report["memory"]["peak_mib"].items())
        + f" ({report['memory']['peak_over_weights']}x the fp32 weights)"
    )
    session.say(f"report: {session.run.path / 'report.md'}")


def plan_from_run(run_dir: Path, host: Host, *, writing: bool = False) -> Plan:
    """The plan saved in a run directory. ``writing``: the command will write there,
    so it must be a run adapt made (not a link, not someone else's folder)."""
    if writing:
        require_run(run_dir)
    saved = run_dir / CONFIG_FILE
    if not saved.exists():
        raise RunDirError(
            f"{run_dir} is not a run directory (no {CONFIG_FILE})",
            hint="give the folder `adapt run` printed, e.g. runs/<name>",
        )
    # the run is where it is now: the saved output_dir and name said where it was made,
    # which a moved run (or an edited config.yaml) no longer is
    here = run_dir if run_dir.name not in ("", ".", "..") else run_dir.resolve()  # `adapt train .` from inside the run
    config = load_config(saved).model_copy(update={"output_dir": str(here.parent), "name": here.name})
    return make_plan(config, host)


def restore(run_dir: Path, host: Host, *, need_data: bool = True, writing: bool = False) -> Session:
    """The run's adapted model with its best adapter loaded."""
    from adapt.adapter_io import load_adapter
    from adapt.engine import ADAPTER_DIR

    plan = plan_from_run(run_dir, host, writing=writing)
    session = prepare(plan, RunDir(run_dir), need_data=need_data)
    adapter = run_dir / ADAPTER_DIR
    if not adapter.exists():
        raise CheckpointError(
            f"{run_dir} has no trained adapter yet ({adapter})", hint=f"train it first: adapt train {run_dir}"
        )
    trained = read_report(run_dir, damaged_ok=True).get("data", {}).get("labels")
    if isinstance(trained, list) and trained != session.label_names:
        raise RunDirError(
            f"{run_dir / LABELS_FILE} names {len(session.label_names)} labels, but the run was trained on "
            f"{len(trained)} ({', '.join(map(str, trained[:5]))}{', ...' if len(trained) > 5 else ''}; report.json)",
            hint=f"{LABELS_FILE} was edited or damaged since training: restore it, or train the run again",
        )
    load_adapter(plan.method, session.built, adapter)
    return session


def train_command(run_dir: Path, host: Host) -> Path:
    """Continue (or start) training of an existing run directory, then evaluate and merge."""
    return run_pipeline(plan_from_run(run_dir, host, writing=True), host, resume=True)


def eval_command(run_dir: Path, host: Host, split: str) -> dict[str, float]:
    from adapt.engine import evaluate

    session = restore(run_dir, host)
    import torch

    config = session.config
    assert session.splits is not None  # restored with its data
    examples = session.splits.split(split)
    result = evaluate(
        session.built.model,
        examples,
        session.collate,
        session.plan.task,
        session.label_names,
        batch_size=config.train.eval_batch,
        device=torch.device("cpu"),
    )
    return _clean(result.metrics)


def merge_command(run_dir: Path, host: Host) -> dict[str, Any]:
    require_run(run_dir)
    with hold_lock(run_dir):
        session = restore(run_dir, host, writing=True)
        report = base_report(session)
        try:
            merge_and_save(session, report)
        finally:
            write_report(run_dir, report)
        return report


def export_command(run_dir: Path, host: Host) -> dict[str, Any]:
    """Merge again and re-export with the run's saved config."""
    require_run(run_dir)
    with hold_lock(run_dir):
        return _export(run_dir, host)


def _export(run_dir: Path, host: Host) -> dict[str, Any]:
    session = restore(run_dir, host, writing=True)
    report = base_report(session)
    try:
        export_and_record(session, merge_and_save(session, report), report, host)
    finally:
        write_report(run_dir, report)
    return report


def predict_command(
    run_dir: Path, host: Host, inputs: Sequence[str], settings: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Predictions of the run's PyTorch model, one row per input, as its task makes them
    (``Task.predict``; by default its declared post-processing, as predict.py does it)."""
    from adapt.export_stage import EXPORT_DIR
    from adapt.onnx_predict import InputError, PredictError, check_draw
    from adapt.torch_predict import TorchPredictor

    session = restore(run_dir, host, need_data=False)
    settings = {**(settings or {}), "sources": list(inputs)}
    check_draw(settings.get("draw"))
    export = run_dir / EXPORT_DIR
    try:
        return session.plan.task.predict(TorchPredictor(session, export if export.is_dir() else None), inputs, settings)
    except InputError:
        raise
    except PredictError as exc:
        raise AdaptError(
            str(exc),
            hint="what predict reads beside the model (a gallery, an index) is written by the export: adapt export "
            f"{run_dir}",
        ) from None
