"""report.html on its own: a picture path the report names is a claim (outside the run it is
not embedded), NaN figures are shown as such, and the browser check itself fails on a page
that logs to the console or throws (so its passing on a report means something)."""

from __future__ import annotations

import pytest
from PIL import Image

from adapt.report_html import render_html
from adapt.web_check import open_page

REPORT = {
    "name": "r",
    "task": "image-classification",
    "primary_metric": "accuracy",
    "metrics": {"merged": {"accuracy": 0.9}, "onnx": {"accuracy": 0.9}, "onnx_int8": {"accuracy": float("nan")}},
    "parity": {"onnx": {"max_abs_diff": None, "bound": 1e-3, "label_agreement": 1.0, "verified": False}},
    "latency_ms": {"pytorch": {"median": 4.0, "p90": 5.0}, "onnx": {"median": 1.0, "p90": 1.2}, "onnx_int8": {"median": 0.5, "p90": 0.6}},
}


def test_pictures_outside_the_run_are_not_embedded_and_nan_is_said(tmp_path):
    run = tmp_path / "run"
    (run / "pictures").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(run / "pictures" / "ok.png")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "secret.png")
    page = render_html(run, {**REPORT, "pictures": {"ok": "pictures/ok.png", "escape": "../secret.png"}})
    assert page.count("data:image/png;base64,") == 1
    assert "../secret.png is not a file inside the run directory" in page
    assert "NaN/Inf" in page and '<span class="no">NO</span>' in page
    svg = page.split('id="tradeoff"')[1].split("</svg>")[0]
    assert svg.count("<circle ") == 2  # int8's metric is NaN: no point for it, rather than a broken plot


@pytest.mark.parametrize("script", ['console.error("broken")', "undefined_function()"])
def test_the_browser_check_sees_console_messages_and_uncaught_errors(tmp_path, script):
    page = tmp_path / "page.html"
    page.write_text(f"<!doctype html><html><body><p>x</p><script>{script}</script></body></html>")
    found = open_page(page)
    assert found["console"], "a console message went unseen"
    assert "<p>x</p>" in found["dom"]


def test_a_page_that_cannot_be_drawn_says_so_and_the_report_is_still_written(tmp_path, monkeypatch):
    from adapt import report_html
    from adapt.report import write_report

    def broken(run_dir, report):  # a figure of a shape the page does not expect
        raise ValueError("Unknown format code 'f' for object of type 'str'")

    monkeypatch.setattr(report_html, "render_html", broken)
    write_report(tmp_path, REPORT)
    page = (tmp_path / "report.html").read_text()
    assert "report.html could not be drawn (ValueError" in page and "report.md and report.json" in page
    assert (tmp_path / "report.json").is_file() and "| onnx |" in (tmp_path / "report.md").read_text()


def test_the_export_card_names_every_kind_of_file_a_export_can_hold():
    from adapt.export_files import export_file_lines

    report = {
        "primary_metric": "accuracy",
        "deployable": "export/model.int8.onnx",
        "forms": {"onnx": "export/model.onnx", "onnx_int8": "export/model.int8.onnx", "ort": "export/mobile/model.ort"},
        "metrics": {"onnx": {"accuracy": 0.91}, "onnx_int8": {"accuracy": 0.9}},
        "latency_ms": {"onnx_int8": {"median": 1.5}},
    }
    files = ["model.onnx", "model.onnx.data", "model.int8.onnx", "mobile/model.ort", "mobile/model.required_operators.config",
             "gallery.npy", "web/index.html", "web/ort/ort.wasm", "extra.bin"]
    rows = {line.split("`")[1]: line for line in export_file_lines(report, files)[2:]}
    assert set(rows) == {*(f for f in files if not f.startswith("web/")), "web/"}
    assert "**the one to deploy**" in rows["model.int8.onnx"] and "test accuracy 0.9" in rows["model.int8.onnx"]
    assert "1.50 ms" in rows["model.int8.onnx"] and "deploy" not in rows["model.onnx"]
    assert "keep it beside model.onnx" in rows["model.onnx.data"]
    assert "ONNX Runtime Mobile" in rows["mobile/model.ort"] and "--include_ops_by_config" in rows["mobile/model.required_operators.config"]
    assert "gallery" in rows["gallery.npy"] and "written by a plugin" in rows["extra.bin"]
    assert "python -m http.server" in rows["web/"]
