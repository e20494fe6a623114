"""``text-folder``: one folder of text files per label (``<label>/*.txt``), or
``train/<label>/...`` beside ``test/<label>/...`` (and optionally ``val/``) when
the data comes split. A file that is not valid text is skipped and counted in
the report rather than stopping the run (the BBC News data has one).

For text-generation the label folders only hold the texts: each file is learnt
whole, or, with ``prompt_lines: N``, its first N lines are the prompt and the rest
the completion (BBC News: the headline as prompt, the article as completion)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.data import label_folder_files, read_split_folders, row_kind
from adapt.errors import DataError
from adapt.interfaces import DataRequest, DataSource, Example


class TextFolderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suffixes: list[str] = Field([".txt"], min_length=1, description="file suffixes to read")
    encoding: str = Field("utf-8", description="text encoding; files that fail to decode are skipped")
    prompt_lines: int = Field(
        0,
        ge=0,
        description="text-generation: the first N non-empty lines of a file are its prompt, the rest its completion "
        "(0: the whole file is learnt); text-embedding: they are the query, the rest its positive",
    )


LAYOUT = "<data.path>/<label>/<file>.txt, or train/ and test/ folders of those"


def read_label_folders(root: Path, request: DataRequest, options: TextFolderOptions) -> list[Example]:
    examples = []
    for file, label in label_folder_files(root, options.suffixes, LAYOUT):
        try:
            text = file.read_text(encoding=options.encoding)
        except UnicodeDecodeError as exc:
            request.skip(str(file), f"not valid {options.encoding} (byte {exc.start})")
            continue
        except OSError as exc:
            request.skip(str(file), str(exc))
            continue
        if not text.strip():
            request.skip(str(file), "the file holds no text")
            continue
        kind = row_kind(request, {"text-generation": "text", "text-embedding": "pair"})
        if kind == "text":
            examples.append(_generation_example(text, options.prompt_lines))
        elif kind == "pair":
            examples.append(_pair(text, options.prompt_lines, file, request))
        else:
            examples.append({"text": text.strip(), "label": label})
    if not examples:
        raise DataError(
            f"no {'/'.join(options.suffixes)} files under {root}",
            hint="set data.options.suffixes to the file suffixes used",
        )
    return examples


def _generation_example(text: str, prompt_lines: int) -> Example:
    if not prompt_lines:
        return {"text": text.strip()}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {"prompt": "\n".join(lines[:prompt_lines]) + "\n", "completion": " ".join(lines[prompt_lines:]) or lines[-1]}


def _pair(text: str, prompt_lines: int, file: Path, request: DataRequest) -> Example:
    """A (query, positive) pair: the first ``prompt_lines`` lines (a headline) as the query,
    the rest (its article) as the positive."""
    if not prompt_lines:
        raise DataError(
            "text-embedding from a text folder needs data.options.prompt_lines: the first lines of a file are the "
            "query, the rest its positive",
            hint="BBC News: prompt_lines: 1 (headline -> article)",
        )
    example = _generation_example(text, prompt_lines)
    return {"query": example["prompt"].strip(), "positive": example["completion"].strip()}


class TextFolderSource(DataSource):
    name = "text-folder"
    tasks = ("text-classification", "text-generation", "text-embedding")
    #: a file's text with its folder's name as label, a text to model, or a (query, positive) pair from its lines
    fields = ("text", "label", "query", "positive")
    options_schema = TextFolderOptions

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        options = request.options or TextFolderOptions()
        return read_split_folders(request.path, lambda folder: read_label_folders(folder, request, options), LAYOUT)


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(TextFolderSource())
