"""The run directory: every file written atomically, and never two runs mixed.

A file is written to a temporary name beside its target, flushed to disk and
renamed over it, so a crash leaves either the old file or the new one, never
half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from adapt.errors import RunDirError

CONFIG_FILE = "config.yaml"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class RunDir:
    """``<output_dir>/<name>``: the resolved config, labels, weights, exports and the report."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, path: Path, *, overwrite: bool = False) -> RunDir:
        """Make a new run directory. An existing, non-empty one is refused unless
        ``overwrite`` is set, so a second run never mixes its files into the first's."""
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} exists and is not a directory", hint="set another output_dir or name")
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise RunDirError(
                    f"run directory {path} already holds a run",
                    hint="choose another name (--set name=...), or pass --overwrite to delete it and start again",
                )
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    def write_config(self, config: dict[str, Any]) -> Path:
        target = self.path / CONFIG_FILE
        atomic_write_text(target, yaml.safe_dump(config, sort_keys=False))
        return target

    def write_json(self, name: str, data: Any) -> Path:
        target = self.path / name
        atomic_write_json(target, data)
        return target
