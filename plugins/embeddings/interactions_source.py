"""``interactions``: who interacted with what, for ``task: recommendation``.

``data.path`` is a CSV with a header holding ``user`` and ``item`` (and optionally
``rating`` and ``timestamp``); ``data.items`` a CSV or jsonl file with ``item`` and
``text`` (a text item tower reads the text). Without ``data.items`` each item's text is
its id, for the id-table item tower (``backbone: {name: item-table}``). The splits are leave-last-out, per user, in
time order (``timestamp``, else the file's order): the last item is the user's test
target, the one before it the validation target, and every earlier item a training
target predicted from the items before it. Val and test also hold the whole catalogue
(every item of the items file and of the interactions), which the targets are ranked
among. A user with fewer than three distinct items is left out (counted in the report's
skipped items): nothing would be left to train on.

Examples: a user ``{"user", "history": [item index, ...], "target": item index,
"catalogue"}``, an item ``{"item": item index, "catalogue"}``; ``catalogue`` is one
:class:`Catalogue` shared by all examples (item ids and texts, by index).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.data import long_fields
from adapt.errors import DataError
from adapt.interfaces import DataRequest, DataSource, Example

TASK = "recommendation"
#: A user needs this many distinct items: one to train on, one for val, one for test.
LEAST_ITEMS = 3


@dataclass(frozen=True)
class Catalogue:
    """Every item, by index: its id (as in the files) and its text."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]


class InteractionsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_rating: float | None = Field(
        None,
        description="keep only interactions rated at least this (needs a `rating` column); none: every row is an "
        "interaction",
    )


def _rows(path: Path, what: str, key: str) -> list[dict[str, str]]:
    """The rows of a CSV (with a header) or jsonl file, as dicts (``key``: the config key naming it)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}", hint=f"point {key} at an existing file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot read {what} {path} ({type(exc).__name__}: {exc})", hint="save it as UTF-8 text"
        ) from None
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                row = json.loads(line) if line.strip() else None
            except (json.JSONDecodeError, RecursionError) as exc:
                raise DataError(
                    f"{path}, line {number}: not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})",
                    hint="one JSON object per line",
                ) from None
            if row is not None and not isinstance(row, dict):
                raise DataError(
                    f"{path}, line {number}: a JSON {type(row).__name__}, not an object",
                    hint='one JSON object per line, e.g. {"item": "a1", "text": "..."}',
                )
            if row is not None:
                rows.append({str(k): "" if v is None else str(v) for k, v in row.items()})
        return rows
    try:
        with long_fields():
            return list(csv.DictReader(text.splitlines()))
    except csv.Error as exc:
        raise DataError(
            f"{path} is not a readable CSV file: {exc}", hint="a header line, then one row per entry, comma-separated"
        ) from None


def _need(rows: Sequence[dict[str, str]], keys: Sequence[str], path: Path, example: str) -> None:
    have = set(rows[0]) if rows else set()
    missing = [k for k in keys if k not in have]
    if not rows or missing:
        found = f"no {missing[0]!r} column; it has: {', '.join(sorted(have)) or '(none)'}" if rows else "no rows"
        raise DataError(f"{path}: {found}", hint=f"a header line and one row per entry, e.g. {example}")


def read_items(path: Path) -> dict[str, str]:
    """Item id -> text from ``data.items``."""
    rows = _rows(path, "item file", "data.items")
    _need(rows, ("item", "text"), path, "item,text")
    texts: dict[str, str] = {}
    first: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        item, text = (row.get("item") or "").strip(), (row.get("text") or "").strip()
        if not item:
            continue
        if item in texts and texts[item] != text:
            raise DataError(
                f"{path}: item {item!r} has two different texts (entries {first[item]} and {number})",
                hint="give each item one row (or the same text in every row)",
            )
        texts.setdefault(item, text)
        first.setdefault(item, number)
    return texts


def user_sequences(path: Path, options: InteractionsOptions, request: DataRequest) -> dict[str, list[str]]:
    """Each user's distinct items in time order (the first interaction with an item counts)."""
    rows = _rows(path, "interactions file", "data.path")
    _need(rows, ("user", "item"), path, "user,item,rating,timestamp")
    if options.min_rating is not None:
        _need(rows, ("rating",), path, "user,item,rating")
        rows = [r for r in rows if _number(r["rating"], path, "rating") >= options.min_rating]
    timed = "timestamp" in rows[0] if rows else False
    ordered = (
        sorted(enumerate(rows), key=lambda p: (_number(p[1]["timestamp"], path, "timestamp"), p[0]))
        if timed
        else list(enumerate(rows))
    )
    sequences: dict[str, list[str]] = {}
    for number, row in ordered:
        user, item = (row.get("user") or "").strip(), (row.get("item") or "").strip()
        if not user or not item:
            request.skip(f"{path}, row {number + 2}", "empty user or item")
            continue
        seen = sequences.setdefault(user, [])
        if item not in seen:
            seen.append(item)
    return sequences


