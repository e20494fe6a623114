"""ONNX files past protobuf's 2 GB limit, the same way as small ones.

A serialised protobuf message cannot pass 2 GB, so a 0.6B-parameter decoder in fp32
(2.5 GB of weights) cannot be one ``.onnx`` file. ONNX's answer is *external data*:
the graph stays in ``model.onnx`` and the weights go to ``model.onnx.data`` beside it
(the name ONNX Runtime's own tools use). Every stage that writes, copies, measures or
removes an exported file goes through this module, so a large decoder takes the same
path as a 9 MB MobileNet: one data file per model, its size counted with the graph's,
and a location read from a file checked to stay inside that file's folder.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal

from adapt.errors import ExportError

if TYPE_CHECKING:
    import onnx

#: Tensors past this many bytes in all go to a data file: protobuf refuses a message past
#: 2 GiB, and the graph, its attributes and the metadata need headroom under that.
EXTERNAL_ABOVE_BYTES = 1_800_000_000
#: ``export.options.onnx.external_data``: ``auto`` (past EXTERNAL_ABOVE_BYTES) or ``always``.
ExternalData = Literal["auto", "always"]
_ALIGN = 4096  # offsets in the data file, aligned so ONNX Runtime can map the weights


def data_name(path: Path) -> str:
    """The data file's name for ``path``: ``model.onnx`` -> ``model.onnx.data``."""
    return path.name + ".data"


def _tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


def _location(tensor: onnx.TensorProto) -> str:
    return next(entry.value for entry in tensor.external_data if entry.key == "location")


def _inside(folder: Path, location: str, source: Path) -> Path:
    """``folder / location``, which must stay inside ``folder``: a location in a file is a claim."""
    target = (folder / location).resolve()
    if Path(location).is_absolute() or not target.is_relative_to(folder.resolve()):
        raise ExportError(
            f"{source} names external data at {location!r}, outside its folder {folder}",
            hint="an ONNX file's external data must be a relative path beside it; re-export the model with adapt",
        )
    return folder / location


def data_files(path: Path) -> list[Path]:
    """The external data files ``path`` uses (none for a self-contained file)."""
    if not path.is_file():
        return []
    stat = path.stat()
    locations = _locations(str(path), stat.st_mtime_ns, stat.st_size)
    return [_inside(path.parent, location, path) for location in locations]


@functools.lru_cache(maxsize=64)
def _locations(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The data locations a file names, read once per version of the file (a self-contained 1 GB
    graph is parsed whole to learn that it names none, and the export asks several times)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return tuple(sorted({_location(t) for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL}))


def total_bytes(path: Path) -> int:
    """The size of the model as shipped: the graph file and its data files."""
    return path.stat().st_size + sum(p.stat().st_size for p in data_files(path) if p.is_file())


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the tensors held in ``model`` itself (external ones not counted)."""
    import onnx

    return sum(t.ByteSize() for t in _tensors(model) if t.data_location != onnx.TensorProto.EXTERNAL)


def wants_external(model: onnx.ModelProto, setting: str = "auto") -> bool:
    """Whether ``model`` must be saved with a data file: ``always``, or past the size limit."""
    return setting == "always" or tensor_bytes(model) > EXTERNAL_ABOVE_BYTES


def remove(path: Path) -> None:
    """Remove an adapt-written model file and its data files (missing ones are fine; a file that
    is not a whole model, left by a quantiser that failed, goes with its ``.data`` name only)."""
    try:
        found = data_files(path)
    except Exception:  # noqa: BLE001 - a damaged or partial file names no data file to trust
        found = []
    for data in found:
        data.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    Path(str(path) + ".data").unlink(missing_ok=True)  # a data file left by a save that failed


def save(model: onnx.ModelProto, path: Path, setting: str = "auto") -> Path:
    """Save ``model`` to ``path``, its tensors in ``<name>.data`` where :func:`wants_external`
    says so. Replaces an earlier file of the same name and its data (ONNX appends to an
    existing data file). Saving to a data file moves the tensors out of ``model``."""
    import onnx

    external = wants_external(model, setting)
    remove(path)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name(path),
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Rewrite ``path``'s graph (its metadata, say) from ``model`` loaded without its external
    data: the data file is left as it is, so no weight is read or written again."""
    import onnx

    onnx.save_model(model, str(path))


def consolidate(source: Path, path: Path, setting: str = "auto") -> Path:
    """Move what an exporter wrote at ``source`` (one file, or a graph with one data file per
    tensor, as torch's exporter writes past 2 GB) to ``path`` with at most one data file,
    streaming tensor by tensor so the weights are never all in memory twice."""
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    scattered = [t for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not scattered:
        if wants_external(model, setting):
            return save(onnx.load(str(source)), path, setting)
        remove(path)
        shutil.move(str(source), str(path))
        return path
    remove(path)
    with open(path.parent / data_name(path), "wb") as out:
        for tensor in scattered:
            _append(tensor, source.parent, out, data_name(path), source)
    save_graph(model, path)
    return path


def _append(tensor: onnx.TensorProto, folder: Path, out, location: str, source: Path) -> None:  # noqa: ANN001
    """Copy one external tensor's bytes into ``out`` (aligned) and point the tensor there."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    with open(_inside(folder, info["location"], source), "rb") as data:
        data.seek(int(info.get("offset", 0)))
        blob = data.read(int(info["length"])) if "length" in info else data.read()
    out.seek(-out.tell() % _ALIGN, 1)
    offset = out.tell()
    out.write(blob)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(blob)))):
        tensor.external_data.add(key=key, value=value)


def copy(source: Path, target: Path) -> Path:
    """Copy a model and its data files into ``target``'s folder (the data files keep their names,
    which the graph refers to)."""
    for data in data_files(source):
        shutil.copyfile(data, target.parent / data.name)
    shutil.copyfile(source, target)
    return target
