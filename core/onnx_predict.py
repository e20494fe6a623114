"""Predictions from an exported ONNX file with ONNX Runtime alone.

Standalone on purpose: it imports only onnxruntime, numpy, Pillow and
tokenizers (never torch, transformers or adapt), and the export stage copies it
into every export directory as ``predict.py``, so the folder is all a device needs:

    python predict.py model.int8.onnx "some text" "another text"
    python predict.py model.onnx photo1.jpg photo2.jpg

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
REQUIRED_KEYS = {"image": ("kind", "labels", "input_size", "mean", "std"), "text": ("kind", "labels", "tokenizer", "max_length"), "tokens": ("kind", "labels", "tokenizer", "max_length")}


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


def predict(model_path: Path, inputs: Sequence[str]) -> list[dict[str, Any]]:
    """Label predictions for texts, whitespace-split sentences (NER) or image paths;
    PredictError for a file or an input that cannot be used."""
    spec_path = model_path.parent / PREPROCESS_FILE
    if model_path.parent.name == "mobile":
        spec_path = model_path.parent.parent / PREPROCESS_FILE
    spec = read_spec(spec_path)
    session = open_session(model_path)
    try:
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


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        print("usage: python predict.py MODEL.onnx INPUT [INPUT ...]  (texts, sentences or image paths)", file=sys.stderr)
        return 2
    try:
        rows = predict(Path(argv[0]), argv[1:])
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
