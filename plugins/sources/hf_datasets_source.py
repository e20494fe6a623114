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

from typing import Any

from adapt import hookimpl
from adapt.data import generation_example, label_list, row_kind
from adapt.errors import DataError
from adapt.interfaces import DataRequest, DataSource, Example
from adapt.plugins.sources.hf_datasets_open import HfDatasetsOptions, open_splits
from adapt.plugins.sources.hf_datasets_table import Table
from adapt.plugins.sources.hf_detection_rows import detection_rows, objects_label_order

GENERATION = "text-generation"  # a task without fields, by its name: rows are texts, prompt/completion pairs or chats
EMBEDDING = "text-embedding"  # rows are (query, positive) pairs


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
        if label is None or str(label).strip() == "":
            request.skip(table.where(row), f"the {request.label_column!r} value is empty (no label)")
        else:
            examples.append({"image": image, "label": str(label).strip()})
    return examples


def rows(table: Table, options: HfDatasetsOptions) -> tuple[list[Example], list[str] | None]:
    """The split's examples in the shape the task's fields ask for, and the label names the
    data declares for them (a ClassLabel's, in its order), where it declares any."""
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
