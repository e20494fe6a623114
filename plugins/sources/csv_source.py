"""``csv``: labelled text from a CSV file, or from a folder holding ``train.csv``
(and optionally ``val.csv`` / ``validation.csv`` and ``test.csv``, which are then
used as the splits instead of a random one)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import DataError
from adapt.data import generation_example, label_list, long_fields, row_kind, split_files

from adapt.interfaces import DataRequest, DataSource, Example

GENERATION = "text-generation"  # a task without fields, by its name: rows are texts, prompt/completion pairs or chats


class CsvOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delimiter: str = Field(",", min_length=1, max_length=1, description="field separator")
    encoding: str = Field("utf-8-sig", description="text encoding of the files")
    label_separator: str = Field(
        "|",
        min_length=1,
        description="multi-label tasks: what separates the label names in the label column (`sport|politics`)",
    )


def read_csv(path: Path, request: DataRequest, options: CsvOptions) -> list[Example]:
    text_col, label_col = request.text_column, request.label_column
    try:
        with long_fields(), path.open(newline="", encoding=options.encoding) as handle:
            reader = csv.DictReader(handle, delimiter=options.delimiter)
            columns = reader.fieldnames or []
            if not columns:
                raise DataError(
                    f"{path} is empty",
                    hint="the file needs a header line (with the text and label columns) and at least one row",
                )
            kind = row_kind(request, {GENERATION: "text"})
            if kind == "text":
                return _generation_rows(path, reader, request)
            missing = [c for c in (text_col, label_col) if c not in columns]
            if missing:
                raise DataError(
                    f"{path} has no column {missing[0]!r}; its columns are: {', '.join(columns) or '(none)'}",
                    hint="set data.text_column and data.label_column to the names used in the file",
                )
            examples = []
            for row in reader:
                label = row.get(label_col)
                if kind == "multi-label":
                    labels = label_list(label, options.label_separator)
                elif label is None or label.strip() == "":
                    raise DataError(
                        f"{path}, line {reader.line_num}: the {label_col!r} column is empty",
                        hint="give every row a label, or remove the row",
                    )
                text = row.get(text_col) or ""
                if not text.strip():
                    request.skip(f"{path}, line {reader.line_num}", f"the {text_col!r} column is empty")
                    continue
                examples.append(
                    {"text": text, "labels": labels}
                    if kind == "multi-label"
                    else {"text": text, "label": str(label).strip()}
                )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid {options.encoding} text (byte {exc.start})",
            hint="save the file as UTF-8, or set data.options.encoding",
        ) from None
    except csv.Error as exc:
        raise DataError(f"{path} is not a readable CSV file: {exc}") from None
    if not examples:
        raise DataError(
            f"{path} holds no rows with text",
            hint="the file needs a header line and at least one row whose text is not empty",
        )
    return examples


def _generation_rows(path: Path, reader: csv.DictReader, request: DataRequest) -> list[Example]:
    examples = [
        e
        for row in reader
        if (e := generation_example(dict(row), request, f"{path}, line {reader.line_num}")) is not None
    ]
    if not examples:
        raise DataError(
            f"{path} holds no rows with text",
            hint="the file needs a header line and at least one row whose text (or completion) is not empty",
        )
    return examples


class CsvSource(DataSource):
    name = "csv"
    tasks = ("text-classification", GENERATION)
    #: a text with one label, a list of labels (the label column split on data.options.label_separator), or a text to
    #: model
    fields = ("text", "label", "labels", "prompt", "completion", "messages")
    options_schema = CsvOptions

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        if request.path is None:
            raise DataError(
                "the csv data source needs data.path", hint="set data.path to a .csv file or a folder holding train.csv"
            )
        return {
            split: read_csv(file, request, request.options) for split, file in split_files(request.path, ".csv").items()
        }


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(CsvSource())
