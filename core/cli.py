"""The ``adapt`` command line.

:func:`make_cli` builds a fresh click group around a fresh host every time
(plugins may add subcommands through ``adapt_register_commands``). User errors
(:class:`adapt.errors.AdaptError`) print one message and exit with code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from adapt import __version__
from adapt.errors import AdaptError, RunDirError
from adapt.host import AUTOLOAD_ENV, LIFECYCLE_HOOKS, Host, make_host

EXIT_USER_ERROR = 2


#: How the operating system words "no room for this write"; libraries that write in
#: C or Rust (safetensors, ONNX, ONNX Runtime) pass these on as text, not as an OSError.
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large")


def disk_full(exc: BaseException) -> AdaptError | None:
    """One message for a write the disk refused, wherever it happened (ours, a
    library's, a plugin's); None when the error has nothing to do with space."""
    from adapt.rundir import DISK_FULL, DISK_FULL_HINT, NO_SPACE

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = next((t for t in DISK_FULL_TEXTS if t in str(current)), None)
        errno, strerror = (current.errno, current.strerror) if isinstance(current, OSError) else (None, None)
        if errno in DISK_FULL or text:
            no_space = text in DISK_FULL_TEXTS[:2] if text else errno in NO_SPACE
            reason = "no space left on the device" if no_space else f"the system refused a write ({text or strerror})"
            where = getattr(current, "filename", None)
            return AdaptError(
                f"{reason}{f' while writing {where}' if where else ''}; what adapt had finished before is intact "
                "(every file is written beside its place and renamed)",
                hint=DISK_FULL_HINT,
            )
        current = current.__cause__ or current.__context__
    return None


class AdaptGroup(click.Group):
    """A click group that turns AdaptError (and a full disk) into one clean message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:
            # A RunDirError already names the file; any other error caused by a full disk is
            # reported as that, since a library's wording of it helps nobody.
            error = (
                exc
                if isinstance(exc, RunDirError)
                else disk_full(exc) or (exc if isinstance(exc, AdaptError) else None)
            )
            if error is None or (ctx.obj and ctx.obj.get("debug")):
                raise
            report_error(error)
            ctx.exit(error.exit_code)


