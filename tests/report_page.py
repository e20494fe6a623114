"""Checks report.html in a real browser (headless Chromium): it renders with no console message,
every embedded picture decodes, and a screenshot is written under .artifacts/ (gitignored) for
a person to look at."""

from __future__ import annotations

import re
from pathlib import Path

from adapt.web_check import open_page

ARTIFACTS = Path(__file__).resolve().parent.parent / ".artifacts"


def check_report_page(run: Path, pictures: int) -> str:
    """The rendered DOM of ``run/report.html``, after asserting what every report page must show."""
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"report-{run.name}.png"
    screenshot.unlink(missing_ok=True)
    found = open_page(run / "report.html", screenshot=screenshot)
    assert found["console"] == [], found["console"]
    dom = found["dom"]
    rendered = re.search(r'data-rendered="(\d+)/(\d+)"', dom)
    assert rendered, "the page's load handler did not run"
    assert rendered.group(1) == rendered.group(2) == str(pictures), rendered.group(0)  # every picture decoded
    for heading in ("Test metrics", "Parity", "CPU latency (batch 1) and size"):
        assert f"<h2>{heading}</h2>" in dom
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    return dom
