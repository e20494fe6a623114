"""The example third-party plugins in examples/plugins/ install with pip as real
packages, the host discovers them through their entry points, their own tests
pass, and `adapt run` uses both end to end: (IA)^3 on a MobileNetV3 trained on
the digits data, exported to ONNX and TorchScript, each checked for parity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "examples" / "plugins"
ADAPT = str(Path(sys.executable).with_name("adapt"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Both packages pip-installed (into a folder on PYTHONPATH, so the test environment itself is left as it was)."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(PLUGINS / "adapt-ia3"), str(PLUGINS / "adapt-torchscript")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return target


def env_with(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "2"}


def test_adapt_plugins_lists_the_installed_packages(site):
    done = subprocess.run([ADAPT, "plugins", "--json"], capture_output=True, text=True, env=env_with(site))
    assert done.returncode == 0, done.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(done.stdout)}
    assert rows[("method", "ia3-outputs")]["package"] == "adapt-ia3", rows.get(("method", "ia3-outputs"))
    assert rows[("exporter", "torchscript")]["package"] == "adapt-torchscript"
    assert str(site) in rows[("method", "ia3-outputs")]["from"]  # loaded from the installed package


@pytest.mark.parametrize("package", ["adapt-ia3", "adapt-torchscript"])
def test_each_package_passes_its_own_tests(site, package):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGINS / package / "tests")], capture_output=True, text=True, env=env_with(site), cwd=PLUGINS / package)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_adapt_run_end_to_end_with_both_plugins(site, tmp_path):
    config = {
        "name": "ia3",
        "output_dir": str(tmp_path / "runs"),
        "task": "image-classification",
        "backbone": {"name": "mobilenet", "arch": "mobilenetv3_small_050", "options": {"image_size": 32}},
        "method": {"name": "ia3-outputs", "options": {"targets": r".*\.conv_pw$"}},
        "data": {"source": "digits"},
        "train": {"epochs": 2, "batch_size": 64, "lr": 1e-2},
        "export": {"formats": ["onnx", "torchscript"], "quantize": "none", "mobile": False, "latency_runs": 3},
    }
    path = tmp_path / "ia3.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([ADAPT, "run", str(path)], capture_output=True, text=True, env=env_with(site))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "ia3" / "report.json").read_text())
    assert report["merge"] == "folded"
    assert (tmp_path / "runs" / "ia3" / "export" / "model.pt").exists()
    for form in ("merged", "onnx", "torchscript"):
        assert report["parity"][form]["max_abs_diff"] <= 1e-4 and report["parity"][form]["label_agreement"] == 1.0, (form, report["parity"])
    assert report["metrics"]["torchscript"]["accuracy"] == report["metrics"]["merged"]["accuracy"]
