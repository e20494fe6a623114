"""Predictions from an exported ONNX file with ONNX Runtime alone.

Standalone on purpose: it imports only onnxruntime, numpy, Pillow and
tokenizers (never torch, transformers or adapt), and the export stage copies it
into every export directory as ``predict.py``, so the folder is all a device needs:

    python predict.py model.int8.onnx "some text" "another text"
    python predict.py model.onnx photo1.jpg photo2.jpg
    python predict.py model.onnx "a prompt" --max-new-tokens 64 --temperature 0.7 --top-p 0.9

A text-generation export is a decoder with a key/value cache (``past_key_values.*``
in, ``present.*`` out): :func:`generate_ids` runs its loop, the prompt once and
then one token per step.

``preprocess.json`` beside the model (written by the export stage from the
backbone) says how raw inputs become the graph's inputs: the ``tokenizer.json``
for text, or resize / centre-crop / normalise for images (timm's eval
transform, redone with PIL and numpy), and holds the label names.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

PREPROCESS_FILE = "preprocess.json"
RESAMPLING = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}
#: What preprocess.json must hold, by kind of input.
REQUIRED_KEYS = {
    "image": ("kind", "labels", "input_size", "mean", "std"),
    "detection": ("kind", "labels", "input_size", "mean", "std"),
    "text": ("kind", "labels", "tokenizer", "max_length"),
    "tokens": ("kind", "labels", "tokenizer", "max_length"),
    "generation": ("kind", "tokenizer", "max_length", "eos_id"),
    "items": ("kind", "buckets"),  # recommendation's item-table tower: predictions read the index, not the model
}
#: What predict does after the graph, by the kind the task declares (its ``postprocess``; adapt.interfaces).
POSTPROCESS_KINDS = (
    "softmax-top-k",
    "sigmoid-threshold",
    "token-tags",
    "boxes",
    "nearest-neighbours",
    "recommend",
    "generation",
    "outputs",
)
#: object-detection settings and their defaults: detections below min_score are not printed.
DETECTION: dict[str, Any] = {"min_score": 0.3, "draw": None}
#: Generation settings and their defaults (greedy, 64 new tokens).
SAMPLING = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0, "stop": ()}


class PredictError(Exception):
    """A problem with the model file, preprocess.json or an input: one line for the user."""


class InputError(PredictError):
    """A problem with an input itself (the files are fine): the message says what to give."""


def _softmax(logits: Any) -> Any:
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def prepare_image(path: Any, spec: dict[str, Any]) -> Any:
    """timm's eval transform: resize the short side to size / crop_pct, centre-crop, normalise
    (``path``: an image file, or an image already opened)."""
    import numpy as np

    _, height, width = spec["input_size"]
    scale = int(round(height / spec.get("crop_pct", 1.0)))
    image = open_image(str(path)) if isinstance(path, (str, Path)) else path
    w, h = image.size
    if w <= h:
        size = (scale, max(1, int(round(h * scale / w))))
    else:
        size = (max(1, int(round(w * scale / h))), scale)
    image = image.resize(size, RESAMPLING.get(spec.get("interpolation", "bicubic"), 3))
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32) / 255.0
    normalised = (array - np.array(spec["mean"], dtype=np.float32)) / np.array(spec["std"], dtype=np.float32)
    return normalised.transpose(2, 0, 1)[None]


def stretch_image(image: Any, spec: dict[str, Any]) -> Any:
    """object-detection: a PIL image resized whole to the input size (no crop, so no box is
    cut) and normalised, as a (3, height, width) float32 array."""
    import numpy as np

    _, height, width = spec["input_size"]
    resized = image.convert("RGB").resize((width, height), RESAMPLING.get(spec.get("interpolation", "bilinear"), 2))
    array = np.asarray(resized, dtype=np.float32) / 255.0
    normalised = (array - np.array(spec["mean"], dtype=np.float32)) / np.array(spec["std"], dtype=np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def open_image(path: str) -> Any:
    """The image at ``path`` in RGB, or PredictError saying why it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"input image not found: {path}") from None
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise InputError(
            f"{path} is not an image this model can read ({type(exc).__name__}: {exc}): give image files (JPEG, PNG, "
            "...)"
        ) from None


