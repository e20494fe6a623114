"""From a data source to encoded train/val/test splits with stable label names.

A source returns the splits its data has; missing ones are carved out of
``train`` by a seeded shuffle, so the same config always gives the same split.
Label names come from the training split, sorted (or in the data's own order where
its source declares one, a ``datasets`` ClassLabel), and are saved with the run:
a label met only in val or test is an error, not a silent new class.
"""

from __future__ import annotations

import contextlib
import csv
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from adapt.config import SplitConfig
from adapt.errors import DataError
from adapt.interfaces import SPLITS, DataRequest, Example


#: What a table-like source makes of a row, by the fields the task needs (:func:`row_kind`).
ROW_KINDS = ("pair", "multi-label", "label", "text")


def row_kind(request: DataRequest, by_task: dict[str, str]) -> str:
    """How a table-like source (csv, jsonl, text-folder) reads a row for the task, by the
    fields it needs (``request.fields``): ``pair`` (``query``, ``positive``), ``multi-label``
    (``labels``: a list from the label column), ``label`` (one label), or ``text`` (a text to
    model: ``text``, ``prompt``/``completion`` or ``messages``). A task that declares no
    fields gets what ``by_task`` says for its name (else ``label``)."""
    fields = set(request.fields)
    if not fields:
        return by_task.get(request.task, "label")
    if "query" in fields:
        return "pair"
    if "labels" in fields:
        return "multi-label"
    return "label" if "label" in fields else "text"


def label_list(value: Any, separator: str) -> list[str]:
    """A list-valued label (multi-label tasks' ``labels``): a JSON list, or a string of
    names joined by ``separator``; empty names dropped (no label at all is a valid row)."""
    names = value if isinstance(value, list) else ("" if value is None else str(value)).split(separator)
    return [str(name).strip() for name in names if str(name).strip()]


def generation_example(row: dict[str, Any], request: DataRequest, where: str) -> Example | None:
    """A text-generation example from one row of a table-like source: a ``messages`` list
    (chat), a prompt/completion pair (``data.prompt_column`` / ``completion_column``),
    or plain text (``data.text_column``). None (recorded as skipped) when it is empty."""
    if isinstance(row.get("messages"), list):
        messages = row["messages"]
        if not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise DataError(
                f'{where}: `messages` must be a list of {{"role": ..., "content": ...}} objects',
                hint="chat data: one conversation per row, the last message the assistant's answer to learn",
            )
        if not messages or messages[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: the last message of a conversation must be the assistant's (the completion to learn)",
                hint='end each conversation with {"role": "assistant", ...}',
            )
        return {"messages": messages}
    prompt, completion = row.get(request.prompt_column), row.get(request.completion_column)
    if prompt is not None or completion is not None:
        if not str(completion or "").strip():
            request.skip(where, f"the {request.completion_column!r} value is empty")
            return None
        return {"prompt": str(prompt or ""), "completion": str(completion)}
    if request.text_column not in row:
        raise DataError(
            f"{where}: no {request.text_column!r}, {request.prompt_column!r}/{request.completion_column!r} or "
            f"`messages`; it has: {', '.join(row) or '(none)'}",
            hint="set data.text_column, or data.prompt_column and data.completion_column, to the names used in the "
            "file",
        )
    text = str(row[request.text_column] or "")
    if not text.strip():
        request.skip(where, f"the {request.text_column!r} value is empty")
        return None
    return {"text": text}


#: File stems that name a split, for sources that read ``train.<ext>`` beside ``test.<ext>``.
@contextlib.contextmanager
def long_fields() -> Iterator[None]:
    """Let the csv module read cells of any length (its default stops at 128 KiB);
    a long article is cut to the backbone's max_length later anyway."""
    previous = csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


SPLIT_STEMS = {"train": ("train",), "val": ("val", "valid", "validation", "dev"), "test": ("test",)}


def split_files(path: Path, suffixes: str | Sequence[str]) -> dict[str, Path]:
    """The files of a table-like data set: one file, or a folder holding
    ``train<suffix>`` and optionally a val and a test file, which are then the splits."""
    suffixes = (suffixes,) if isinstance(suffixes, str) else tuple(suffixes)
    if path.is_file():
        return {"train": path}
    if not path.is_dir():
        raise DataError(
            f"data path not found: {path}", hint=f"point data.path at a file or a folder holding train{suffixes[0]}"
        )
    found = {}
    for split, stems in SPLIT_STEMS.items():
        for stem in stems:
            hits = [path / f"{stem}{s}" for s in suffixes if (path / f"{stem}{s}").is_file()]
            if hits:
                found[split] = hits[0]
                break
    if "train" not in found:
        raise DataError(
            f"folder {path} has no train{suffixes[0]}",
            hint=f"put the training data in {path / ('train' + suffixes[0])}, or point data.path at one file",
        )
    return found