def report_error(exc: AdaptError) -> None:
    click.secho(f"error: {exc.message}", fg="red", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Plain aligned columns: readable in a terminal and in a log file."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plugin_rows(host: Host) -> list[dict[str, str]]:
    """One row per registered object (and one per plugin that failed to load)."""
    rows = []
    for registry in host.registries().values():
        for name in registry.names():
            plugin = host.plugins.get(registry.owner(name))
            obj = registry.first(name)
            rows.append(
                {
                    "name": name,
                    "kind": registry.kind,
                    "plugin": registry.owner(name),
                    "package": plugin.package if plugin else "",
                    "version": plugin.version if plugin else "",
                    "families": _families(obj),
                    "fields": _fields(obj),
                }
            )
        for name, owners in registry.clashes.items():
            for owner in owners[1:]:
                plugin = host.plugins.get(owner)
                rows.append(
                    {
                        "name": name,
                        "kind": f"{registry.kind} clash",
                        "plugin": owner,
                        "package": plugin.package if plugin else "",
                        "version": plugin.version if plugin else "",
                        "families": "",
                        "error": registry.clash_error(name).message,
                    }
                )
    registering = {row["plugin"] for row in rows}
    for name, info in host.plugins.items():
        if info.error:
            rows.append(
                {
                    "name": name,
                    "kind": "error",
                    "plugin": name,
                    "package": info.package,
                    "version": info.version,
                    "families": "",
                    "error": info.error,
                }
            )
        elif name not in registering and (
            hooks := _hooks_of(host, name, LIFECYCLE_HOOKS + ("adapt_register_commands",))
        ):
            rows.append(
                {
                    "name": ", ".join(hooks),
                    "kind": "hooks",
                    "plugin": name,
                    "package": info.package,
                    "version": info.version,
                    "families": "",
                }
            )
    return rows


def _families(obj: Any) -> str:
    """Backbones: the target families their models have; methods: those they adapt by default."""
    from adapt.interfaces import Backbone, Method

    if isinstance(obj, Backbone):
        return ", ".join(obj.families)
    if isinstance(obj, Method):
        return ", ".join(obj.default_families or ())
    return ""


def _fields(obj: Any) -> str:
    """Tasks: the example fields they need; data sources: those they give."""
    from adapt.interfaces import DataSource, Task

    return ", ".join(obj.fields) if isinstance(obj, (Task, DataSource)) else ""


def _hooks_of(host: Host, plugin_name: str, among: tuple[str, ...]) -> list[str]:
    """The hooks of ``among`` that a plugin implements (a tracker's lifecycle hooks)."""
    plugin = host.pm.get_plugin(plugin_name)
    return (
        sorted(c.name for c in host.pm.get_hookcallers(plugin) or [] if c.name in among) if plugin is not None else []
    )


def make_cli(host_factory: Callable[[], Host] = make_host) -> click.Group:
    """Build the ``adapt`` click group around a fresh host."""
    host = host_factory()

    @click.group(cls=AdaptGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, "--version", prog_name="adapt", message="%(prog)s %(version)s")
    @click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
    @click.pass_context
    def cli(ctx: click.Context, debug: bool) -> None:
        """adapt: fine-tune a pretrained model with few parameters (freeze, LoRA,
        adapters), merge the adapter into the weights, and export it for fast
        CPU and mobile inference.

        \b
        Start here:
          adapt init            write a commented starter config (adapt.yaml)
          adapt run adapt.yaml  run the whole job; the run directory holds the report
          adapt plugins         list backbones, methods, data sources, tasks, exporters

        Errors exit with code 2 and one message; --debug shows the traceback.
        """
        ctx.ensure_object(dict)
        ctx.obj.update(debug=debug, host=host)
        for name, error in host.broken.items():
            click.secho(f"warning: plugin {name!r} failed to load and is skipped: {error}", fg="yellow", err=True)

    _add_plugin_commands(cli, host)
    _add_run_command(cli, host)
    _add_run_dir_commands(cli, host)
    host.call("adapt_register_commands", cli=cli)
    return cli


def _debugging() -> bool:
    """Whether the command line asked for --debug."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("debug"))


def _add_plugin_commands(cli: click.Group, host: Host) -> None:
    """`adapt plugins` and `adapt init`."""

    @cli.command("plugins")
    @click.option(
        "--verbose", "-v", is_flag=True, help="Also show the hooks each plugin implements and where it was loaded from."
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def plugins_command(verbose: bool, as_json: bool) -> None:
        """List every registered backbone, method, exporter, data source and task."""
        rows = plugin_rows(host)
        if verbose or as_json:
            for row in rows:
                hooks = [h.name for h in host.pm.get_hookcallers(host.pm.get_plugin(row["plugin"]) or object()) or []]
                row["hooks"] = ", ".join(sorted(hooks))
                info = host.plugins.get(row["plugin"])
                row["module"] = info.module if info else ""
                row["from"] = info.path if info else ""
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        columns = ["name", "kind", "plugin", "package", "version"] + (
            ["families", "fields", "hooks", "module", "from"] if verbose else []
        )
        click.echo(format_table([[r.get(c, "") for c in columns] for r in rows], [c.upper() for c in columns]))
        if host.broken:
            click.echo(
                f"\n{len(host.broken)} plugin(s) failed to load; see the warnings above"
                + ("." if _debugging() else " (adapt --debug plugins shows their tracebacks).")
            )
            if _debugging():
                for name, info in host.plugins.items():
                    if info.error:
                        click.echo(f"\n--- {name} ({info.module}) ---\n{info.traceback or info.error}", err=True)
        for row in rows:
            if row["kind"].endswith("clash"):
                click.echo(f"\nclash: {row['error']}")
        if not verbose:
            click.echo(f"\nThird-party plugins are off when {AUTOLOAD_ENV}=1.")

    @cli.command("init")
    @click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="adapt.yaml")
    @click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
    def init_command(path: Path, force: bool) -> None:
        """Write a commented starter config to PATH (default: adapt.yaml)."""
        from adapt.config import starter_text
        from adapt.rundir import atomic_write_text

        if path.exists() and not force:
            raise AdaptError(f"{path} already exists", hint="pass --force to overwrite it, or give another path")
        atomic_write_text(path, starter_text())
        click.echo(f"wrote {path}; edit it, then run: adapt run {path}")


def _add_run_command(cli: click.Group, host: Host) -> None:
    """`adapt run`."""

    @cli.command("run")
    @click.argument("config", type=click.Path(dir_okay=False, path_type=Path), required=False)
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY.PATH=VALUE",
        help="Override a config key, e.g. --set train.epochs=1 (repeatable).",
    )
    @click.option(
        "--overwrite",
        is_flag=True,
        help="Replace the run of the same name: once the new run's data and model have loaded, delete what adapt "
        "wrote there (other files are kept).",
    )
    @click.option(
        "--resume",
        is_flag=True,
        help="Continue the run directory of the same name from its last checkpoint (the config must be unchanged).",
    )
    @click.option(
        "--dry-run",
        is_flag=True,
        help="Validate the config against the installed plugins, print it resolved, build the model and resolve the "
        "method's targets on it (listing what it trains), and stop. Writes nothing.",
    )
    def run_command(
        config: Path | None, overrides: tuple[str, ...], overwrite: bool, resume: bool, dry_run: bool
    ) -> None:
        """Run the job described by CONFIG (default: the built-in starter config,
        see `adapt init`): load, adapt, train, merge and export, writing
        everything to <output_dir>/<name>."""
        from adapt.config import load_config
        from adapt.plan import make_plan

        plan = make_plan(load_config(config, overrides), host)
        if dry_run:
            import yaml

            from adapt.pipeline import check_targets
            from adapt.targets import describe_names

            click.echo(yaml.safe_dump(plan.config.model_dump(mode="json"), sort_keys=False).rstrip())
            modules = list(dict.fromkeys(name.rpartition(".")[0] for name in check_targets(plan)))
            click.echo(
                f"{plan.config.method.name} trains {len(modules)} module(s): {describe_names(modules)}", err=True
            )
            click.echo("config is valid; the method's targets were resolved against the model.", err=True)
            return
        if overwrite and resume:
            raise AdaptError("--overwrite and --resume contradict each other", hint="pick one")
        from adapt.pipeline import run_pipeline

        run_pipeline(plan, host, overwrite=overwrite, resume=resume)


def _add_run_dir_commands(cli: click.Group, host: Host) -> None:
    """The commands that work on a run directory: train, eval, merge, export, bench, predict."""
    run_dir_argument = click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))

    @cli.command("train")
    @run_dir_argument
    def train_command(run_dir: Path) -> None:
        """Train RUN_DIR from its saved config, continuing from its last checkpoint
        if it has one (after a crash or Ctrl-C), then evaluate and merge."""
        from adapt.pipeline import train_command as train

        train(run_dir, host)

    @cli.command("eval")
    @run_dir_argument
    @click.option(
        "--split",
        type=click.Choice(["train", "val", "test"]),
        default="test",
        show_default=True,
        help="Which split to evaluate.",
    )
    def eval_command(run_dir: Path, split: str) -> None:
        """Evaluate the trained (adapted) model of RUN_DIR; prints the metrics as JSON."""
        from adapt.pipeline import eval_command as evaluate

        click.echo(json.dumps(evaluate(run_dir, host, split), indent=2))

    @cli.command("merge")
    @run_dir_argument
    def merge_command(run_dir: Path) -> None:
        """Fold RUN_DIR's adapter into the backbone, check the merged model against
        the adapted one on the test split, and write merged/ and the report."""
        from adapt.pipeline import merge_command as merge

        merge(run_dir, host)
        click.echo(f"report: {run_dir / 'report.md'}")

    @cli.command("export")
    @run_dir_argument
    def export_command(run_dir: Path) -> None:
        """Merge RUN_DIR's adapter again and export it with the run's export
        settings: ONNX, parity, optimisation, int8 behind the accuracy gate, .ort."""
        from adapt.pipeline import export_command as export

        export(run_dir, host)
        click.echo(f"report: {run_dir / 'report.md'}")

    _add_bench_command(cli, host, run_dir_argument)
    _add_predict_command(cli, host, run_dir_argument)
    _add_bundle_command(cli, host)
    _add_push_command(cli)
    _add_web_check_command(cli)


def _add_bundle_command(cli: click.Group, host: Host) -> None:
    """`adapt bundle`: several runs on one checkpoint as one graph and one adapter each."""

    @cli.command("bundle")
    @click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
    @click.option(
        "--out",
        required=True,
        type=click.Path(path_type=Path),
        help="the bundle's folder (new, empty, or a bundle adapt wrote, replaced once the new one is verified).",
    )
    def bundle_command(run_dirs: tuple[Path, ...], out: Path) -> None:
        """Bundle RUN_DIRS (LoRA runs on one checkpoint, any tasks and heads) into one base ONNX
        graph, whose low-rank factors and heads are inputs, and one ONNX Runtime adapter per run
        (adapters/<run name>.onnx_adapter), switched at run time. Each run is checked on its own
        test split against its merged model before the bundle is written; report.md says how it
        did, the sizes, and the latency cost of unmerged LoRA. Predict with
        `adapt predict OUT --task RUN_NAME INPUTS...` or OUT/predict.py."""
        from adapt.bundle import bundle_command as bundle

        bundle(list(run_dirs), out, host, click.echo)
        click.echo(f"report: {out / 'report.md'}")


def _add_push_command(cli: click.Group) -> None:
    """`adapt push`: a run's folder to the Hugging Face Hub."""

    @cli.command("push")
    @click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
    @click.option("--repo", required=True, help="the Hub repository, org/name (created if it is not there).")
    @click.option(
        "--what",
        type=click.Choice(["adapter", "merged", "export"]),
        default="adapter",
        show_default=True,
        help="which folder: the adapter (PEFT's layout), the merged model, or the export.",
    )
    @click.option("--private", is_flag=True, help="create the repository private.")
    def push_command(run_dir: Path, repo: str, what: str, private: bool) -> None:
        """Upload RUN_DIR's adapter/, merged/ or export/ to the Hugging Face Hub as one commit
        (huggingface_hub; log in with `huggingface-cli login` or set HF_TOKEN). adapt's lock and
        temporary files stay home."""
        from adapt.push import push

        click.echo(json.dumps(push(run_dir, repo, what, private)))


def _add_web_check_command(cli: click.Group) -> None:
    """`adapt web-check`: an export's browser page in headless Chromium."""

    @cli.command("web-check")
    @click.argument("target", type=click.Path(file_okay=False, exists=True, path_type=Path))
    def web_check_command(target: Path) -> None:
        """Open TARGET's browser page (a run directory's export/web/ or a bundle's web/) in
        headless Chromium: it runs the recorded test examples with onnxruntime-web, and its
        outputs must match ONNX Runtime's in Python to 1e-4 with the same labels. Where the
        browser cannot run the deployable file, the other exported files are tried and one
        that runs is recommended. The result goes into TARGET's report.json (web_check)."""
        from adapt.web_check import web_check

        found = web_check(target)
        click.echo(json.dumps(found, indent=1))
        if not found["passed"]:
            raise AdaptError(
                f"the browser did not reproduce {found['file']}: {found['result']}",
                hint=f"deploy {found['recommended']} to the web instead"
                if "recommended" in found
                else "see web_check in report.json",
            )


def _options(options: Sequence[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """Apply click options in the order listed (the order ``--help`` shows)."""

    def apply(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


#: `adapt bench`'s options.
BENCH_OPTIONS = [
    click.option(
        "--threads",
        type=click.IntRange(1),
        default=None,
        help="CPU threads for PyTorch and ONNX Runtime alike (default: torch's).",
    ),
    click.option(
        "--rounds",
        type=click.IntRange(1),
        default=5,
        show_default=True,
        help="rounds in which the contenders take turns.",
    ),
    click.option(
        "--runs", type=click.IntRange(1), default=10, show_default=True, help="timed calls per contender per round."
    ),
    click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True, help="examples per call."),
    click.option(
        "--seq-len",
        type=click.IntRange(1),
        default=None,
        help="text: tokens per example (default: the run's max_length).",
    ),
    click.option(
        "--image-size", type=click.IntRange(8), default=None, help="images: side in pixels (default: the run's)."
    ),
    click.option("--save", is_flag=True, help="also write the figures to report.json (`bench`)."),
]


def _add_bench_command(cli: click.Group, host: Host, run_dir_argument: Callable[[Any], Any]) -> None:
    """`adapt bench`: time the run's model and files here and now, taking turns."""

    @cli.command("bench")
    @run_dir_argument
    @_options(BENCH_OPTIONS)
    def bench_command(run_dir: Path, save: bool, **options: Any) -> None:
        """Time RUN_DIR's model here and now: PyTorch eager (the merged model) and every
        exported ONNX file take turns, round by round, on the same inputs and threads.
        Prints a table (median ms, the spread of the rounds, each file's ratio to eager
        with its range) and, last, one JSON line with the figures and the machine."""
        from adapt.bench import bench_run, bench_table
        from adapt.report import read_report

        report = read_report(run_dir)  # a damaged report.json is named
        if (report.get("postprocess") or {}).get("kind") == "generation":
            _generation_figures(run_dir, report)
            return
        result = bench_run(run_dir, host, **options)
        click.echo(bench_table(result))
        if "note" in result:
            click.echo(f"note: {result['note']}")
        if save:
            _save_bench(run_dir, result)
        figures: dict[str, Any] = {
            "ms": result["ms"],
            "to_pytorch": {k: v["ratio"] for k, v in result.get("to_pytorch", {}).items()},
            **{k: result[k] for k in ("batch_size", "seq_len", "image_size") if k in result},
            "threads": result["machine"]["threads"],
        }
        click.echo(json.dumps(figures))


def _generation_figures(run_dir: Path, report: dict[str, Any]) -> None:
    """A generator's speed is generation, measured by the export: its figures, not a new timing."""
    from adapt.report import latency_table

    if not report.get("latency_ms"):
        raise AdaptError(f"{run_dir} has no latency figures yet", hint=f"export it first: adapt export {run_dir}")
    click.echo(latency_table(report))
    click.echo(
        "note: a generator: these are the export's figures (new tokens per second of greedy generation "
        "through the KV cache, timed taking turns); adapt bench does not time generation again: "
        "bench/generation.py does, against transformers and Optimum"
    )


def _save_bench(run_dir: Path, result: dict[str, Any]) -> None:
    """`adapt bench --save`: the figures into report.json (the latest replaces an earlier one)."""
    from adapt.report import read_report, write_report
    from adapt.rundir import hold_lock

    with hold_lock(run_dir):
        report = read_report(run_dir)
        report["bench"] = result
        write_report(run_dir, report)
    click.echo(f"saved to {run_dir / 'report.json'} (bench)")


#: `adapt predict`'s options.
PREDICT_OPTIONS = [
    click.option(
        "--task",
        default=None,
        help="An adapter bundle (adapt bundle) in place of RUN_DIR: the task (run name) whose adapter to run.",
    ),
    click.option(
        "--onnx",
        "use_onnx",
        is_flag=True,
        help="Run the exported deployable file with ONNX Runtime alone (no PyTorch), as on a device.",
    ),
    click.option(
        "--model",
        "model_file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="With --onnx: this exported file instead of the deployable one.",
    ),
    click.option(
        "--max-new-tokens",
        type=click.IntRange(1),
        default=64,
        show_default=True,
        help="generating runs: most tokens to add to each prompt.",
    ),
    click.option(
        "--temperature",
        type=click.FloatRange(0),
        default=0.0,
        show_default=True,
        help="generating runs: 0 is greedy; higher samples more freely.",
    ),
    click.option(
        "--top-k",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        help="generating runs: sample among the k most likely tokens (0: all).",
    ),
    click.option(
        "--top-p",
        type=click.FloatRange(0, 1, min_open=True),
        default=1.0,
        show_default=True,
        help="generating runs: sample within this much probability mass.",
    ),
    click.option(
        "--seed", type=int, default=0, show_default=True, help="generating runs: random seed of the sampling."
    ),
    click.option("--stop", multiple=True, help="generating runs: cut the generated text at this string (repeatable)."),
    click.option(
        "--min-score",
        type=click.FloatRange(0, 1),
        default=0.3,
        show_default=True,
        help="detectors (boxes): print detections scoring at least this.",
    ),
    click.option(
        "--draw",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="detectors (boxes): write the image with its boxes to this PNG (several images: one file each, named "
        "after them).",
    ),
]


def _add_predict_command(cli: click.Group, host: Host, run_dir_argument: Callable[[Any], Any]) -> None:
    """`adapt predict`, with PyTorch or with ONNX Runtime alone."""

    @cli.command("predict")
    @run_dir_argument
    @click.argument("inputs", nargs=-1, required=True)
    @_options(PREDICT_OPTIONS)
    def predict_command(
        run_dir: Path, inputs: tuple[str, ...], use_onnx: bool, model_file: Path | None, **settings: Any
    ) -> None:
        """Predict with RUN_DIR's model for INPUTS, as the run's task reads and prints them
        (its declared post-processing, the same as the exported predict.py): labels for texts,
        sentences (split on spaces) or image paths, continuations of prompts, boxes in image
        paths, the nearest identities or documents, or next items for a history of item ids
        (comma-separated, oldest first); a task that declares none prints its model's named
        outputs. One JSON line each."""
        from adapt.onnx_predict import InputError, PredictError

        try:
            rows = _predict_rows(run_dir, host, inputs, use_onnx, model_file, settings)
        except InputError as exc:
            raise AdaptError(
                str(exc), hint="check the inputs: `adapt predict --help` says what each task takes"
            ) from None
        except PredictError as exc:
            raise AdaptError(
                str(exc), hint="give exported files of this run (--model), or export it again: adapt export RUN_DIR"
            ) from None
        for row in rows:
            click.echo(json.dumps(row))


def _predict_rows(
    run_dir: Path,
    host: Host,
    inputs: tuple[str, ...],
    use_onnx: bool,
    model_file: Path | None,
    settings: dict[str, Any],
) -> list[dict[str, Any]]:
    """`adapt predict`'s rows: from the exported file with ONNX Runtime alone, or from the
    run's PyTorch model. Both raise the standalone predictor's InputError / PredictError
    for a bad setting or input. A bundle's folder in place of ``run_dir`` runs its ``--task``."""
    from adapt.onnx_predict import MANIFEST, InputError

    task = settings.pop("task", None)
    if (run_dir / MANIFEST).is_file():
        from adapt.onnx_predict import predict as predict_onnx

        return predict_onnx(run_dir, inputs, task=task, **settings)
    if task is not None:
        raise InputError(f"--task chooses a task of an adapter bundle, and {run_dir} is a run directory")
    if not use_onnx:
        from adapt.onnx_predict import check_settings
        from adapt.pipeline import predict_command as predict

        check_settings(settings)  # the ONNX path checks them itself, as the standalone predict.py does
        return predict(run_dir, host, inputs, settings)
    from adapt.onnx_predict import predict as predict_onnx
    from adapt.report import report_file, require_report

    deployable = model_file or report_file(run_dir, require_report(run_dir), "deployable")
    if deployable is None:
        raise AdaptError(
            f"{run_dir} has no exported model (report.json names no deployable file)",
            hint=f"export it first: adapt export {run_dir}",
        )
    return predict_onnx(deployable, inputs, **settings)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli = make_cli()
    except AdaptError as exc:  # a plugin broke the host before any command ran
        report_error(exc)
        sys.exit(EXIT_USER_ERROR)
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="adapt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(
            "interrupted; the run directory keeps its last checkpoint: continue with `adapt run CONFIG --resume` or "
            "`adapt train RUN_DIR`",
            err=True,
        )
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