def detection_rows(
    outputs: dict[str, Any], spec: dict[str, Any], size: Sequence[int], min_score: float
) -> list[dict[str, Any]]:
    """One image's final detections (the graph's ``boxes`` in input pixels, ``scores``,
    ``labels``) at ``min_score`` or above, best first, boxes in the original image's pixels."""
    _, height, width = spec["input_size"]
    scale = (size[0] / width, size[1] / height, size[0] / width, size[1] / height)
    names = spec["labels"]
    return [
        {
            "label": names[int(label)],
            "score": round(float(score), 4),
            "box": [round(float(v) * f, 1) for v, f in zip(box, scale)],
        }
        for box, score, label in zip(outputs["boxes"], outputs["scores"], outputs["labels"])
        if score >= min_score
    ]


def draw_detections(
    image: Any, detections: Sequence[dict[str, Any]], out: Path | None, truth: Sequence[dict[str, Any]] = ()
) -> Any:
    """A copy of ``image`` with each detection's box and "label score" drawn on it (true
    boxes, if given, in green); written to ``out`` (PNG or JPEG, by its suffix) if given."""
    from PIL import ImageDraw

    canvas = image.convert("RGB").copy()
    pen = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 200))
    for found in truth:
        pen.rectangle(found["box"], outline=(40, 200, 60), width=width)
    for found in detections:
        x1, y1 = found["box"][:2]
        pen.rectangle(found["box"], outline=(230, 40, 40), width=width)
        pen.text((x1 + 2, max(0.0, y1 - 11)), f"{found['label']} {found['score']:.2f}", fill=(230, 40, 40))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out)
    return canvas


def next_token(logits: Any, rng: Any, temperature: float, top_k: int, top_p: float) -> int:
    """The next token from one position's logits: greedy at temperature 0, else sampled
    from the temperature-scaled distribution, cut to the ``top_k`` most likely tokens
    and to the smallest set holding ``top_p`` of the probability."""
    import numpy as np

    if temperature <= 0:
        return int(np.argmax(logits))
    probs = _softmax(np.asarray(logits, dtype=np.float64) / temperature)
    order = np.argsort(-probs)
    keep = order[:top_k] if top_k > 0 else order
    cumulative = np.cumsum(probs[keep])
    keep = keep[: int(np.searchsorted(cumulative, top_p) + 1)] if top_p < 1 else keep
    return int(rng.choice(keep, p=probs[keep] / probs[keep].sum()))


def empty_cache(shape: Sequence[Any], batch: int) -> Any:
    """A length-0 key/value cache for a graph input of shape (batch, heads, past, head_dim):
    fed so, a cached decoder reads its whole input as the prompt."""
    import numpy as np

    return np.zeros((batch, int(shape[1]), 0, int(shape[3])), dtype=np.float32)


#: The bounds of every setting predict takes: (lowest, highest, integer?).
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "max_new_tokens": (1, 100_000, True),
    "temperature": (0.0, 100.0, False),
    "top_k": (0, 1_000_000, True),
    "top_p": (1e-9, 1.0, False),
    "seed": (0, 2**32 - 1, True),
    "min_score": (0.0, 1.0, False),
}


def check_settings(settings: dict[str, Any]) -> None:
    """Every generation and detection setting finite and within :data:`BOUNDS` (the same
    check for ``adapt predict``, ``--onnx`` and the standalone predict.py); InputError else."""
    import math

    for key, (low, high, whole) in BOUNDS.items():
        value = settings.get(key)
        if value is None:
            continue
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        if not math.isfinite(number) or not low <= number <= high or (whole and number != int(number)):
            kind = "a whole number" if whole else "a number"
            raise InputError(f"--{key.replace('_', '-')} is {value!r}: give {kind} from {low:g} to {high:.10g}")


def fit_prompt(ids: list[int], positions: int | None, bos_id: int | None = None) -> tuple[list[int], list[str]]:
    """A prompt's tokens cut to the model's positions (leaving room for one new token):
    its end is kept, which is what a continuation depends on, and its begin-of-text
    token; the note says how much was cut. No cut where the positions are unknown."""
    if positions is None or len(ids) < positions:
        return ids, []
    keep = positions - 1
    head = [ids[0]] if bos_id is not None and ids and ids[0] == bos_id else []
    kept = head + ids[len(ids) - (keep - len(head)) :]
    return kept, [
        f"the prompt has {len(ids)} tokens and the model {positions} positions: its first {len(ids) - len(kept)} "
        "tokens were cut"
    ]


