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
import sys
from pathlib import Path
from typing import Any, Sequence

PREPROCESS_FILE = "preprocess.json"
RESAMPLING = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}
#: What preprocess.json must hold, by kind of input.
REQUIRED_KEYS = {
    "image": ("kind", "labels", "input_size", "mean", "std"),
    "text": ("kind", "labels", "tokenizer", "max_length"),
    "tokens": ("kind", "labels", "tokenizer", "max_length"),
    "generation": ("kind", "tokenizer", "max_length", "eos_id"),
}
#: Generation settings and their defaults (greedy, 64 new tokens).
SAMPLING = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0, "stop": ()}


class PredictError(Exception):
    """A problem with the model file, preprocess.json or an input: one line for the user."""


def _softmax(logits: Any) -> Any:
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def prepare_image(path: str, spec: dict[str, Any]) -> Any:
    """timm's eval transform: resize the short side to size / crop_pct, centre-crop, normalise."""
    import numpy as np
    from PIL import Image

    _, height, width = spec["input_size"]
    scale = int(round(height / spec.get("crop_pct", 1.0)))
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except FileNotFoundError:
        raise PredictError(f"input image not found: {path}") from None
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise PredictError(f"{path} is not an image this model can read ({type(exc).__name__}: {exc})") from None
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


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of the ``stops`` strings found in it (empty ones ignored)."""
    found = [text.find(s) for s in stops if s and s in text]
    return text[: min(found)] if found else text


def generate_ids(session: Any, prompt: Sequence[int], eos_id: int, **settings: Any) -> list[int]:
    """New token ids after ``prompt`` from a cached decoder graph, until the end-of-text
    token (not returned) or ``max_new_tokens``; ``settings`` as :data:`SAMPLING`."""
    import numpy as np

    options = {**SAMPLING, **settings}
    rng = np.random.default_rng(options["seed"])
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    cache = {n: empty_cache(i.shape, 1) for n, i in inputs.items() if n.startswith("past_key_values.")}
    step, done, new = np.array([list(prompt) or [eos_id]], dtype=np.int64), 0, []
    for _ in range(options["max_new_tokens"]):
        length = step.shape[1]
        feed = {"input_ids": step, "attention_mask": np.ones((1, done + length), dtype=np.int64), "position_ids": np.arange(done, done + length, dtype=np.int64)[None], **cache}
        result = dict(zip(outputs, session.run(None, {n: feed[n] for n in inputs})))
        token = next_token(result["logits"][0, -1], rng, options["temperature"], options["top_k"], options["top_p"])
        if token == eos_id:
            break
        new.append(token)
        done += length
        cache = {n: result["present" + n[len("past_key_values"):]] for n in cache}
        step = np.array([[token]], dtype=np.int64)
    return new


def read_spec(spec_path: Path) -> dict[str, Any]:
    """preprocess.json, checked for the keys its kind of input needs."""
    again = "export the run again (adapt export RUN_DIR) to write it"
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PredictError(f"no {PREPROCESS_FILE} beside the model ({spec_path}): {again}") from None
    except (OSError, ValueError) as exc:
        raise PredictError(f"{spec_path} is damaged ({exc}): {again}") from None
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in REQUIRED_KEYS:
        raise PredictError(f"{spec_path} names no known kind of input (kind: {kind!r}; expected one of {', '.join(REQUIRED_KEYS)}): {again}")
    missing = [k for k in REQUIRED_KEYS[kind] if k not in spec]
    if missing:
        raise PredictError(f"{spec_path} lacks {', '.join(missing)}: {again}")
    return spec


def open_session(model_path: Path) -> Any:
    """An ONNX Runtime CPU session, or a PredictError saying why the file is not a model."""
    import onnxruntime as ort

    if not model_path.is_file():
        raise PredictError(f"model file not found: {model_path}")
    if model_path.stat().st_size == 0:
        raise PredictError(f"{model_path} is empty, not an ONNX model: export the run again (adapt export RUN_DIR)")
    try:
        return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for bad files
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise PredictError(f"{model_path} cannot be loaded as an ONNX model (truncated, damaged or another format): {first}") from None


def predict(model_path: Path, inputs: Sequence[str], **settings: Any) -> list[dict[str, Any]]:
    """Label predictions for texts, whitespace-split sentences (NER) or image paths, or
    generated text for prompts (``settings`` as :data:`SAMPLING`); PredictError for a
    file or an input that cannot be used."""
    spec_path = model_path.parent / PREPROCESS_FILE
    if model_path.parent.name == "mobile":
        spec_path = model_path.parent.parent / PREPROCESS_FILE
    spec = read_spec(spec_path)
    session = open_session(model_path)
    try:
        if spec["kind"] == "generation":
            return _generate(session, spec, spec_path, inputs, settings)
        return _predict(session, spec, spec_path, inputs)
    except PredictError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that does not fit its preprocess.json fails in many ways
        raise PredictError(f"{model_path.name} does not fit {spec_path} ({type(exc).__name__}: {str(exc).strip()[:300]}): use the model file exported beside it") from None


def _predict(session: Any, spec: dict[str, Any], spec_path: Path, inputs: Sequence[str]) -> list[dict[str, Any]]:
    import numpy as np

    labels = spec["labels"]
    wanted = [i.name for i in session.get_inputs()]
    results = []
    if spec["kind"] == "image":
        for source in inputs:
            probs = _softmax(session.run(None, {wanted[0]: prepare_image(source, spec)})[0])[0]
            results.append({"input": source, "label": labels[int(probs.argmax())], "score": round(float(probs.max()), 6)})
        return results
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(spec_path.parent / spec["tokenizer"]))
    tokenizer.enable_truncation(spec["max_length"])
    tokenizer.no_padding()
    for source in inputs:
        words = source.split()
        encoding = tokenizer.encode(words, is_pretokenized=True) if spec["kind"] == "tokens" else tokenizer.encode(source)
        feed = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }
        probs = _softmax(session.run(None, {n: feed[n] for n in wanted})[0])[0]
        if spec["kind"] == "tokens":
            tags, seen = [], set()
            for position, word in enumerate(encoding.word_ids):
                if word is not None and word not in seen:
                    seen.add(word)
                    tags.append({"token": words[word], "tag": labels[int(probs[position].argmax())]})
            results.append({"input": source, "tags": tags})
        else:
            results.append({"input": source, "label": labels[int(probs.argmax())], "score": round(float(probs.max()), 6)})
    return results


def _generate(session: Any, spec: dict[str, Any], spec_path: Path, prompts: Sequence[str], settings: dict[str, Any]) -> list[dict[str, Any]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(spec_path.parent / spec["tokenizer"]))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    results = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
        if spec.get("bos_id") is not None:
            ids = [spec["bos_id"], *ids]
        text = tokenizer.decode(generate_ids(session, ids, spec["eos_id"], **settings))
        results.append({"input": prompt, "generated": cut_at_stops(text, settings.get("stop", ()))})
    return results


def parse_arguments(argv: Sequence[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="predict.py", description="Predict with an exported model (labels for texts, sentences or images; text for prompts).")
    parser.add_argument("model", type=Path, help="the .onnx file")
    parser.add_argument("inputs", nargs="+", help="texts, whitespace-tokenised sentences, image paths, or prompts")
    parser.add_argument("--max-new-tokens", type=int, default=SAMPLING["max_new_tokens"], help="generation: most tokens to add")
    parser.add_argument("--temperature", type=float, default=SAMPLING["temperature"], help="generation: 0 is greedy; higher samples more freely")
    parser.add_argument("--top-k", type=int, default=SAMPLING["top_k"], help="generation: sample among the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=SAMPLING["top_p"], help="generation: sample within this much probability mass")
    parser.add_argument("--seed", type=int, default=SAMPLING["seed"], help="generation: random seed of the sampling")
    parser.add_argument("--stop", action="append", default=[], help="generation: cut the text at this string (repeatable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_arguments(argv)
    settings = {k: getattr(args, k) for k in SAMPLING}
    try:
        rows = predict(args.model, args.inputs, **settings)
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
