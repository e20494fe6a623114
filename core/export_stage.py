"""The export stage: from the merged PyTorch model to deployable files, each one
checked against the merged model on the run's real test inputs.

For each configured exporter: export, then evaluate the file on the test split
(the task's metrics) and compare its logits with the merged model's (max abs
difference, label agreement); an exact form (fp32, optimised) that drifts past
``export.parity_tolerance`` fails the run. Exporters may derive further forms
(optimised, int8, mobile) through :class:`DeriveContext`, which lets them score
a candidate file on the validation split and time it. Every runnable form's
CPU latency at batch 1 is measured next to PyTorch eager.
"""

from __future__ import annotations

import math
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

EXPORT_DIR = "export"
#: How to turn raw inputs into the graph's inputs without torch (see adapt.onnx_predict).
PREPROCESS_FILE = "preprocess.json"


# The exporter's side of the contract lives with the other interfaces; these names stay importable here.
from adapt.interfaces import Derived, DeriveContext, Form  # noqa: E402,F401
from adapt.latency import LazyRunner  # noqa: E402
from adapt.memory import give_back  # noqa: E402


def measure(fn: Callable[[], Any], runs: int, warmup: int = 3) -> dict[str, float]:
    """Median and p90 milliseconds of ``runs`` calls of ``fn`` (one contender, one round)."""
    from adapt.latency import figures, timed_rounds

    found = figures(timed_rounds({"fn": fn}, 1, runs, pause=0, warmup=warmup)["fn"])
    return {"median": found["median"], "p90": found["p90"]}


#: What the export stage writes into the report (besides the exported forms' metrics and parity).
EXPORT_KEYS = (
    "export",
    "forms",
    "form_bytes",
    "deployable",
    "latency_ms",
    "latency_ms_batch",
    "latency_vs_pytorch",
    "latency_machine",
    "rejected_export",
    "export_notes",
    "web",
    "samples",
)
#: The latency figures' rounds (at most; export.latency_runs calls are shared among them)
#: and the pause before each turn: shorter than adapt bench's, as a run times many files.
LATENCY_ROUNDS, LATENCY_PAUSE_S = 5, 0.1
#: Entries of ``metrics`` / ``parity`` that the merge stage writes; all others are exported forms'.
MODEL_ENTRIES = ("baseline", "adapted", "merged")
#: The least share of the merged model's final predictions (object-detection: confident
#: boxes) that an exact form's own final outputs must reproduce (the task's ``agreement``).
MIN_FINAL_AGREEMENT = 0.99
#: Past this many bytes of exported files timed together, each form's session is open for its own turns only;
#: past this many bytes of PyTorch weights, the merged model waits on disk while the exporter derives its forms.
LEAN_ABOVE_BYTES = 1 << 30
#: Where an export that failed its parity check is kept for inspection (the previous export stays in place).
REJECTED_DIR = "export.rejected"


def forget_export(report: dict[str, Any]) -> None:
    """Drop everything a previous export put into ``report``."""
    for key in EXPORT_KEYS:
        report.pop(key, None)
    for key in ("metrics", "parity"):
        if isinstance(report.get(key), dict):
            report[key] = {k: v for k, v in report[key].items() if k in MODEL_ENTRIES}