def new_token_budget(prompt_length: int, wanted: int, positions: int | None) -> tuple[int, str | None]:
    """How many new tokens fit after the prompt, and the note to give if generation runs
    up to that limit before ``wanted`` (None where all of them fit)."""
    if positions is None or prompt_length + wanted <= positions:
        return wanted, None
    room = max(0, positions - prompt_length)
    return room, f"stopped at the model's {positions} positions after {room} new tokens (asked for {wanted})"


def generate_within(
    ids: list[int],
    wanted: int,
    positions: int | None,
    bos_id: int | None,
    generate: Callable[[list[int], int], list[int]],
) -> tuple[list[int], list[str]]:
    """A prompt's new tokens by ``generate(prompt, budget)`` (end-of-text not included),
    the prompt cut to the model's positions and generation stopped at them, with the
    notes saying so: the one rule `adapt predict`, ``--onnx`` and predict.py share."""
    ids, notes = fit_prompt(ids, positions, bos_id)
    budget, limit = new_token_budget(len(ids), wanted, positions)
    new = generate(ids, budget) if budget else []
    if limit and len(new) == budget:
        notes.append(limit)
    return new, notes


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of the ``stops`` strings found in it (empty ones ignored)."""
    found = [text.find(s) for s in stops if s and s in text]
    return text[: min(found)] if found else text


def generate_ids(
    session: Any, prompt: Sequence[int], eos_id: int, kv_cache: str = "appended", **settings: Any
) -> list[int]:
    """New token ids after ``prompt`` from a cached decoder graph, until the end-of-text
    token (not returned) or ``max_new_tokens``; ``settings`` as :data:`SAMPLING`.

    ``kv_cache`` (preprocess.json's, from the export) says how the graph keeps the cache:
    ``appended``: each step returns the cache one token longer (``present.*``), fed back as
    ``past_key_values.*``; ``shared``: the graph writes the new entries in place into
    buffers as long as the whole generation, bound as both its past and present (ONNX
    Runtime's GroupQueryAttention), so no step copies the cache."""
    import numpy as np

    options = {**SAMPLING, **settings}
    rng = np.random.default_rng(options["seed"])
    step = np.array([list(prompt) or [eos_id]], dtype=np.int64)
    run = (_shared_cache_steps if kv_cache == "shared" else _appended_cache_steps)(
        session, step.shape[1] + options["max_new_tokens"]
    )
    new: list[int] = []
    for _ in range(options["max_new_tokens"]):
        logits = run(step)
        token = next_token(logits[0, -1], rng, options["temperature"], options["top_k"], options["top_p"])
        if token == eos_id:
            break
        new.append(token)
        step = np.array([[token]], dtype=np.int64)
    return new


def _appended_cache_steps(session: Any, room: int) -> Callable[[Any], Any]:
    """A function running one step of a decoder whose cache grows by concatenation: given
    the new tokens, it returns their logits and keeps the longer cache for the next call."""
    import numpy as np

    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    state: dict[str, Any] = {
        "done": 0,
        "cache": {n: empty_cache(i.shape, 1) for n, i in inputs.items() if n.startswith("past_key_values.")},
    }

    def run(step: Any) -> Any:
        done, length = state["done"], step.shape[1]
        feed = {
            "input_ids": step,
            "attention_mask": np.ones((1, done + length), dtype=np.int64),
            "position_ids": np.arange(done, done + length, dtype=np.int64)[None],
            **state["cache"],
        }
        result = dict(zip(outputs, session.run(None, {n: feed[n] for n in inputs})))
        state["done"] = done + length
        state["cache"] = {n: result["present" + n[len("past_key_values") :]] for n in state["cache"]}
        return result["logits"]

    return run


def _shared_cache_steps(session: Any, room: int) -> Callable[[Any], Any]:
    """Like :func:`_appended_cache_steps` for a graph that writes its cache in place: one
    buffer of ``room`` positions per cache tensor, bound once as input and output. The
    logits land in arrays bound as the output (one, reused, for every one-token step), so a
    step asks ONNX Runtime for nothing back: at batch 1 the bindings' own cost is a tenth of
    a small decoder's step."""
    import numpy as np
    import onnxruntime as ort

    inputs = {i.name: i for i in session.get_inputs()}
    vocab = next(o.shape[-1] for o in session.get_outputs() if o.name == "logits")
    binding = session.io_binding()
    binding.bind_output("logits", "cpu")  # first: get_outputs() lists outputs in the order they were first bound
    for name, spec in inputs.items():
        if name.startswith("past_key_values."):
            shape = empty_cache(spec.shape, 1).shape
            buffer = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, shape[1], room, shape[3]), dtype=np.float32))
            binding.bind_ortvalue_input(name, buffer)
            binding.bind_ortvalue_output("present" + name[len("past_key_values") :], buffer)
    mask = np.ones((1, room), dtype=np.int64)  # its first done + length columns: past and new tokens
    one_token = np.zeros((1, 1, int(vocab)), dtype=np.float32) if isinstance(vocab, int) else None
    state: dict[str, Any] = {"done": 0, "bound": None}

    def run(step: Any) -> Any:
        done, length = state["done"], step.shape[1]
        binding.bind_cpu_input("input_ids", step)
        binding.bind_cpu_input("attention_mask", mask[:, : done + length])
        if "position_ids" in inputs:
            binding.bind_cpu_input("position_ids", np.arange(done, done + length, dtype=np.int64)[None])
        logits = one_token if length == 1 and one_token is not None else None
        if logits is None:  # the prompt (or a vocabulary the graph does not fix): an output of its own
            binding.bind_output("logits", "cpu")
        elif state["bound"] is not logits:
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        state["bound"] = logits
        session.run_with_iobinding(binding)
        state["done"] = done + length
        return binding.get_outputs()[0].numpy() if logits is None else logits

    return run


