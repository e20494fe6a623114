"""The run directory: what adapt writes, written atomically, and nothing else touched.

A file is written to a temporary name beside its target, flushed to disk and
renamed over it, so a crash leaves either the old file or the new one, never
half of one. Folders (``merged/``, ``export/``) are filled beside their place
and swapped in whole.

adapt owns only what it wrote. A run directory carries a marker file
(:data:`MARKER_FILE`, with a run id) written when adapt created it; a folder
without one is not a run, and adapt writes nothing into it. ``--overwrite``
deletes only the entries of :data:`RUN_LAYOUT` and leaves anything else where
it is; it never follows a symbolic link.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import yaml

from adapt.errors import RunDirError

CONFIG_FILE = "config.yaml"
#: Held (flock) by the adapt process writing a run directory; the OS releases it when that process ends, however it
#: ends.
LOCK_FILE = ".adapt.lock"
#: Written when adapt creates a run directory: ``{"run_id", "created", "adapt"}``. No marker, not a run.
MARKER_FILE = ".adapt-run.json"
#: Every top-level name adapt writes in a run directory (docs/cli.md, "The run directory").
#: ``--overwrite`` deletes these and nothing else; a folder here is adapt's as a whole.
RUN_LAYOUT = frozenset(
    {
        MARKER_FILE,
        LOCK_FILE,
        CONFIG_FILE,
        "labels.json",
        "metrics.jsonl",
        "checkpoints",
        "adapter",
        "merged",
        "export",
        "export.rejected",
        "training_curve.png",
        "report.json",
        "report.md",
        "report.html",
        "pictures",
        "tensorboard",
    }
)
#: adapt's temporary names beside a target: ``.<name>.<pid>.tmp`` / ``.<name>.<pid>.old``.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.\d+\.(tmp|old)$")
#: errno values that mean "no room for this write" (a full disk, a quota, a file-size limit) rather than "this path is
#: wrong".
NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
DISK_FULL = NO_SPACE | {errno.EFBIG}
DISK_FULL_HINT = "free disk space and run the command again; a training run continues with --resume"


def _beside(path: Path, kind: str) -> Path:
    """A hidden name next to ``path`` for this process's temporary copy (``tmp``) or the one it replaces (``old``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def write_failure(path: Path, exc: OSError) -> RunDirError:
    """The one message for a write that the operating system refused."""
    kept = "the previous version is intact" if path.exists() else "nothing was written"
    reason = "no space left on the device" if exc.errno in NO_SPACE else (exc.strerror or str(exc))
    return RunDirError(
        f"cannot write {path}: {reason}; {kept}",
        hint=DISK_FULL_HINT if exc.errno in DISK_FULL else "fix the folder's permissions and run the command again",
    )


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
        raise write_failure(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def remove(path: Path) -> None:
    """Delete a file, a link (never what it points to) or a folder tree; missing is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)  # rmtree removes links inside a tree, never follows them


@contextlib.contextmanager
def staged_folder(path: Path) -> Iterator[Path]:
    """A folder beside ``path`` to fill; :func:`swap_in` puts it in place. On an
    error the partial folder is removed and ``path`` is untouched."""
    tmp = _beside(path, "tmp")
    remove(tmp)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise


def _usual_permissions(folder: Path) -> None:
    """Give every file in ``folder`` the permissions a new file gets here (0644 under the
    usual umask): some writers (safetensors) create theirs readable by the owner only."""
    umask = os.umask(0)
    os.umask(umask)
    for item in folder.rglob("*"):
        if item.is_file() and not item.is_symlink():
            os.chmod(item, 0o666 & ~umask)


def swap_in(staged: Path, path: Path) -> None:
    """Replace ``path`` (file, folder or link) by the complete folder ``staged``."""
    _usual_permissions(staged)
    old = _beside(path, "old")
    remove(old)
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(staged, path)
    remove(old)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Fill a folder beside ``path`` and swap it in only once it is complete, so a crash
    or a full disk leaves the previous folder (or none), never a half-written one."""
    with staged_folder(path) as tmp:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise write_failure(path, exc) from exc
            raise
        swap_in(tmp, path)


def _is_empty(path: Path) -> bool:
    return all(p.name == LOCK_FILE for p in path.iterdir())


def is_run(path: Path) -> bool:
    """True for a folder that adapt made as a run directory (it holds the marker)."""
    marker = path / MARKER_FILE
    return path.is_dir() and not path.is_symlink() and marker.is_file() and not marker.is_symlink()


def check_target(path: Path) -> str:
    """What sits at a run directory's place: ``"new"`` (nothing, or an empty folder) or
    ``"run"``. Anything else is refused: adapt writes into nothing it did not make."""
    if path.is_symlink():
        raise RunDirError(
            f"{path} is a symbolic link; adapt does not write through links",
            hint="remove the link, or set output_dir to the folder it points to",
        )
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise RunDirError(f"{path} exists and is not a folder", hint="set another output_dir or name (--set name=...)")
    if _is_empty(path):
        return "new"
    if is_run(path):
        return "run"
    raise RunDirError(
        f"{path} is not a run directory made by adapt (it has no {MARKER_FILE}); adapt leaves it alone, with or "
        "without --overwrite",
        hint="give the run another name (--set name=...) or another output_dir; a run made by an older adapt (before "
        "run markers) has none: move or delete it yourself",
    )


def require_run(path: Path) -> None:
    """Refuse to write into ``path`` unless it is a run directory adapt made and may write."""
    if check_target(path) != "run":
        raise RunDirError(
            f"{path} is not a run directory made by adapt (it has no {MARKER_FILE})",
            hint="give the folder `adapt run` printed, e.g. runs/<name>",
        )
    require_writable(path)


def require_writable(path: Path) -> None:
    """Refuse a run directory its owner made read-only (``chmod -w``, even where this
    process, as root, could write anyway) or that sits on a read-only file system."""
    import stat

    hint = f"make it writable (chmod u+w {path}), or copy the run elsewhere and give that copy"
    if not path.stat().st_mode & stat.S_IWUSR:
        raise RunDirError(f"{path} is read-only; adapt leaves it as it is", hint=hint)
    probe = path / f".adapt-write-check-{uuid.uuid4().hex}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"{path} cannot be written ({exc.strerror or exc})", hint=hint) from None


def foreign_entries(path: Path) -> list[str]:
    """Names in a run directory that adapt did not write (kept by --overwrite)."""

    def ours(name: str) -> bool:
        match = _TEMPORARY.match(name)
        return name in RUN_LAYOUT or bool(match and match["name"] in RUN_LAYOUT)

    return sorted(p.name for p in path.iterdir() if not ours(p.name)) if path.is_dir() else []


def clear_run(path: Path) -> list[str]:
    """Delete what adapt wrote in the run directory ``path`` (the lock aside: this
    process holds it); return the names kept because adapt did not write them."""
    kept = foreign_entries(path)
    for item in path.iterdir():
        if item.name not in kept and item.name != LOCK_FILE:
            remove(item)
    return kept


#: adapt's own folders in a run directory, where every temporary file is adapt's.
_OWNED_FOLDERS = ("checkpoints", "adapter", "merged", "export")


def clear_stale_temporaries(path: Path) -> None:
    """Remove what a killed adapt process left half-written beside its targets. Call it
    only while holding the run's lock: no other adapt process is writing there then."""
    if not is_run(path):
        return
    for item in [
        *path.iterdir(),
        *(
            p
            for folder in _OWNED_FOLDERS
            if (path / folder).is_dir() and not (path / folder).is_symlink()
            for p in (path / folder).iterdir()
        ),
    ]:
        match = _TEMPORARY.match(item.name)
        if match and (item.parent != path or match["name"] in RUN_LAYOUT):
            remove(item)


def _open_lock(path: Path) -> int:
    """The lock file's descriptor, unbuffered (nothing is left to flush, or to fail, at
    close); O_NOFOLLOW: a link planted at its name is refused, never written through."""
    return os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if it exists)."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists() or folder.is_symlink():
            break
        missing = folder
    return missing