def with_export(report: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``report`` with the previous export's entries replaced by ``new``'s (its
    forms join the merge stage's ``metrics`` and ``parity``)."""
    from adapt.report import add_section

    merged = dict(report)
    forget_export(merged)
    add_section(merged, new)
    return merged


def export_stage(session: Any, merged_model: Any, merged: Any, report: dict[str, Any], host: Any) -> dict[str, Any]:
    """Export, verify, derive and time every configured format; return the report's
    export section (``report``, the run's report so far, is read, never changed).

    The new export is written into a folder beside ``export/`` and swapped in whole
    once every form has passed its checks, so a run killed meanwhile (or a full disk,
    or a failed check) leaves the previous export and the report that names it as
    they were. An export that fails its parity check is kept in ``export.rejected/``.
    ``merged`` is the merged model's test-split evaluation (logits kept), the reference."""
    from adapt.errors import ExportError
    from adapt.report import model_card, write_report
    from adapt.rundir import remove, staged_folder, swap_in

    if not session.plan.exporters:
        return {}
    run_dir = session.run.path
    out = run_dir / EXPORT_DIR
    with staged_folder(out) as staging:
        job = _ExportJob(session, merged_model, merged, staging)
        try:
            job.run()
        except ExportError as exc:
            remove(run_dir / REJECTED_DIR)
            staging.rename(run_dir / REJECTED_DIR)
            exc.report = {
                "rejected_export": {"folder": REJECTED_DIR, "error": exc.message, "parity": job.new["parity"]}
            }
            raise
        shipped = {"README.md", *(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())}
        card = model_card(with_export(report, job.new), "export", sorted(shipped))
        (staging / "README.md").write_text(card, encoding="utf-8")
        write_report(run_dir, with_export(report, {}))  # for the instant of the swap, the report names no export file
        swap_in(staging, out)
        remove(run_dir / REJECTED_DIR)
    owners = {job.new["forms"][form]: exporter for form, exporter in job.form_exporters.items()} | job.companions
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        host.call(
            "adapt_artifact_exported",
            run_dir=run_dir,
            path=path,
            kind=artifact_kind(path.relative_to(run_dir).as_posix(), owners),
        )
    return job.new


#: ``adapt_artifact_exported``'s kind for the files beside the exported forms, by name.
SUPPORT_KINDS = {
    PREPROCESS_FILE: "preprocessing",
    "tokenizer.json": "preprocessing",
    "predict.py": "predictor",
    "README.md": "card",
}


def artifact_kind(relative: str, owners: dict[str, str]) -> str:
    """What an exported file is, for trackers: the exporter's name for a model file it
    made (every form, the .ort included), else ``preprocessing``, ``predictor``,
    ``card``, ``mobile-config`` (the reduced build's operators), ``gallery``, ``export``."""
    name = relative.rsplit("/", 1)[-1]
    if relative in owners:
        return owners[relative]
    if name in SUPPORT_KINDS:
        return SUPPORT_KINDS[name]
    if name.endswith(".config"):
        return "mobile-config"
    return "gallery" if name.startswith("gallery") else "export"


@dataclass
class FileRun:
    """What running an exported file over some batches gave."""

    metrics: dict[str, float]
    logits: list[Any]
    predictions: list[Any]
    references: list[Any]
    finals: list[Any] | None


class _ExportJob:
    """One export into ``staging``: every form made, verified against the merged model,
    scored and timed; the report entries collect in ``new`` with their final paths."""

    def __init__(self, session: Any, merged_model: Any, merged: Any, staging: Path) -> None:
        import torch

        self.session, self.merged_model, self.merged, self.staging = session, merged_model, merged, staging
        self.plan, self.cfg = session.plan, session.config.export
        self.threads = torch.get_num_threads()
        self.io = self.plan.backbone.onnx_io(session.built)
        batch_size = session.config.train.eval_batch
        self.test_batches = self._batches(session.splits.test, batch_size)
        self.val_batches = self._batches(session.splits.val, batch_size) or self.test_batches
        self.one = session.collate(session.splits.test[:1])
        self.many = (
            session.collate(session.splits.test[: self.cfg.latency_batch]) if self.cfg.latency_batch > 1 else None
        )
        self.new: dict[str, Any] = {
            "metrics": {},
            "parity": {},
            "forms": {},
            "form_bytes": {},
            "export": {},
            "latency_ms": {},
        }
        #: The task's final output names after the logits (``graph_outputs``; none for most tasks).
        self.final_names: tuple[str, ...] = self.graph()[1].output_names[len(self.io.output_names) :]
        #: What the task's check_export keeps for the whole export (its reference outputs).
        self.check_memo: dict[str, Any] = {}
        #: form name -> the exporter that made it (adapt_artifact_exported's kind)
        self.form_exporters: dict[str, str] = {}
        #: forms whose session opens at their first timed turn (and, past LEAN_ABOVE_BYTES, closes after each)
        self.lazy: dict[str, LazyRunner] = {}
        #: final name of a file that ships with a form (its external data) -> the exporter
        self.companions: dict[str, str] = {}
        #: name -> calls at batch 1 and at latency_batch, timed together at the end
        self.timed: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]] = {}
        #: (file, mtime) -> its validation metric and per-example scores (see val_outcome)
        self._val_cache: dict[tuple[Path, int], tuple[float, list[float] | None]] = {}

    def _batches(self, examples: list, size: int) -> list[dict[str, Any]]:
        return [self.session.collate(examples[i : i + size]) for i in range(0, len(examples), size)]

    def _feed(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The graph's inputs that a batch holds (a cached decoder's cache is not in a
        batch: its runner feeds an empty one, which makes the step a whole-prompt pass)."""
        return {n: batch[n].numpy() for n in self.io.input_names if n in batch}

    def final_name(self, path: Path) -> str:
        """A staged file's path relative to the run directory once export/ is swapped in."""
        return (Path(EXPORT_DIR) / path.relative_to(self.staging)).as_posix()

    def runner(
        self, exporter: Any, path: Path, finals: bool
    ) -> tuple[Callable[[dict[str, Any]], dict[str, Any]], bool]:
        """A function from a feed to the file's outputs by name, the logits first, and
        whether those include the final outputs a task reads (``final_predictions``:
        object-detection's boxes, an embedding; they need the exporter's ``load_outputs``)."""
        if finals and self.final_names:
            load_outputs = exporter.load_outputs(path, self.threads)
            if load_outputs is not None:
                return load_outputs, True
        load = exporter.load(path, self.threads)
        return (lambda feed: {"logits": load(feed)}), False

    def run_file(self, exporter: Any, path: Path, data: list[dict[str, Any]], finals: bool = False) -> FileRun:
        """The task's metrics, the logits, predictions and references of an exported file on
        ``data``; with ``finals``, in the same pass, the task's predictions from the file's
        own final outputs (None where the task or the exporter has none)."""
        import numpy as np
        import torch

        task, predictions, references, logits = self.plan.task, [], [], []
        run, named = self.runner(exporter, path, finals)
        final: list[Any] | None = [] if named else None
        for batch in data:
            feed = self._feed(batch)
            outputs = run(feed)
            if final is not None:
                final += task.final_predictions(outputs, feed)
            out_logits = torch.from_numpy(np.asarray(next(iter(outputs.values())), dtype=np.float32))
            pred, ref = task.decode(out_logits, batch["labels"])
            predictions += pred
            references += ref
            logits.append(out_logits)
        del run  # the session's memory goes back before the next file is opened
        give_back()
        return FileRun(
            task.metrics(predictions, references, self.session.label_names), logits, predictions, references, final
        )

    def latency(self, fn: Callable[[], Any]) -> dict[str, float]:
        return {**measure(fn, self.cfg.latency_runs), "threads": self.threads}

    def to_time(self, name: str, runner: Callable[[dict[str, Any]], Any]) -> None:
        """Queue a form for :meth:`time_together` at batch 1 (and ``latency_batch``)."""
        one, batch = self._feed(self.one), self.many
        self.timed[name] = (lambda: runner(one), None)
        if isinstance(runner, LazyRunner):
            self.lazy[name] = runner
        self.new["latency_ms"].setdefault(name, {})
        if batch is not None:
            many = self._feed(batch)
            self.timed[name] = (lambda: runner(one), lambda: runner(many))
            self.new.setdefault("latency_ms_batch", {"batch": len(batch["labels"])}).setdefault(name, {})

    def run(self) -> None:
        import torch

        model, names = self.merged_model.eval(), self.io.input_names

        def eager(batch: dict[str, Any]) -> Any:
            with torch.no_grad():
                return model(**{n: torch.as_tensor(batch[n]) for n in names if n in batch})

        self.to_time("pytorch", eager)
        self.write_preprocessing()
        for exporter in self.plan.exporters:
            self.export_one(exporter)
        self.time_together()
        self.write_web()

    def write_web(self) -> None:
        """web/: the deployable file in a browser page (adapt.web_export). The page is an extra:
        where it cannot be made, the report says why and the export stands."""
        from adapt import web_export
        from adapt.onnx_predict import open_session, read_spec

        spec_path, deployable = self.staging / PREPROCESS_FILE, self.new.get("deployable")
        if not spec_path.exists() or not deployable or not deployable.endswith(".onnx"):
            return
        path = self.staging / Path(deployable).relative_to(EXPORT_DIR)
        try:
            spec = read_spec(spec_path)
            web = self.staging / web_export.WEB_DIR
            task = None
            if web_export.supported(spec):
                session = open_session(path)
                images = spec.get("kind") == "image"
                sources = web_export.example_inputs(self.plan.task, self.session.splits.test, web, images)
                task = web_export.page_task(session, spec, self.staging, web, sources, session.get_outputs()[0].name)
            if task is None:
                self.new["web"] = {
                    "note": f"the browser page does not prepare {spec.get('kind')} inputs or this task's "
                    "post-processing; use predict.py"
                }
                return
            manifest = {
                "model": f"../{path.relative_to(self.staging).as_posix()}",
                "tasks": {self.session.config.name: task},
            }
            self.new["web"] = web_export.write_web(self.staging, manifest)
        except Exception as exc:  # noqa: BLE001 - the page is an extra; the export it serves is verified already
            self.new["web"] = {"note": f"web/ was not written: {type(exc).__name__}: {exc}"}
        if "note" in self.new["web"]:
            self.session.say(f"export: note: {self.new['web']['note']}")

    def time_together(self) -> None:
        """Every form's latency, PyTorch eager's included, measured in rounds in which they
        take turns (adapt.latency), so a ratio compares forms and not moments of the
        machine: ``latency_ms`` (median, p90 over all calls, spread of the rounds),
        ``latency_vs_pytorch`` (each form's ratio: median and range of the per-round ratios,
        or a note where eager was too unsteady for one) and ``latency_machine``."""
        from adapt.latency import figures, machine, summary, timed_rounds

        rounds = min(LATENCY_ROUNDS, self.cfg.latency_runs)
        runs = max(1, self.cfg.latency_runs // rounds)
        lazy = self.lazy
        lean = sum(self.new["form_bytes"].get(name, 0) for name in lazy) > LEAN_ABOVE_BYTES

        def release(name: str) -> None:
            if name in lazy:
                lazy[name].release()

        if lean:
            self.new.setdefault("export_notes", []).append(
                "the files timed together pass 1 GiB, so each form's session was open for its own turns only"
            )
        for key, which in (("latency_ms", 0), ("latency_ms_batch", 1)):
            calls: dict[str, Callable[[], Any]] = {
                name: call for name, pair in self.timed.items() if (call := pair[which]) is not None
            }
            if not calls:
                continue
            times = timed_rounds(calls, rounds, runs, pause=LATENCY_PAUSE_S, after_turn=release if lean else None)
            for name, per_round in times.items():
                self.new[key][name].update({**figures(per_round), "threads": self.threads})
            if key == "latency_ms":
                found = summary({n: [statistics.median(r) for r in t] for n, t in times.items()}, "pytorch")
                self.new["latency_vs_pytorch"] = {
                    **found["to_pytorch"],
                    **({"note": found["note"]} if "note" in found else {}),
                }
        self.new["latency_machine"] = machine()
        for runner in lazy.values():  # the sessions' memory goes back before the next exporter
            runner.release()

    def write_preprocessing(self) -> None:
        """``preprocess.json`` and the standalone ``predict.py``, where the backbone can describe its preprocessing."""
        spec = self.plan.backbone.save_preprocessing(self.session.built, self.plan.backbone_options, self.staging)
        if spec is None:
            note = (
                f"backbone {self.plan.backbone.name!r} has no save_preprocessing, so export/ holds no preprocess.json "
                "and no standalone predict.py: a device must prepare inputs itself"
            )
            self.new.setdefault("export_notes", []).append(note)
            self.session.say(f"export: note: {note}")
            return
        from adapt import onnx_predict
        from adapt.rundir import atomic_write_json

        session = self.session
        postprocess = dict(self.plan.task.postprocess)
        atomic_write_json(
            self.staging / PREPROCESS_FILE,
            {**spec, "labels": session.label_names, "task": session.config.task, "postprocess": postprocess},
        )
        shutil.copyfile(onnx_predict.__file__, self.staging / "predict.py")  # the standalone predictor a device runs

    def graph(self, model: Any = None) -> tuple[Any, Any]:
        """What to export and its names: the merged model (or ``model``, a fine-tuned copy
        of it), or, for a task with ``graph_outputs`` (object-detection), the model
        followed by the task's final outputs (boxes after NMS), so a device needs no
        post-processing code."""
        from adapt.interfaces import OnnxIO

        model = self.merged_model if model is None else model
        extended = self.plan.task.graph_outputs(model)
        if extended is None:
            return model, self.io
        module, extra = extended
        axes = {**self.io.dynamic_axes, **{name: {0: "detections"} for name in extra}}
        return module.eval(), OnnxIO(self.io.input_names, (*self.io.output_names, *extra), axes)

    def export_one(self, exporter: Any) -> None:
        plan, built = self.plan, self.session.built
        model, io = self.graph()
        inputs = plan.backbone.example_inputs(built, 2)
        model = plan.backbone.export_form(model, inputs, io)
        path = exporter.export(
            model, inputs, io, self.staging / f"model{exporter.suffix}", plan.exporter_options.get(exporter.name)
        )
        give_back()  # the trace's copies of the weights
        forms, details, deployable = [Form(exporter.name, path)], {}, path
        derived = self.derive(exporter, path)
        if derived is not None:
            forms += derived.forms
            deployable = derived.deployable
            details = {"attempts": derived.attempts, "notes": derived.notes, **derived.info}
        self.new["export"][exporter.name] = details
        for form in forms:
            self.new["forms"][form.name] = self.final_name(form.path)
            self.form_exporters[form.name] = exporter.name
            companions = [p for p in exporter.companions(form.path) if p.is_file()]
            self.companions.update({self.final_name(p): exporter.name for p in companions})
            self.new["form_bytes"][form.name] = sum(p.stat().st_size for p in (form.path, *companions))
            if form.runnable:
                self.verify(exporter, form)
        self.new["deployable"] = self.final_name(deployable)
        self.write_gallery(exporter, deployable)
        primary = plan.task.primary_metric
        self.session.say(
            f"export: {exporter.name}: "
            + ", ".join(f"{f.name} {_short(self.new['metrics'].get(f.name, {}), primary)}" for f in forms if f.runnable)
            + f"; deployable {self.new['deployable']}"
        )

    def derive(self, exporter: Any, path: Path) -> Any:
        """The exporter's further forms; past LEAN_ABOVE_BYTES of PyTorch weights, with the merged
        model's tensors parked on disk meanwhile (adapt.offload: the quantisers need the memory)."""
        from adapt.offload import model_bytes, offloaded

        context = self.derive_context(exporter)
        if model_bytes(self.merged_model) <= LEAN_ABOVE_BYTES or self.cfg.qat is not None:
            return exporter.derive(path, context)
        with offloaded(self.merged_model, self.staging):
            return exporter.derive(path, context)

    def write_gallery(self, exporter: Any, deployable: Path) -> None:
        """A task with ``gallery`` (the embedding tasks): the deployable file's outputs on
        the training split (or the task's ``gallery_split``: recommendation's catalogue is
        in test), made into the files a device compares queries with (``gallery.npy``,
        ``gallery.json``, whatever else the task returns), written beside the model."""
        if not self.final_names or deployable.suffix != ".onnx":
            return
        run, named = self.runner(exporter, deployable, finals=True)
        if not named:
            return
        from adapt.rundir import atomic_write_bytes, atomic_write_json

        examples = self.session.splits.split(self.plan.task.gallery_split)
        predictions, references = [], []
        for batch in self._batches(examples, self.session.config.train.eval_batch):
            feed = self._feed(batch)
            predictions += self.plan.task.final_predictions(run(feed), feed)
            references += batch["labels"].tolist()
        files = self.plan.task.gallery(predictions, references, self.session.label_names, examples)
        if not files:
            return
        for name, content in files.items():
            if isinstance(content, bytes):
                atomic_write_bytes(self.staging / name, content)
            else:
                atomic_write_json(self.staging / name, content)
        self.new["export"].setdefault(exporter.name, {})["gallery_from"] = self.final_name(deployable)

    def derive_context(self, exporter: Any) -> DeriveContext:
        session, cfg, names = self.session, self.cfg, self.io.input_names

        lower_is_better = self.plan.task.lower_is_better

        def score(candidate: Path) -> float:
            value = self.run_file(exporter, candidate, self.val_batches).metrics.get(
                self.plan.task.primary_metric, math.nan
            )
            return -math.log(max(value, 1e-300)) if lower_is_better else value  # see DeriveContext.score

        def file_latency(candidate: Path) -> dict[str, float]:
            runner, feed = exporter.load(candidate, self.threads), self._feed(self.one)
            return self.latency(lambda: runner(feed))

        calibration = [
            {n: v.numpy() for n, v in session.collate([e]).items() if n in names} for e in session.splits.train[:400]
        ]
        model_info = self.plan.backbone.onnx_optimizer_options(session.built)
        budget = math.log1p(cfg.max_perplexity_increase) if lower_is_better else cfg.max_accuracy_drop
        options = self.plan.exporter_options.get(exporter.name)
        judge = (
            None
            if lower_is_better
            else (lambda candidate, reference: self.judge(exporter, candidate, reference, budget))
        )
        return DeriveContext(
            self.staging,
            model_info,
            cfg.quantize,
            cfg.mobile,
            budget,
            calibration,
            score,
            file_latency,
            options,
            self.metadata(),
            cfg.target,
            cfg.prefer,
            self.qat(exporter, options),
            judge,
        )

    def judge(self, exporter: Any, candidate: Path, reference: Path, budget: float) -> dict[str, Any] | None:
        """DeriveContext.judge: the candidate's drop against the reference on the validation
        split, paired over the examples (adapt.paired); None where the task gives no
        per-example scores (``example_scores``), whose metric then is compared as a whole."""
        from adapt.paired import paired_drop

        (_, ref), (score, cand) = (self.val_outcome(exporter, path) for path in (reference, candidate))
        if (
            ref is None or cand is None or not ref or len(ref) != len(cand)
        ):  # no examples, or a task whose scores do not pair up: compare the scores
            return None
        found = paired_drop(ref, cand, budget)
        return {"val_score": score, **found, "passed": found["verdict"] == "passed"}

    def val_outcome(self, exporter: Any, path: Path) -> tuple[float, list[float] | None]:
        """A file's primary metric on the validation split and its per-example scores,
        kept per file (and its modification time) so a reference is run once."""
        key = (path, path.stat().st_mtime_ns)
        if key not in self._val_cache:
            done = self.run_file(exporter, path, self.val_batches)
            scores = self.plan.task.example_scores(done.predictions, done.references, self.session.label_names)
            self._val_cache[key] = (
                done.metrics.get(self.plan.task.primary_metric, math.nan),
                None if scores is None else [float(v) for v in scores],
            )
        return self._val_cache[key]

    def qat(self, exporter: Any, options: Any) -> Callable[[Path], dict[str, Any]] | None:
        """``export.qat``: the DeriveContext.qat callable (None when not configured)."""
        settings = self.cfg.qat
        if settings is None:
            return None

        def fine_tune_and_export(path: Path) -> dict[str, Any]:
            from adapt import qat

            session, train = self.session, self.session.config.train
            tuned, info = qat.finetune(
                self.merged_model,
                session.splits.train,
                session.collate,
                self.plan.task,
                epochs=settings.epochs,
                lr=settings.lr,
                batch_size=settings.batch_size or train.batch_size,
                seed=train.seed,
                device=train.device,
                say=session.say,
            )
            model, io = self.graph(tuned)
            inputs = self.plan.backbone.example_inputs(session.built, 2)
            exporter.export(self.plan.backbone.export_form(model, inputs, io), inputs, io, path, options)
            return info

        return fine_tune_and_export

    def metadata(self) -> dict[str, str]:
        """Labels, task and preprocessing, as JSON strings to embed in deployed files."""
        import json

        from adapt import __version__

        meta = {
            "adapt.labels": json.dumps(self.session.label_names),
            "adapt.task": self.session.config.task,
            "adapt.version": __version__,
        }
        spec = self.staging / PREPROCESS_FILE
        if spec.exists():
            meta["adapt.preprocess"] = spec.read_text(encoding="utf-8")
        return meta

    def verify(self, exporter: Any, form: Form) -> None:
        """Test metrics, parity with the merged model and latency of one form. An exact
        form must match within ``export.parity_tolerance``; every form must hold finite logits."""
        from adapt.errors import ExportError
        from adapt.parity import compare, report_entry, verdict

        done = self.run_file(exporter, form.path, self.test_batches, finals=True)
        metrics, logits, predictions, finals = done.metrics, done.logits, done.predictions, done.finals
        task = self.plan.task
        parity = compare(
            self.merged.logits, logits, self.merged.predictions, predictions, task.agreement, task.agreement_name
        )
        bound = self.cfg.parity_tolerance if form.exact else None
        problem = verdict(parity, bound, reference="the merged model", candidate=form.path.name)
        self.new["metrics"][form.name] = {k: round(v, 6) if math.isfinite(v) else v for k, v in metrics.items()}
        self.new["parity"][form.name] = report_entry(parity, bound, verified=not problem)
        if problem:
            owner = self.plan.owners.get(f"exporter {exporter.name}", "its plugin")
            raise ExportError(
                f"{form.path.name} (exporter {exporter.name!r}, {owner}) does not reproduce the merged model: "
                f"{problem}",
                hint=f"the new export is kept in {REJECTED_DIR}/ for inspection and the previous export/ is "
                "untouched; raise export.parity_tolerance only if that difference is acceptable",
            )
        path, threads = form.path, self.threads
        self.to_time(form.name, LazyRunner(lambda: exporter.load(path, threads)))
        self.task_check(exporter, form)
        if self.final_names:
            self.verify_final_outputs(exporter, form, finals)

    def verify_final_outputs(self, exporter: Any, form: Form, predictions: list[Any] | None) -> None:
        """A task whose graph ends in final outputs (object-detection: boxes after NMS): the
        file's own final outputs on the test split (``predictions``, from the pass that
        scored it; None without the exporter's ``load_outputs``) against the merged model's
        predictions, by the task's ``agreement``; an exact form must reach
        :data:`MIN_FINAL_AGREEMENT` (or the task's ``min_agreement``)."""
        from adapt.errors import ExportError

        task = self.plan.task
        name = task.agreement_name
        if predictions is None:
            self.new.setdefault("export_notes", []).append(
                f"exporter {exporter.name!r} has no load_outputs, so the final outputs of {form.path.name} were not "
                f"compared ({name})"
            )
            return
        share = float(task.agreement(self.merged.predictions, predictions))
        least = MIN_FINAL_AGREEMENT if task.min_agreement is None else task.min_agreement
        self.new["parity"][form.name][name] = round(share, 6)
        if form.exact and not share >= least:
            self.new["parity"][form.name]["verified"] = False
            raise ExportError(
                f"the final outputs of {form.path.name} (exporter {exporter.name!r}) differ from the merged model's: "
                f"{name} {share:.6f} < {least}",
                hint=f"the new export is kept in {REJECTED_DIR}/ for inspection and the previous export/ is "
                "untouched; the post-processing inside the graph does not match the task's decoding",
            )

    def task_check(self, exporter: Any, form: Form) -> None:
        """The task's own check of the file (``check_export``: text-generation continues the test
        prompts through the file's KV cache); a problem fails an exact form."""
        from adapt.errors import ExportError
        from adapt.interfaces import ExportCheck

        session = self.session
        length = self.plan.backbone.sequence_length(session.built, self.plan.backbone_options)
        check = ExportCheck(
            form.path,
            form.exact,
            self.merged_model,
            session.splits.test,
            session.built.preprocessor,
            length,
            self.check_memo,
        )
        verdict = self.plan.task.check_export(check)
        if verdict is None:
            return
        self.new["parity"][form.name].update(verdict.parity)
        self.new["latency_ms"][form.name].update(verdict.latency)
        self.new["latency_ms"]["pytorch"].update(verdict.reference_latency)
        if verdict.samples:
            self.new.setdefault("samples", {})[form.name] = [dict(s) for s in verdict.samples]
        if form.exact and verdict.problem:
            self.new["parity"][form.name]["verified"] = False
            raise ExportError(
                f"{form.path.name} (exporter {exporter.name!r}) {verdict.problem}",
                hint=f"the new export is kept in {REJECTED_DIR}/ for inspection and the previous export/ is untouched"
                + (f"; {verdict.hint}" if verdict.hint else ""),
            )


def _short(metrics: dict[str, float], primary: str) -> str:
    value = metrics.get(primary)
    return f"{primary} {value:.4f}" if isinstance(value, float) else ""