def escapes_folder(name: Any) -> bool:
    """Whether a path read from a file (preprocess.json's ``tokenizer``, report.json's
    ``deployable``) could leave the file's folder: not a relative path, or one with a
    ``..`` part. (The one rule, shared by adapt.paths.inside and this standalone file.)"""
    from pathlib import PurePosixPath, PureWindowsPath

    if not isinstance(name, (str, Path)) or not str(name) or "\x00" in str(name):
        return True
    text = str(name)
    windows = PureWindowsPath(text)
    return (
        PurePosixPath(text).is_absolute()
        or windows.is_absolute()
        or bool(windows.drive)
        or ".." in PurePosixPath(text.replace("\\", "/")).parts
    )


def read_spec(spec_path: Path) -> dict[str, Any]:
    """preprocess.json, checked for the keys its kind of input needs; the tokenizer it
    names must be a file beside it."""
    again = "export the run again (adapt export RUN_DIR) to write it"
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PredictError(f"no {PREPROCESS_FILE} beside the model ({spec_path}): {again}") from None
    except (OSError, ValueError) as exc:
        raise PredictError(f"{spec_path} is damaged ({exc}): {again}") from None
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in REQUIRED_KEYS:
        raise PredictError(
            f"{spec_path} names no known kind of input (kind: {kind!r}; expected one of {', '.join(REQUIRED_KEYS)}): "
            f"{again}"
        )
    missing = [k for k in REQUIRED_KEYS[kind] if k not in spec]
    if missing:
        raise PredictError(f"{spec_path} lacks {', '.join(missing)}: {again}")
    if "tokenizer" in spec and escapes_folder(spec["tokenizer"]):
        raise PredictError(
            f"{spec_path}: tokenizer is {spec['tokenizer']!r}, which is not a file inside {spec_path.parent}; a path "
            f"in {PREPROCESS_FILE} must be relative, without '..': {again}"
        )
    return spec


def open_session(model_path: Path) -> Any:
    """An ONNX Runtime CPU session, or a PredictError saying why the file is not a model."""
    import onnxruntime as ort

    if not model_path.is_file():
        raise PredictError(f"model file not found: {model_path}")
    if model_path.stat().st_size == 0:
        raise PredictError(f"{model_path} is empty, not an ONNX model: export the run again (adapt export RUN_DIR)")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a bundle's overridable inputs are not news to its user
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for bad files
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise PredictError(
            f"{model_path} cannot be loaded as an ONNX model (truncated, damaged or another format): {first}"
        ) from None


