"""``web/`` beside every export and bundle: a static page that runs the deployable file with
onnxruntime-web in a browser, with predict.py's pre- and post-processing redone in
JavaScript (core/web/adapt-web.js), and test examples with the outputs ONNX Runtime gave
in Python, which the page compares with its own (adapt.web_check opens it in Chromium).

onnxruntime-web comes from the npm registry (``npm pack``, once per machine, into
adapt's cache) and is copied into the export, so the page needs no CDN. Where npm is
missing, the page is written without it and the report says how to add it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Sequence

WEB_DIR = "web"
#: The onnxruntime-web release vendored into exports (the npm registry's).
ORT_WEB_VERSION = "1.31.1"
#: The files of it the page loads: the WebAssembly build's module, its loader and binary.
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: A folder holding RUNTIME_FILES, used instead of the npm registry (an offline machine).
RUNTIME_ENV = "ADAPT_ONNXRUNTIME_WEB"
PAGE_FILES = ("index.html", "adapt-web.js")
#: Test examples recorded for the page to check (per task).
EXAMPLES = 8
#: What the page can prepare and what it can do after the graph.
WEB_INPUTS = ("text", "tokens", "image")
WEB_POSTPROCESS = ("softmax-top-k", "sigmoid-threshold", "token-tags")


def cache_folder() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "adapt" / f"onnxruntime-web-{ORT_WEB_VERSION}"


def runtime() -> tuple[Path | None, str]:
    """The folder with onnxruntime-web's files, fetched from the npm registry the first time;
    (None, why) where it cannot be had."""
    given = os.environ.get(RUNTIME_ENV)
    if given:
        folder = Path(given)
        missing = [f for f in RUNTIME_FILES if not (folder / f).is_file()]
        if missing:
            return None, f"{RUNTIME_ENV}={given} lacks {', '.join(missing)} (onnxruntime-web's dist/ folder)"
        return folder, ""
    cache = cache_folder()
    if all((cache / f).is_file() for f in RUNTIME_FILES):
        return cache, ""
    npm = shutil.which("npm")
    if npm is None:
        return None, (
            f"npm is not installed, so web/ holds no onnxruntime-web: install npm (or set {RUNTIME_ENV} to a folder "
            f"with {', '.join(RUNTIME_FILES)}) and export again"
        )
    try:
        _fetch(npm, cache)
    except (OSError, subprocess.SubprocessError, tarfile.TarError) as exc:
        return None, f"npm pack onnxruntime-web@{ORT_WEB_VERSION} failed ({exc}); web/ holds no onnxruntime-web"
    return cache, ""


def _fetch(npm: str, cache: Path) -> None:
    """onnxruntime-web's tarball from the npm registry; only RUNTIME_FILES are taken out of it."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--silent"],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=600,
        )
        tarball = next(Path(tmp).glob("*.tgz"))
        staging = Path(tmp) / "files"
        staging.mkdir()
        with tarfile.open(tarball) as archive:
            for name in RUNTIME_FILES:
                member = archive.extractfile(f"package/dist/{name}")
                if member is None:
                    raise tarfile.TarError(f"the package has no dist/{name}")
                (staging / name).write_bytes(member.read())
        cache.parent.mkdir(parents=True, exist_ok=True)
        if cache.is_symlink() or (cache.exists() and not cache.is_dir()):
            raise OSError(f"{cache} is not adapt's cache folder (a link or a file); remove it or set {RUNTIME_ENV}")
        if cache.exists():  # adapt's own cache, incomplete (a fetch that was cut short)
            shutil.rmtree(cache)
        shutil.move(str(staging), cache)


def write_web(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """``folder/web/``: the page, the script, onnxruntime-web and ``manifest.json`` (the model
    and each task's preprocessing, adapter and examples, paths relative to web/). Returns the
    report's ``web`` entry."""
    from adapt.rundir import atomic_write_json

    web = folder / WEB_DIR
    web.mkdir(exist_ok=True)
    page = Path(__file__).parent / "web"
    for name in PAGE_FILES:
        shutil.copyfile(page / name, web / name)
    found, note = runtime()
    entry: dict[str, Any] = {
        "page": f"{WEB_DIR}/index.html",
        "model": manifest["model"].removeprefix("../"),
        "examples": sum(len(t["examples"]) for t in manifest["tasks"].values()),
    }
    if found is not None:
        (web / "ort").mkdir(exist_ok=True)
        for name in RUNTIME_FILES:
            shutil.copyfile(found / name, web / "ort" / name)
        entry["runtime"] = f"onnxruntime-web {ORT_WEB_VERSION}"
    else:
        entry["note"] = note
    atomic_write_json(web / "manifest.json", manifest)
    return entry


def supported(spec: dict[str, Any]) -> bool:
    """Whether the page prepares this preprocess.json's inputs and does its post-processing."""
    from adapt.onnx_predict import postprocess_of

    return spec.get("kind") in WEB_INPUTS and postprocess_of(spec)["kind"] in WEB_POSTPROCESS


def page_task(
    session: Any, spec: dict[str, Any], spec_folder: Path, web: Path, sources: Sequence[str], output: str
) -> dict[str, Any] | None:
    """One task's entry of web/manifest.json: its preprocessing, its tokenizer's path, its
    inputs and output, and ``sources`` (raw inputs; images relative to ``web``) with what
    ONNX Runtime gives here, through predict.py's own code. None: the page cannot run it."""
    from adapt.onnx_predict import finish_row, input_reader, postprocess_of, run_named

    if not supported(spec):
        return None
    post = postprocess_of(spec)
    prepare = input_reader(session, spec, spec_folder)
    examples = []
    for source in sources:
        feed, context = prepare(str(web / source) if spec["kind"] == "image" else source)
        outputs = run_named(session, feed)
        row = finish_row(source, outputs, {**spec, "postprocess": post}, {**context, "folder": spec_folder}, {})
        label = row.get("label", row.get("labels"))
        if post["kind"] == "token-tags":
            label = [t["tag"] for t in row["tags"]]
        examples.append({"input": source, "logits": outputs[output].tolist(), "label": label})
    tokenizer = spec.get("tokenizer")
    return {
        "spec": {**spec, "postprocess": post},
        "tokenizer": os.path.relpath(spec_folder / tokenizer, web).replace(os.sep, "/") if tokenizer else None,
        "inputs": [i.name for i in session.get_inputs()],
        "output": output,
        "adapter": None,
        "examples": examples,
    }


def example_inputs(task: Any, examples: Sequence[Any], web: Path, images: bool, folder: str = "examples") -> list[str]:
    """Raw inputs for up to :data:`EXAMPLES` test examples (``images``: written into
    ``web/<folder>/``, one folder per task of a bundle, and given relative to web/)."""
    found = []
    for index, example in enumerate(examples[:EXAMPLES]):
        source = task.input_of(example, web / folder, index)
        if source is not None:
            found.append(f"{folder}/{source}" if images else source)
    return found


def rgb_picture(image: Any) -> Any:
    """An example's image (a path, a PIL image, or anything numpy reads as pixels) as an RGB PIL image."""
    import numpy as np
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array.astype(np.uint8)).convert("RGB")


def save_png(image: Any, folder: Path, name: str) -> str:
    """An example's image as an RGB PNG in ``folder``; its name."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb_picture(image).save(folder / name)
    return name
