"""``hf-datasets``: examples from a Hugging Face ``datasets`` data set (a ``save_to_disk``
folder, parquet or arrow files, or a Hub id; :mod:`hf_datasets_open` opens them).

Columns map through the config's keys (``data.text_column``, ``label_column``,
``prompt_column``, ``query_column``...) and the source's options (image, tokens, tags
and objects columns). A ``ClassLabel`` column gives label names, and its names in its
own order become the run's label names (``DataRequest.label_order``), so the merged
model's ids are the data set's. The data set's own splits are used where it has them.
Images stay encoded in memory (:class:`EncodedImage`) and are decoded when batched.
"""

from __future__ import annotations

import io
from typing import Any

from adapt import hookimpl
from adapt.data import generation_example, label_list, row_kind
from adapt.errors import DataError
from adapt.interfaces import DataRequest, DataSource, Example
from adapt.plugins.sources.hf_datasets_open import HfDatasetsOptions, open_splits

GENERATION = "text-generation"  # a task without fields, by its name: rows are texts, prompt/completion pairs or chats
EMBEDDING = "text-embedding"  # rows are (query, positive) pairs


class EncodedImage:
    """An image kept as its file's bytes; ``numpy.asarray`` decodes it to RGB uint8, so every
    task and backbone that takes an array takes it, and a large set is not held decoded."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.where = data, where

    def decoded(self) -> Any:
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as opened:
            return opened.convert("RGB")

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        array = np.asarray(self.decoded())
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"EncodedImage({self.where}, {len(self.data)} bytes)"


def names_of(feature: Any) -> list[str] | None:
    """A ``ClassLabel``'s names, also inside a list feature (``List(ClassLabel)``); else None."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    inner = getattr(feature, "feature", None)
    return names_of(inner) if inner is not None and not isinstance(inner, dict) else None


def named(value: Any, names: list[str] | None) -> Any:
    """A label value as its name: a ClassLabel index by its names (-1, no label, is None), a list item by item."""
    if isinstance(value, list):
        return [named(v, names) for v in value]
    if names is not None and isinstance(value, int):
        return None if value < 0 else names[value]
    return value


class Table:
    """One split's columns, read once, with label columns as names and images encoded."""

    def __init__(self, dataset: Any, split: str, request: DataRequest) -> None:
        self.dataset, self.split, self.request = dataset, split, request
        self.columns = list(dataset.column_names)

    def where(self, row: int) -> str:
        return f"{self.split} split, row {row}"

    def require(self, name: str, key: str) -> None:
        """DataError naming the config ``key`` if the split has no column ``name``."""
        if name not in self.columns:
            raise DataError(
                f"the data set's {self.split} split has no column {name!r}; its columns are: {', '.join(self.columns)}",
                hint=f"set {key} to the column's name",
            )

    def column(self, name: str, key: str) -> list[Any]:
        """The column's values (ClassLabel indices as names); DataError naming ``key`` if it is missing."""
        self.require(name, key)
        names = names_of(self.dataset.features[name])
        return [named(v, names) for v in self.dataset[name]]

    def images(self, name: str) -> list[EncodedImage | None]:
        """The image column as encoded bytes (None where a row has no image or its file is outside the data)."""
        import datasets

        self.require(name, "data.options.image_column")
        raw = self.dataset.cast_column(name, datasets.Image(decode=False))[name]
        return [self._encoded(value, i) for i, value in enumerate(raw)]

    def _encoded(self, value: Any, row: int) -> EncodedImage | None:
        if not isinstance(value, dict) or (value.get("bytes") is None and value.get("path") is None):
            self.request.skip(self.where(row), "no image")
            return None
        if value.get("bytes") is not None:
            return EncodedImage(value["bytes"], self.where(row))
        root = self.request.path
        folder = (root if root.is_dir() else root.parent).resolve() if root is not None else None
        path = (folder / value["path"]).resolve() if folder is not None else None
        if folder is None or path is None or not path.is_relative_to(folder):
            self.request.skip(self.where(row), f"the image's path {value['path']!r} lies outside the data set's folder")
            return None
        try:
            return EncodedImage(path.read_bytes(), self.where(row))
        except OSError as exc:
            self.request.skip(self.where(row), f"cannot read {path}: {exc.strerror}")
            return None

    def label_order(self, name: str) -> list[str] | None:
        """The ClassLabel names of column ``name`` (or of its list items), where it has them."""
        return names_of(self.dataset.features[name]) if name in self.columns else None


def readable(image: EncodedImage) -> str | None:
    """None if the image's pixels decode, else why not."""
    try:
        image.decoded()
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


def text_rows(table: Table, kind: str) -> list[Example]:
    """text-classification (one label or a list of them) from the text and label columns."""
    request = table.request
    texts = table.column(request.text_column, "data.text_column")
    labels = table.column(request.label_column, "data.label_column")
    examples = []
    for row, (text, label) in enumerate(zip(texts, labels)):
        if not str(text or "").strip():
            request.skip(table.where(row), f"the {request.text_column!r} value is empty")
        elif kind == "multi-label":
            examples.append({"text": str(text), "labels": label_list(label, "|")})
        elif label is None or str(label).strip() == "":
            request.skip(table.where(row), f"the {request.label_column!r} value is empty (no label)")
        else:
            examples.append({"text": str(text), "label": str(label).strip()})
    return examples