def predict(model_path: Path, inputs: Sequence[str], task: str | None = None, **settings: Any) -> list[dict[str, Any]]:
    """Label predictions for texts, whitespace-split sentences (NER) or image paths, or
    generated text for prompts (``settings`` as :data:`SAMPLING`); PredictError for a
    file or an input that cannot be used. ``model_path`` may be an adapter bundle (its
    folder or its graph, ``bundle.json`` beside it): ``task`` names the adapter to run."""
    bundle = bundle_folder(model_path)
    if bundle is None and task is not None:
        raise InputError(
            f"--task chooses a task of an adapter bundle, and {model_path} is not one (no {MANIFEST} beside it)"
        )
    spec_path = model_path.parent / PREPROCESS_FILE
    if model_path.parent.name == "mobile":
        spec_path = model_path.parent.parent / PREPROCESS_FILE
    if bundle is not None:
        spec_path, adapter, output, model_inputs, model_path = bundle_task(bundle, task)
    spec = read_spec(spec_path)
    spec["postprocess"] = postprocess_of(spec, spec_path.parent)
    check_settings(settings)
    check_draw(settings.get("draw"))
    session = open_session(model_path)
    if bundle is not None:
        session = AdapterSession(session, adapter, output, model_inputs)
    try:
        if postprocess_of(spec)["kind"] == "generation":
            return _generate(session, spec, spec_path, inputs, settings)
        return _predict(session, spec, spec_path, inputs, {**settings, "sources": list(inputs)})
    except PredictError:
        raise
    except OSError as exc:
        raise PredictError(f"cannot read or write {exc.filename or 'a file'}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - each kind of failure says its own cause
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        if type(exc).__module__.startswith("onnxruntime"):
            raise PredictError(f"ONNX Runtime could not run {model_path.name} on these inputs: {detail}") from None
        raise PredictError(
            f"{model_path.name} does not fit {spec_path} ({type(exc).__name__}: {detail}): use the model file "
            "exported beside it"
        ) from None


#: An adapter bundle's manifest (``adapt bundle``) and the graph it names.
MANIFEST, BUNDLE_MODEL = "bundle.json", "model.onnx"


def bundle_folder(model_path: Path) -> Path | None:
    """The adapter bundle ``model_path`` is (its folder) or lies in (its graph), else None."""
    if model_path.is_dir() and (model_path / MANIFEST).is_file():
        return model_path
    if (model_path.parent / MANIFEST).is_file():
        return model_path.parent
    return None


def bundle_task(folder: Path, task: str | None) -> tuple[Path, Path, str, list[str], Path]:
    """A bundle's task: its preprocess.json, its adapter, the graph output it reads, the
    model's own inputs and the graph to run (the bundle's recommended one: int8 where every
    task kept its accuracy); PredictError naming the tasks there are when ``task`` is not one."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        tasks, inputs, model = manifest["tasks"], list(manifest["inputs"]), manifest.get("model", BUNDLE_MODEL)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PredictError(f"{folder / MANIFEST} is damaged ({exc}): make the bundle again (adapt bundle)") from None
    names = ", ".join(sorted(tasks))
    if task is None:
        raise InputError(f"{folder} is an adapter bundle of the tasks {names}: choose one with --task NAME")
    if task not in tasks:
        raise InputError(f"the bundle {folder} has no task {task!r}; its tasks: {names}")
    entry = {**tasks[task], "model": model}
    for key in ("preprocess", "adapter", "model"):
        if escapes_folder(entry.get(key)):
            raise PredictError(
                f"{folder / MANIFEST}: task {task!r} names {key} {entry.get(key)!r}, which is not a file inside "
                f"{folder}: make the bundle again (adapt bundle)"
            )
    adapter = folder / entry["adapter"]
    if not adapter.is_file():
        raise PredictError(f"the adapter of task {task!r} is missing ({adapter}): make the bundle again (adapt bundle)")
    return folder / entry["preprocess"], adapter, str(entry["output"]), inputs, folder / model


class AdapterSession:
    """A bundle's ONNX Runtime session with one task's adapter active, seen as that task's
    own model: its inputs the model's (the adapter feeds the rest), its one output the task's."""

    def __init__(self, session: Any, adapter: Path, output: str, inputs: Sequence[str]) -> None:
        import onnxruntime as ort

        self.session, self.output = session, output
        self.adapter = ort.LoraAdapter()
        try:
            self.adapter.Load(str(adapter))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for bad files
            raise PredictError(f"{adapter} cannot be loaded as an ONNX Runtime adapter: {exc}") from None
        self.options = ort.RunOptions()
        self.options.add_active_adapter(self.adapter)
        self.inputs = [i for i in session.get_inputs() if i.name in inputs]

    def get_inputs(self) -> list[Any]:
        return self.inputs

    def get_outputs(self) -> list[Any]:
        return [o for o in self.session.get_outputs() if o.name == self.output]

    def run(self, names: Any, feed: dict[str, Any], options: Any = None) -> list[Any]:
        return self.session.run([self.output], feed, self.options)


def postprocess_of(spec: dict[str, Any], folder: Path | None = None) -> dict[str, Any]:
    """What to do after the graph (preprocess.json's ``postprocess``, from the task's
    declaration). An export made before adapt wrote it (``folder``: where it lies) gets what
    it did then, told by its input kind and the files beside the model."""
    declared = spec.get("postprocess")
    if isinstance(declared, dict) and declared.get("kind") in POSTPROCESS_KINDS:
        return declared
    if declared is not None:
        raise PredictError(
            f"preprocess.json's postprocess {declared!r} is not one of {', '.join(POSTPROCESS_KINDS)}: export the run "
            "again with this adapt"
        )
    kind = spec.get("kind", "")
    if folder is not None and (kind == "items" or (folder / "user_tower.onnx").exists()):
        return {"kind": "recommend"}
    if folder is not None and (folder / "gallery.json").exists():
        return {"kind": "nearest-neighbours", "key": "document" if kind == "text" else "identity"}
    return {
        "kind": {"detection": "boxes", "generation": "generation", "tokens": "token-tags"}.get(kind, "softmax-top-k")
    }


def _predict(
    session: Any, spec: dict[str, Any], spec_path: Path, inputs: Sequence[str], settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each input through the preprocessing its ``kind`` names, the graph, then the task's
    post-processing (:func:`finish_row`)."""
    post = postprocess_of(spec)
    if post["kind"] == "recommend":  # the item index and the user tower answer, not the model
        return [recommend(source, spec_path.parent) for source in inputs]
    prepare = input_reader(session, spec, spec_path.parent)
    rows = []
    for source in inputs:
        feed, context = prepare(source)
        rows.append(
            finish_row(source, run_named(session, feed), spec, {**context, "folder": spec_path.parent}, settings)
        )
    return rows


def input_reader(
    session: Any, spec: dict[str, Any], folder: Path
) -> Callable[[str], tuple[dict[str, Any], dict[str, Any]]]:
    """A function from one raw input to the graph's feed and what post-processing needs of
    the input (the image, the words and each word's first token)."""
    import numpy as np

    wanted = [i.name for i in session.get_inputs()]
    if spec["kind"] in ("image", "detection"):

        def read_image(source: str) -> tuple[dict[str, Any], dict[str, Any]]:
            image = open_image(source)
            pixels = stretch_image(image, spec)[None] if spec["kind"] == "detection" else prepare_image(image, spec)
            return {wanted[0]: pixels}, {"image": image}

        return read_image
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / spec["tokenizer"]))
    tokenizer.enable_truncation(spec["max_length"])
    tokenizer.no_padding()

    def read_text(source: str) -> tuple[dict[str, Any], dict[str, Any]]:
        words = source.split()
        encoding = (
            tokenizer.encode(words, is_pretokenized=True) if spec["kind"] == "tokens" else tokenizer.encode(source)
        )
        feed = {
            "input_ids": [encoding.ids],
            "attention_mask": [encoding.attention_mask],
            "token_type_ids": [encoding.type_ids],
        }
        first, seen = [], set()
        for position, word in enumerate(encoding.word_ids):
            if word is not None and word not in seen:
                seen.add(word)
                first.append(position)
        return {n: np.array(feed[n], dtype=np.int64) for n in wanted}, {"words": words, "first": first}

    return read_text


