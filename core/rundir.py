"""The run directory: every file written atomically, and never two runs mixed.

A file is written to a temporary name beside its target, flushed to disk and
renamed over it, so a crash leaves either the old file or the new one, never
half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import yaml

from adapt.errors import RunDirError

CONFIG_FILE = "config.yaml"
#: Held (flock) by the adapt process writing a run directory; the OS releases it when that process ends, however it ends.
LOCK_FILE = ".adapt.lock"


def _beside(path: Path, kind: str) -> Path:
    """A hidden name next to ``path`` for this process's temporary copy (``tmp``) or the one it replaces (``old``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash or a full disk leaves the old file intact."""
    tmp = _beside(path, "tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        kept = "the previous version is intact" if path.exists() else "nothing was written"
        reason = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise RunDirError(f"cannot write {path}: {reason}; {kept}", hint="free disk space (or fix the folder's permissions) and run the command again; a training run continues with --resume") from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Fill a folder beside ``path`` and swap it in only once it is complete, so a crash
    leaves the previous folder (or none), never a half-written one."""
    tmp = _beside(path, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _beside(path, "old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold ``path``'s run lock while writing it: a second adapt process that wants to
    write the same run directory at the same time is refused instead of mixing its
    files in (or deleting the first's with --overwrite). Where ``fcntl`` is missing
    (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle = open(path / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}", hint="check output_dir and its permissions") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip()
            raise RunDirError(
                f"run directory {path} is being written by another adapt process" + (f" (pid {owner})" if owner else ""),
                hint="wait for that run to finish, or give this one another name (--set name=...)",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


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
        contents = [p for p in path.iterdir() if p.name != LOCK_FILE] if path.is_dir() else []
        if contents:
            if not overwrite:
                raise RunDirError(
                    f"run directory {path} already holds a run",
                    hint="choose another name (--set name=...), or pass --overwrite to delete it and start again",
                )
            for item in contents:  # the lock file stays: this process holds it
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
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
