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
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    w, h = image.size
    if w <= h:
        size = (scale, max(1, int(round(h * scale / w))))
    else:
        size = (max(1, int(round(w * scale / h))), scale)
    image = image.resize(size, RESAMPLING.get(spec.get("interpolation", "bicubic"), 3))
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.array(spec["mean"], dtype=np.float32)) / np.array(spec["std"], dtype=np.float32)
    return array.transpose(2, 0, 1)[None]


def predict(model_path: Path, inputs: Sequence[str]) -> list[dict[str, Any]]:
    """Label predictions for texts, whitespace-split sentences (NER) or image paths."""
    import numpy as np
    import onnxruntime as ort

    spec_path = model_path.parent / PREPROCESS_FILE
    if model_path.parent.name == "mobile":
        spec_path = model_path.parent.parent / PREPROCESS_FILE
    if not spec_path.exists():
        raise FileNotFoundError(f"no {PREPROCESS_FILE} beside {model_path}: export the run again (adapt export RUN_DIR) to write it")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    labels = spec["labels"]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
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
    for row in predict(Path(argv[0]), argv[1:]):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