def finish_row(
    source: str, outputs: dict[str, Any], spec: dict[str, Any], context: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    """One input's prediction from the graph's named outputs (``logits`` first), by the
    task's declared post-processing kind. Shared by this file and ``adapt predict``."""
    import numpy as np

    post, labels = postprocess_of(spec), spec.get("labels") or []
    kind, logits = post["kind"], np.asarray(next(iter(outputs.values())), dtype=np.float32)
    if kind == "softmax-top-k":
        probs = _softmax(logits)[0]
        order = np.argsort(-probs, kind="stable")[: max(1, int(post.get("k", 1)))]
        row = {"input": source, "label": labels[int(order[0])], "score": round(float(probs[order[0]]), 6)}
        return (
            {**row, "top": [{"label": labels[int(i)], "score": round(float(probs[i]), 6)} for i in order]}
            if len(order) > 1
            else row
        )
    if kind == "sigmoid-threshold":
        probs = 1.0 / (1.0 + np.exp(-logits[0]))
        chosen = [int(i) for i in np.argsort(-probs, kind="stable") if probs[i] >= float(post.get("threshold", 0.5))]
        return {
            "input": source,
            "labels": [labels[i] for i in chosen],
            "scores": {labels[i]: round(float(probs[i]), 6) for i in range(len(labels))},
        }
    if kind == "token-tags":
        tags = [labels[int(logits[0][position].argmax())] for position in context["first"]]
        return {"input": source, "tags": [{"token": word, "tag": tag} for word, tag in zip(context["words"], tags)]}
    if kind == "boxes":
        return detection_row(source, context["image"], outputs, spec, settings)
    if kind == "nearest-neighbours":
        if context.get("folder") is None:
            raise PredictError(
                "the run has no export yet, and the nearest entries come from its gallery: export it first"
            )
        return {
            "input": source,
            **nearest(outputs["embedding"][0], read_gallery(context["folder"]), str(post.get("key", "identity"))),
        }
    return {"input": source, "outputs": {name: np.asarray(value).tolist() for name, value in outputs.items()}}


def run_named(session: Any, feed: dict[str, Any]) -> dict[str, Any]:
    """Every output of an ONNX Runtime session for ``feed``, by its name."""
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def detection_row(
    source: str, image: Any, outputs: dict[str, Any], spec: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    """What predict prints for one image from the detection graph's outputs: its
    detections at ``min_score`` or above, and, with ``draw``, the picture written
    (``sources``: every input of the call, see :func:`draw_path`)."""
    wanted = settings.get("min_score")
    found = detection_rows(outputs, spec, image.size, float(DETECTION["min_score"] if wanted is None else wanted))
    row: dict[str, Any] = {"input": source, "detections": found}
    if settings.get("draw"):
        drawn = draw_path(Path(settings["draw"]), source, settings.get("sources", [source]))
        try:
            draw_detections(image, found, drawn)
        except OSError as exc:
            raise InputError(
                f"cannot write the drawing {drawn}: {exc.strerror or exc}; give --draw a path in a folder you can write"
            ) from None
        row["drawn"] = str(drawn)
    return row


def check_draw(out: Any) -> None:
    """``--draw OUT``: its folder must exist and be writable, checked before any model runs."""
    if not out:
        return
    folder = Path(out).parent
    if not folder.is_dir():
        raise InputError(f"--draw {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(
            f"--draw {out}: the folder {folder} cannot be written; give --draw a path in a folder you can write"
        )


def draw_path(out: Path, source: str, sources: Sequence[str]) -> Path:
    """Where ``--draw OUT`` puts one input's picture: OUT itself for a single input, else
    OUT's stem with the input's stem added (``out_cat.png``); where two inputs share a
    stem (``a/cat.jpg``, ``b/cat.jpg``), their positions too (``out_1_cat.png``), so no
    picture overwrites another."""
    if len(set(sources)) <= 1:
        return out
    stem, suffix = Path(source).stem, out.suffix or ".png"
    if len({s for s in sources if Path(s).stem == stem}) > 1:
        return out.with_name(f"{out.stem}_{list(sources).index(source) + 1}_{stem}{suffix}")
    return out.with_name(f"{out.stem}_{stem}{suffix}")


#: image-embedding: how many of the nearest gallery identities a prediction lists.
NEAREST = 5


def read_gallery(folder: Path) -> tuple[Any, list[str]]:
    """The export's gallery: embeddings (identities x dim) and the identities' names."""
    import numpy as np

    again = "export the run again (adapt export RUN_DIR)"
    try:
        vectors = np.load(folder / "gallery.npy", allow_pickle=False)
        ids = json.loads((folder / "gallery.json").read_text(encoding="utf-8"))["ids"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PredictError(
            f"no readable gallery beside the model in {folder} ({type(exc).__name__}: {exc}): {again}"
        ) from None
    if not isinstance(ids, list) or vectors.ndim != 2 or len(ids) != vectors.shape[0]:
        raise PredictError(
            f"the gallery in {folder} does not hold together: gallery.npy has "
            f"{vectors.shape[0] if vectors.ndim else 0} vectors, gallery.json "
            f"{len(ids) if isinstance(ids, list) else 'no list of'} ids: {again}"
        )
    return vectors, ids


def nearest(embedding: Any, gallery: tuple[Any, list[str]], key: str = "identity") -> dict[str, Any]:
    """The best-matching gallery entry (an identity, or a document's opening words), its
    cosine, and the :data:`NEAREST` nearest with theirs."""
    import numpy as np

    vectors, ids = gallery
    scores = vectors @ np.asarray(embedding, dtype=np.float32)
    order = np.argsort(-scores)[:NEAREST]
    return {
        key: ids[int(order[0])],
        "score": round(float(scores[order[0]]), 6),
        "nearest": [{key: ids[int(i)], "score": round(float(scores[i]), 6)} for i in order],
    }


#: recommendation: how many items a prediction lists.
RECOMMEND = 10


def recommend(history: str, folder: Path) -> dict[str, Any]:
    """A user's next items from their history (item ids, comma-separated, oldest first):
    the user tower (``user_tower.onnx``) pools the history's vectors from the item index
    and scores every item; the best :data:`RECOMMEND`, the history's own left out."""
    import numpy as np

    vectors, ids = read_gallery(folder)
    row = {item: k for k, item in enumerate(ids)}
    items = [i.strip() for i in history.split(",") if i.strip()]
    unknown = [i for i in items if i not in row]
    if not items or unknown:
        raise InputError(
            f"{'unknown item ' + repr(unknown[0]) if unknown else 'no item'} in the history {history!r}: give the ids "
            "of items in the catalogue (gallery.json), comma-separated, oldest first"
        )
    keep = int(json.loads((folder / "gallery.json").read_text(encoding="utf-8")).get("history", len(items)))
    tower = open_session(folder / "user_tower.onnx")
    scores = run_named(tower, {"history": np.array([[row[i] for i in items[-keep:]]], dtype=np.int64)})["scores"][0]
    order = [int(k) for k in np.argsort(-scores, kind="stable")[:RECOMMEND] if np.isfinite(scores[k])]
    return {"input": history, "recommended": [{"item": ids[k], "score": round(float(scores[k]), 6)} for k in order]}


def _generate(
    session: Any, spec: dict[str, Any], spec_path: Path, prompts: Sequence[str], settings: dict[str, Any]
) -> list[dict[str, Any]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(spec_path.parent / spec["tokenizer"]))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    results = []
    positions = spec.get("positions")  # absent in exports made before adapt recorded it
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
        if spec.get("bos_id") is not None:
            ids = [spec["bos_id"], *ids]
        wanted = int(settings.get("max_new_tokens", SAMPLING["max_new_tokens"]))
        new, notes = generate_within(
            ids or [spec["eos_id"]],
            wanted,
            positions,
            spec.get("bos_id"),
            lambda start, budget: generate_ids(
                session,
                start,
                spec["eos_id"],
                spec.get("kv_cache", "appended"),
                **{**settings, "max_new_tokens": budget},
            ),
        )
        results.append(
            {
                "input": prompt,
                "generated": cut_at_stops(tokenizer.decode(new), settings.get("stop", ())),
                **({"notes": notes} if notes else {}),
            }
        )
    return results


def parse_arguments(argv: Sequence[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Predict with an exported model (labels for texts, sentences or images; text for prompts).",
    )
    parser.add_argument("model", type=Path, help="the .onnx file (or an adapter bundle's folder)")
    parser.add_argument("--task", default=None, help="an adapter bundle: the task (run name) whose adapter to run")
    parser.add_argument("inputs", nargs="+", help="texts, whitespace-tokenised sentences, image paths, or prompts")
    parser.add_argument(
        "--max-new-tokens", type=int, default=SAMPLING["max_new_tokens"], help="generation: most tokens to add"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=SAMPLING["temperature"],
        help="generation: 0 is greedy; higher samples more freely",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=SAMPLING["top_k"],
        help="generation: sample among the k most likely tokens (0: all)",
    )
    parser.add_argument(
        "--top-p", type=float, default=SAMPLING["top_p"], help="generation: sample within this much probability mass"
    )
    parser.add_argument("--seed", type=int, default=SAMPLING["seed"], help="generation: random seed of the sampling")
    parser.add_argument(
        "--stop", action="append", default=[], help="generation: cut the text at this string (repeatable)"
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=DETECTION["min_score"],
        help="detection: print detections scoring at least this",
    )
    parser.add_argument(
        "--draw",
        type=Path,
        default=None,
        help="detection: write the image with its boxes here (PNG; several inputs: one file each)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_arguments(argv)
    settings = {k: getattr(args, k) for k in (*SAMPLING, *DETECTION)}
    try:
        rows = predict(args.model, args.inputs, task=args.task, **settings)
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