def label_folder_files(root: Path, suffixes: Sequence[str], layout: str) -> list[tuple[Path, str]]:
    """``(file, label)`` for every file with one of ``suffixes`` under ``root/<label>/``, sorted."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no label folders", hint=f"arrange the data as {layout}")
    wanted = {s.lower() for s in suffixes}
    return [
        (file, folder.name)
        for folder in folders
        for file in sorted(folder.rglob("*"))
        if file.is_file() and file.suffix.lower() in wanted
    ]


def read_split_folders(
    path: Path | None, read: Callable[[Path], list[Example]], layout: str
) -> dict[str, list[Example]]:
    """Data laid out as ``path/<label>/...``, or ``path/train/<label>/...`` beside
    ``test/`` (and optionally ``val/``), which are then the splits; ``read`` reads one folder."""
    if path is None or not path.is_dir():
        raise DataError(
            f"data.path must be a folder of label folders, got {path}", hint=f"arrange the data as {layout}"
        )
    splits = {split: path / stem for split, stems in SPLIT_STEMS.items() for stem in stems if (path / stem).is_dir()}
    if "train" in splits:
        return {split: read(folder) for split, folder in splits.items()}
    return {"train": read(path)}


@dataclass
class Splits:
    """Encoded examples per split, and the label names their indices refer to."""

    train: list[Example]
    val: list[Example]
    test: list[Example]
    label_names: list[str]
    skipped: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Example]:
        """The examples of split ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise ValueError(f"no split {name!r}: the splits are {', '.join(SPLITS)}")
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def sizes(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in SPLITS}


def carve(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off ``fraction`` of ``examples`` (at least one when the fraction is positive)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = round(len(order) * fraction)
    n = max(n, 1) if fraction > 0 else 0
    return [examples[i] for i in order[n:]], [examples[i] for i in order[:n]]


def declared_order(found: list[str], declared: list[str] | None) -> list[str]:
    """The data's own label names (all of them, in its order) where it declares some that cover
    every name found in training; else the names found, as the task sorted them."""
    if declared and found and set(found) <= set(declared):
        return list(declared)
    return found


def load_splits(source: Any, request: DataRequest, task: Any, split: SplitConfig) -> Splits:
    """Read, split and encode the data of a run."""
    raw = source.read(request)
    unknown = set(raw) - set(SPLITS)
    if unknown or "train" not in raw:
        raise DataError(
            f"data source {source.name!r} returned splits {sorted(raw)}; expected train and optionally val, test",
            hint="this is a bug in the data source plugin",
        )
    train = list(raw["train"])
    if "test" not in raw:
        train, raw["test"] = carve(train, split.test, split.seed)
        val_fraction = split.val / (1 - split.test)  # of what is left, so val is `val` of the whole
    else:
        val_fraction = split.val
    if "val" not in raw:
        train, raw["val"] = carve(train, val_fraction, split.seed + 1)
    if not train:
        raise DataError(
            f"no training examples left from data source {source.name!r}",
            hint="add data, or lower data.split.val and data.split.test",
        )
    label_names = declared_order(task.label_names(train), request.label_order)
    for name in ("val", "test"):
        task.label_names(raw[name])  # same shape checks as train
    index = {name: i for i, name in enumerate(label_names)}
    encoded = {}
    for name, examples in (("train", train), ("val", raw["val"]), ("test", raw["test"])):
        try:
            encoded[name] = [task.encode(e, index) for e in examples]
        except DataError as exc:
            raise DataError(f"{name} split: {exc.message}", hint=exc.hint) from None
    least = task.min_labels
    if len(label_names) < least:
        found = f"only the label {label_names[0]!r}" if label_names else "no labels"
        raise DataError(
            f"the training data of data source {source.name!r} holds {found}: task {task.name!r} needs at least "
            f"{least}",
            hint="check data.label_column (or the label folders, the annotations' categories), or add examples of the "
            "other classes",
        )
    return Splits(encoded["train"], encoded["val"], encoded["test"], label_names, list(request.skipped))
