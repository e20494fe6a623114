"""``adapt web-check RUN_DIR|BUNDLE``: the export's web/ page in headless Chromium.

The export folder is served on 127.0.0.1 (a page opened as a file cannot fetch its model);
the page runs every recorded test example with onnxruntime-web and writes what it found
into its ``#adapt-outputs`` element, whose text it also posts back here. The check passes
when every output is within :data:`TOLERANCE` of ONNX Runtime's in Python and every label
agrees. Where the browser cannot run the deployable file (an operator the web build
lacks), each other exported ONNX file is tried and the first that passes is recommended.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from adapt.errors import AdaptError

#: The largest difference allowed between the browser's outputs and ONNX Runtime's in Python.
TOLERANCE = 1e-4
TIMEOUT_S = 240
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: A browser binary to use instead of the first of BROWSERS on the PATH.
BROWSER_ENV = "ADAPT_CHROMIUM"
RESULT_PATH = "/adapt-web-result"
#: How every check starts the browser: headless, without a sandbox (containers), GPU or first-run screens.
HEADLESS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run")


def find_browser() -> str:
    given = os.environ.get(BROWSER_ENV)
    found = given or next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if not found:
        raise AdaptError(
            "no Chromium or Chrome found to open the page in",
            hint=f"install one (Debian: apt-get install chromium), or set {BROWSER_ENV} to its binary",
        )
    return found


class _Handler(SimpleHTTPRequestHandler):
    """Static files with the WebAssembly and module types browsers insist on, and the page's result."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm", ".mjs": "text/javascript"}

    def __init__(self, *args: Any, sink: dict[str, Any], **kwargs: Any) -> None:
        self.sink = sink
        super().__init__(*args, **kwargs)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if self.path != RESULT_PATH:
            self.send_error(404)
            return
        self.sink["body"] = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode("utf-8")
        self.send_response(204)
        self.end_headers()
        self.sink["done"].set()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return


def run_page(folder: Path, query: str = "", timeout: float = TIMEOUT_S, page: str = "index.html") -> dict[str, Any]:
    """What ``folder/web/<page>`` wrote into #adapt-outputs in headless Chromium."""
    sink: dict[str, Any] = {"done": threading.Event()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(folder), sink=sink))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/web/{page}?report=1{'&' + query if query else ''}"
    browser = find_browser()
    with tempfile.TemporaryDirectory() as profile:
        process = subprocess.Popen(
            [browser, *HEADLESS, f"--user-data-dir={profile}", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            finished = sink["done"].wait(timeout)
        finally:
            process.terminate()
            try:
                _, errors = process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                _, errors = process.communicate()
            server.shutdown()
            server.server_close()
    if not finished:
        tail = errors.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise AdaptError(
            f"the page {url} gave no result within {timeout:.0f} s",
            hint="the browser said: " + (" | ".join(tail) if tail else "nothing") + "; open the page yourself to see",
        )
    return json.loads(sink["body"])


def browser_version() -> str:
    done = subprocess.run([find_browser(), "--version"], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() or "unknown"


def passed(result: dict[str, Any]) -> bool:
    diff = result.get("max_abs_diff")
    return (
        "error" not in result
        and isinstance(diff, (int, float))
        and diff <= TOLERANCE
        and result.get("label_agreement") == 1
        and result.get("examples", 0) > 0
    )


def check_folder(folder: Path, deployable: str, others: list[str]) -> dict[str, Any]:
    """The page on ``deployable`` (relative to ``folder``); where the browser cannot run it, on
    each of ``others`` until one runs, which is recommended."""
    found: dict[str, Any] = {"browser": browser_version(), "tolerance": TOLERANCE}
    first = run_page(folder, f"model=../{deployable}")
    found.update(file=deployable, result=first, passed=passed(first))
    if "error" in first:
        tried = {}
        for other in others:
            tried[other] = run_page(folder, f"model=../{other}")
            if "error" not in tried[other]:  # it runs (its outputs are compared with the deployable file's)
                found["recommended"] = other
                break
        found["others"] = tried
    return found


def web_check(target: Path) -> dict[str, Any]:
    """Check a run directory's export/ or a bundle's folder, record it in its report.json
    (``web_check``) and return the entry."""
    from adapt.bundle import MANIFEST, MODEL_FILE
    from adapt.export_stage import EXPORT_DIR
    from adapt.report import read_report, require_report
    from adapt.rundir import atomic_write_json

    if (target / MANIFEST).is_file():
        folder, deployable, others, report_path = target, MODEL_FILE, [], target / "report.json"
        report = json.loads(report_path.read_text(encoding="utf-8"))
    else:
        from adapt.rundir import require_run

        require_run(target)
        report = require_report(target)
        deployable = str(report.get("deployable", "")).removeprefix(f"{EXPORT_DIR}/")
        forms = [str(p).removeprefix(f"{EXPORT_DIR}/") for p in (report.get("forms") or {}).values()]
        others = [f for f in forms if f.endswith(".onnx") and f != deployable]
        folder, report_path = target / EXPORT_DIR, target / "report.json"
        report = read_report(target)
    if not (folder / "web" / "manifest.json").is_file():
        raise AdaptError(f"{folder} has no web/ page", hint=f"export again with this adapt: adapt export {target}")
    found = check_folder(folder, deployable, others)
    atomic_write_json(report_path, {**report, "web_check": found})
    return found


#: Chromium's stderr line for a console message (``--enable-logging=stderr``): the message and where it came from.
CONSOLE_LINE = ":CONSOLE"


def open_page(page: Path, screenshot: Path | None = None, timeout: float = 60) -> dict[str, Any]:
    """A local, self-contained HTML file (report.html) in headless Chromium: ``{"dom": the DOM
    after its load event, "console": every console message, uncaught errors included}``; with
    ``screenshot``, a PNG of the page at 1200 px wide too."""
    url = page.resolve().as_uri()
    found: dict[str, Any] = {"console": []}
    with tempfile.TemporaryDirectory() as profile:
        runs = [("dom", ["--dump-dom"])]
        if screenshot is not None:
            runs.append(("screenshot", [f"--screenshot={screenshot}", "--window-size=1200,2400", "--hide-scrollbars"]))
        for name, extra in runs:
            command = [find_browser(), *HEADLESS, "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}"]
            try:
                done = subprocess.run([*command, *extra, url], capture_output=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                raise AdaptError(f"the browser did not finish {page} within {timeout:.0f} s") from None
            stderr = done.stderr.decode("utf-8", "replace").splitlines()
            found["console"] += [line.partition("] ")[2] for line in stderr if CONSOLE_LINE in line]
            if name == "dom":
                found["dom"] = done.stdout.decode("utf-8", "replace")
    return found
