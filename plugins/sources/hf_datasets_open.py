"""Opening a Hugging Face ``datasets`` data set, whatever form it is in, as named splits.

The forms users have: a folder written by ``Dataset.save_to_disk`` or
``DatasetDict.save_to_disk``; a parquet or arrow file; a folder of them (the Hub's
repository layout, ``train-*.parquet`` or ``data/train-*.parquet``, which
``load_dataset`` reads by its split names); or a Hub id (``data.options.hub_id``),
which needs a network. A local folder and a Hub id go through the same
``load_dataset`` call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapt.data import SPLIT_STEMS
from adapt.errors import DataError

#: File suffixes read as one table, by the ``datasets`` builder that reads them.
TABLE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}


class HfDatasetsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hub_id: str | None = Field(
        None, description="a data set on the Hugging Face Hub (needs a network), instead of data.path"
    )
    config_name: str | None = Field(None, description="the Hub data set's configuration (subset), where it has several")
    revision: str | None = Field(None, description="the Hub data set's branch, tag or commit")
    splits: dict[str, str] = Field(
        default_factory=dict,
        description="adapt's split (train, val, test) -> the data set's split name, where the names are not the usual "
        "ones (train; validation, valid, val, dev; test)",
    )
    image_column: str = Field("image", description="image tasks: the column holding the image")
    tokens_column: str = Field("tokens", description="token classification: the column of word lists")
    tags_column: str = Field("ner_tags", description="token classification: the column of tag lists")
    objects_column: str = Field(
        "objects", description="object detection: the column of each image's objects (`bbox` and `category`)"
    )
    bbox_format: str = Field(
        "coco",
        pattern="^(coco|pascal_voc)$",
        description="object detection: `coco` boxes are [x, y, width, height]; `pascal_voc` [x1, y1, x2, y2] (pixels)",
    )


def open_splits(path: Path | None, options: HfDatasetsOptions) -> dict[str, Any]:
    """The data set's splits by adapt's names (train, and val / test where it has them)."""
    named = _open(path, options)
    return pick_splits(named, options.splits)


def _open(path: Path | None, options: HfDatasetsOptions) -> dict[str, Any]:
    """The data set's own splits by their names (a single table is ``train``)."""
    if (path is None) == (options.hub_id is None):
        raise DataError(
            "the hf-datasets source needs exactly one of data.path and data.options.hub_id",
            hint="set data.path to a save_to_disk folder, a parquet/arrow file or a folder of them; or "
            "data.options.hub_id to a Hub data set (with a network)",
        )
    try:
        import datasets
    except ImportError:
        raise DataError(
            "the hf-datasets source needs the `datasets` package, which is not installed",
            hint="pip install 'adapt-edge[hf-datasets]' (or pip install datasets)",
        ) from None
    try:
        if options.hub_id is not None:
            loaded = datasets.load_dataset(options.hub_id, options.config_name, revision=options.revision)
            return _as_dict(loaded, options.hub_id)
        assert path is not None
        return _open_local(datasets, path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds for a bad file, folder or id
        where = options.hub_id or str(path)
        raise DataError(
            f"cannot read the data set {where}: {type(exc).__name__}: {exc}",
            hint="check that it was written by datasets (save_to_disk, to_parquet) or is a Hub data set, and, for a "
            "Hub id, that this machine has a network",
        ) from None


def _open_local(datasets: Any, path: Path) -> dict[str, Any]:
    """A save_to_disk folder, one parquet or arrow file, or a folder laid out as a Hub repository."""
    if not path.exists():
        raise DataError(f"data path not found: {path}", hint="check data.path")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return _as_dict(datasets.load_from_disk(str(path)), str(path))
    if path.is_file():
        builder = TABLE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(
                f"{path} is not a parquet or arrow file",
                hint="the hf-datasets source reads .parquet and .arrow files, save_to_disk folders and folders of "
                "those; for .csv or .jsonl use data.source: csv or jsonl",
            )
        return _as_dict(datasets.load_dataset(builder, data_files={"train": str(path)}), str(path))
    return _as_dict(datasets.load_dataset(str(path)), str(path))


def _as_dict(loaded: Any, where: str) -> dict[str, Any]:
    """A ``Dataset`` as ``{"train": it}``; a ``DatasetDict`` as its splits."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    raise DataError(
        f"{where} is a {type(loaded).__name__}, not a Dataset or DatasetDict",
        hint="streaming (iterable) data sets are not read; save the data set with save_to_disk first",
    )


def pick_splits(named: dict[str, Any], chosen: dict[str, str]) -> dict[str, Any]:
    """adapt's splits from the data set's: ``chosen`` first, else the usual names (validation
    is ``val``); a data set without a training split is an error that lists its splits."""
    unknown = set(chosen) - set(SPLIT_STEMS)
    if unknown:
        raise DataError(
            f"data.options.splits names {sorted(unknown)}: adapt's splits are train, val and test",
            hint="map adapt's split to the data set's, e.g. {train: train, val: dev}",
        )
    picked = {}
    for split, stems in SPLIT_STEMS.items():
        candidates = (chosen[split],) if split in chosen else stems
        for name in candidates:
            if name in named:
                picked[split] = named[name]
                break
        else:
            if split in chosen:
                raise DataError(
                    f"data.options.splits.{split} is {chosen[split]!r}, but the data set's splits are "
                    f"{', '.join(named)}",
                    hint="name one of the data set's splits",
                )
    if "train" not in picked:
        raise DataError(
            f"the data set has no training split; its splits are {', '.join(named)}",
            hint="set data.options.splits.train to the split to train on",
        )
    return picked