def _remove_created(path: Path, created: Path) -> None:
    """Remove ``path`` if it holds only the lock, and the empty folders up to ``created``."""
    if not path.is_dir() or not _is_empty(path):
        return
    shutil.rmtree(path, ignore_errors=True)
    for folder in path.parents:
        if not folder.is_relative_to(created):
            break
        with contextlib.suppress(OSError):
            folder.rmdir()  # only while empty


@contextlib.contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold ``path``'s run lock while writing it: a second adapt process that wants to
    write the same run directory at the same time is refused instead of mixing its
    files in (or deleting the first's with --overwrite). Folders this call had to
    create are removed again if nothing but the lock was written into them. Where
    ``fcntl`` is missing (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    created = _first_missing(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = _open_lock(path)
    except OSError as exc:
        raise RunDirError(
            f"cannot create run directory {path}: {exc.strerror or exc}",
            hint=DISK_FULL_HINT if exc.errno in DISK_FULL else "check output_dir and its permissions",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip()
            raise RunDirError(
                f"run directory {path} is being written by another adapt process"
                + (f" (pid {owner})" if owner else ""),
                hint="wait for that run to finish, or give this one another name (--set name=...)",
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        except OSError as exc:
            raise write_failure(path / LOCK_FILE, exc) from None
        clear_stale_temporaries(path)
        yield
    finally:
        os.close(fd)  # closing releases the lock
        if created is not None:
            _remove_created(path, created)


def already_a_run(path: Path) -> RunDirError:
    return RunDirError(
        f"run directory {path} already holds a run",
        hint="choose another name (--set name=...), continue it with --resume, or pass --overwrite to replace it",
    )


class RunDir:
    """``<output_dir>/<name>``: the resolved config, labels, weights, exports and the report."""

    def __init__(self, path: Path, kept: list[str] | None = None) -> None:
        self.path = path
        #: Entries adapt did not write, left in place by --overwrite.
        self.kept = kept or []

    @classmethod
    def create(cls, path: Path, *, overwrite: bool = False) -> RunDir:
        """Make a new run directory with its marker. An existing run is refused unless
        ``overwrite`` is set; then only what adapt wrote there is deleted. Call this
        only once the new run's config, data and checkpoint are known to be good."""
        kept: list[str] = []
        if check_target(path) == "run":
            if not overwrite:
                raise already_a_run(path)
            kept = clear_run(path)
        path.mkdir(parents=True, exist_ok=True)
        from adapt import __version__

        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(path / MARKER_FILE, {"run_id": uuid.uuid4().hex, "created": created, "adapt": __version__})
        return cls(path, kept)

    def write_config(self, config: dict[str, Any]) -> Path:
        target = self.path / CONFIG_FILE
        atomic_write_text(target, yaml.safe_dump(config, sort_keys=False))
        return target

    def write_json(self, name: str, data: Any) -> Path:
        target = self.path / name
        atomic_write_json(target, data)
        return target
