"""``jsonl``: labelled text, one JSON object per line, from a file or from a folder
holding ``train.jsonl`` (and optionally val and test files, used as the splits).
For text-generation: plain text, prompt/completion pairs, or chat ``messages``; for
text-embedding: (query, positive) pairs (``data.query_column``, ``data.positive_column``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapt import hookimpl
from adapt.data import generation_example, label_list, row_kind, split_files
from adapt.errors import DataError

from adapt.interfaces import DataRequest, DataSource, Example

GENERATION = "text-generation"  # a task without fields, by its name: rows are texts, prompt/completion pairs or chats
EMBEDDING = "text-embedding"  # rows are (query, positive) pairs


def read_jsonl(path: Path, request: DataRequest) -> list[Example]:
    text_key, label_key = request.text_column, request.label_column
    kind = row_kind(request, {GENERATION: "text", EMBEDDING: "pair"})
    examples = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not valid UTF-8 text (byte {exc.start})", hint="save the file as UTF-8") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}, line {number}: not valid JSON ({exc.msg})", hint="one JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        if kind == "pair":
            examples += _pair(row, request, f"{path}, line {number}")
            continue
        if kind == "text":
            example = generation_example(row, request, f"{path}, line {number}")
            if example is not None:
                examples.append(example)
            continue
        missing = [k for k in (text_key, label_key) if k not in row]
        if missing:
            raise DataError(
                f"{path}, line {number}: no {missing[0]!r} key; it has: {', '.join(row) or '(none)'}",
                hint="set data.text_column and data.label_column to the keys used in the file",
            )
        label = row[label_key]
        if kind == "multi-label":
            label = label_list(label, "|")
        elif label is None or str(label).strip() == "":
            raise DataError(
                f"{path}, line {number}: the {label_key!r} value is empty",
                hint="give every line a label, or remove the line",
            )
        text = str(row[text_key] or "")
        if not text.strip():
            request.skip(f"{path}, line {number}", f"the {text_key!r} value is empty")
            continue
        examples.append(
            {"text": text, "labels": label} if kind == "multi-label" else {"text": text, "label": str(label).strip()}
        )
    if not examples:
        raise DataError(
            f"{path} holds no examples", hint='one JSON object per line, e.g. {"text": "...", "label": "..."}'
        )
    return examples


def _pair(row: dict[str, Any], request: DataRequest, where: str) -> list[Example]:
    """text-embedding: one (query, positive) pair, or none (an empty value is skipped and counted)."""
    keys = (request.query_column, request.positive_column)
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(
            f"{where}: no {missing[0]!r} key; it has: {', '.join(row) or '(none)'}",
            hint="set data.query_column and data.positive_column to the keys used in the file",
        )
    query, positive = (str(row[k] or "").strip() for k in keys)
    if not query or not positive:
        request.skip(where, f"the {keys[0] if not query else keys[1]!r} value is empty")
        return []
    return [{"query": query, "positive": positive}]


class JsonlSource(DataSource):
    name = "jsonl"
    tasks = ("text-classification", GENERATION, EMBEDDING)
    #: a text with one label or a list of them (a JSON list, or names joined by "|"), a text to model, or a (query,
    #: positive) pair
    fields = ("text", "label", "labels", "prompt", "completion", "messages", "query", "positive")
    options_schema = None

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        if request.path is None:
            raise DataError(
                "the jsonl data source needs data.path",
                hint="set data.path to a .jsonl file or a folder holding train.jsonl",
            )
        return {
            split: read_jsonl(file, request) for split, file in split_files(request.path, (".jsonl", ".json")).items()
        }


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(JsonlSource())