def _number(value: str, path: Path, column: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"{path}: a {column!r} value is not a number: {value!r}",
            hint=f"write {column}s as numbers (a timestamp as seconds since 1970)",
        ) from None


def leave_last_out(
    sequences: dict[str, list[str]], index: dict[str, int], catalogue: Catalogue, request: DataRequest
) -> dict[str, list[Example]]:
    splits: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for user, items in sequences.items():
        if len(items) < LEAST_ITEMS:
            request.skip(
                f"user {user}",
                f"{len(items)} distinct item(s); a user needs {LEAST_ITEMS} (train, val and test targets)",
            )
            continue
        rows = [index[i] for i in items]
        for split, position in (("test", len(rows) - 1), ("val", len(rows) - 2)):
            splits[split].append(
                {"user": user, "history": rows[:position], "target": rows[position], "catalogue": catalogue}
            )
        splits["train"] += [
            {"user": user, "history": rows[:t], "target": rows[t], "catalogue": catalogue}
            for t in range(1, len(rows) - 2)
        ]
    for split in ("val", "test"):
        splits[split] += [{"item": i, "catalogue": catalogue} for i in range(len(catalogue.ids))]
    return splits


class InteractionsSource(DataSource):
    name = "interactions"
    tasks = (TASK,)
    #: a user's history and next item, or a catalogue item
    fields = ("user", "history", "target", "catalogue", "item")
    options_schema = InteractionsOptions

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        if request.path is None:
            raise DataError(
                "the interactions data source needs data.path",
                hint="set data.path to a CSV with columns user,item[,rating,timestamp]",
            )
        options = request.options or InteractionsOptions()
        sequences = user_sequences(request.path, options, request)
        read = {i for items in sequences.values() for i in items}
        if request.items is None:  # no text: each item's "text" is its id (backbone item-table)
            texts = {i: i for i in read}
        else:
            texts = read_items(request.items)
        unknown = sorted(read - set(texts))
        if unknown:
            raise DataError(
                f"{len(unknown)} item(s) of {request.path.name} have no text in {request.items}, e.g. {unknown[0]!r}",
                hint="add a row (item, text) for every item the interactions name",
            )
        empty = sorted(i for i, t in texts.items() if not t)
        if empty:
            raise DataError(
                f"{len(empty)} item(s) in {request.items} have an empty text, e.g. {empty[0]!r}",
                hint="give every item a text (a title, a description)",
            )
        ids = tuple(sorted(texts))
        catalogue = Catalogue(ids, tuple(texts[i] for i in ids))
        splits = leave_last_out(sequences, {item: k for k, item in enumerate(ids)}, catalogue, request)
        if not splits["train"]:
            raise DataError(
                f"{request.path} leaves no training example: every user needs at least {LEAST_ITEMS + 1} distinct "
                "items for one",
                hint="add interactions, or users with longer histories",
            )
        return splits


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(InteractionsSource())
