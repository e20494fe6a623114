"""The csv and digits data sources on real files and real data."""

from __future__ import annotations

import numpy as np
import pytest

from adapt.errors import DataError
from adapt.interfaces import DataRequest
from adapt.plugins.sources.csv_source import CsvOptions, CsvSource
from adapt.plugins.sources.digits_source import DigitsSource


def request(path, **kwargs):
    return DataRequest(task="text-classification", path=path, options=CsvOptions(**kwargs.pop("options", {})), **kwargs)


def test_csv_file_reads_text_and_labels(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,label\n"hello, world",greet\nbye,leave\n')
    assert CsvSource().read(request(path)) == {"train": [{"text": "hello, world", "label": "greet"}, {"text": "bye", "label": "leave"}]}


def test_csv_folder_uses_its_own_splits_and_named_columns(tmp_path):
    (tmp_path / "train.csv").write_text("body;y\na;1\nb;2\n")
    (tmp_path / "test.csv").write_text("body;y\nc;1\n")
    (tmp_path / "validation.csv").write_text("body;y\nd;2\n")
    splits = CsvSource().read(request(tmp_path, text_column="body", label_column="y", options={"delimiter": ";"}))
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "val": 1, "test": 1}
    assert splits["test"] == [{"text": "c", "label": "1"}]


@pytest.mark.parametrize(
    "content, message",
    [
        ("text,category\na,b\n", "has no column 'label'; its columns are: text, category"),
        ("text,label\n", "holds no rows"),
        ("text,label\na,\n", "line 2: the 'label' column is empty"),
        (b"text,label\n\xff\xfe,x\n", "is not valid utf-8-sig text"),
    ],
)
def test_csv_mistakes_are_clear(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        CsvSource().read(request(path))


def test_csv_folder_without_train_file(tmp_path):
    with pytest.raises(DataError, match="has no train.csv"):
        CsvSource().read(request(tmp_path))
    with pytest.raises(DataError, match="data path not found"):
        CsvSource().read(request(tmp_path / "missing"))


def test_digits_is_the_real_data_set():
    splits = DigitsSource().read(DataRequest(task="image-classification", path=None))
    train = splits["train"]
    assert len(train) == 1797 and set(splits) == {"train"}
    assert {e["label"] for e in train} == {str(d) for d in range(10)}
    image = train[0]["image"]
    assert image.shape == (8, 8) and image.dtype == np.uint8 and image.max() > 200


def test_digits_takes_no_path(tmp_path):
    with pytest.raises(DataError, match="reads no files"):
        DigitsSource().read(DataRequest(task="image-classification", path=tmp_path))