def pair_rows(table: Table) -> list[Example]:
    """text-embedding: (query, positive) pairs from the query and positive columns."""
    request = table.request
    queries = table.column(request.query_column, "data.query_column")
    positives = table.column(request.positive_column, "data.positive_column")
    examples = []
    for row, (query, positive) in enumerate(zip(queries, positives)):
        query, positive = str(query or "").strip(), str(positive or "").strip()
        if query and positive:
            examples.append({"query": query, "positive": positive})
        else:
            request.skip(table.where(row), "the query or the positive is empty")
    return examples


def generation_rows(table: Table) -> list[Example]:
    """text-generation: chats (a ``messages`` column), prompt/completion pairs or plain text."""
    request = table.request
    wanted = ["messages", request.prompt_column, request.completion_column, request.text_column]
    present = [c for c in wanted if c in table.columns]
    columns = {c: table.column(c, "data.text_column") for c in present}
    rows = ({c: columns[c][i] for c in present} for i in range(len(table.dataset)))
    return [e for i, row in enumerate(rows) if (e := generation_example(row, request, table.where(i))) is not None]


def token_rows(table: Table, options: HfDatasetsOptions) -> list[Example]:
    """token-classification: a row's words and their tags (a ClassLabel list gives the names)."""
    tokens = table.column(options.tokens_column, "data.options.tokens_column")
    tags = table.column(options.tags_column, "data.options.tags_column")
    examples = []
    for row, (words, names) in enumerate(zip(tokens, tags)):
        if not words:
            table.request.skip(table.where(row), "no tokens")
        elif not isinstance(words, list) or not isinstance(names, list) or len(words) != len(names):
            raise DataError(
                f"{table.where(row)}: {options.tokens_column!r} and {options.tags_column!r} must be lists of the same "
                "length",
                hint="set data.options.tokens_column and tags_column to the word and tag list columns",
            )
        else:
            examples.append({"tokens": [str(w) for w in words], "tags": [str(t) for t in names]})
    return examples


def image_rows(table: Table, options: HfDatasetsOptions) -> list[Example]:
    """image-classification and image-embedding: an image and its label."""
    request = table.request
    images = table.images(options.image_column)
    labels = table.column(request.label_column, "data.label_column")
    examples = []
    for row, (image, label) in enumerate(zip(images, labels)):
        if image is None:
            continue
        problem = readable(image)
        if problem:
            request.skip(table.where(row), problem)
        elif label is None or str(label).strip() == "":
            request.skip(table.where(row), f"the {request.label_column!r} value is empty (no label)")
        else:
            examples.append({"image": image, "label": str(label).strip()})
    return examples


def rows(table: Table, options: HfDatasetsOptions) -> tuple[list[Example], list[str] | None]:
    """The split's examples in the shape the task's fields ask for, and the label names the
    data declares for them (a ClassLabel's, in its order), where it declares any."""
    from adapt.plugins.sources.hf_detection_rows import detection_rows, objects_label_order

    request = table.request
    fields = set(request.fields)
    if "boxes" in fields:
        return detection_rows(table, options), objects_label_order(table, options)
    if "image" in fields:
        return image_rows(table, options), table.label_order(request.label_column)
    if "tokens" in fields:
        return token_rows(table, options), table.label_order(options.tags_column)
    kind = row_kind(request, {GENERATION: "text", EMBEDDING: "pair"})
    if kind == "pair":
        return pair_rows(table), None
    if kind == "text":
        return generation_rows(table), None
    return text_rows(table, kind), table.label_order(request.label_column)


def read_split(dataset: Any, split: str, request: DataRequest, options: HfDatasetsOptions) -> list[Example]:
    """One split's examples; records the data's own label order on the request (the first split's)."""
    examples, order = rows(Table(dataset, split, request), options)
    request.label_order = request.label_order or order
    if not examples:
        raise DataError(f"the data set's {split} split holds no usable rows", hint="see the skipped rows in the report")
    return examples


class HfDatasetsSource(DataSource):
    name = "hf-datasets"
    tasks = ("text-classification", GENERATION, EMBEDDING)
    #: every field a table can hold: texts with one label or a list, texts to model, (query, positive) pairs,
    #: words with tags, images with a label, images with boxes
    fields = (
        "text",
        "label",
        "labels",
        "prompt",
        "completion",
        "messages",
        "query",
        "positive",
        "tokens",
        "tags",
        "image",
        "size",
        "boxes",
    )
    options_schema = HfDatasetsOptions

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        options = request.options or HfDatasetsOptions()
        return {
            split: read_split(dataset, split, request, options)
            for split, dataset in open_splits(request.path, options).items()
        }


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(HfDatasetsSource())
