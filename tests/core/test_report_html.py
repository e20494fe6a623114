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
