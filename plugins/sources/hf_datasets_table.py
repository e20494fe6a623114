"""One split of a ``datasets`` data set as the hf-datasets source reads it: its columns with
ClassLabel indices turned into names, and its images kept encoded (:class:`EncodedImage`),
each decoded once when read so a corrupt one is skipped and its size known."""

from __future__ import annotations

import io
from typing import Any

from adapt.errors import DataError
from adapt.interfaces import DataRequest


def _open_bytes(data: bytes) -> Any:
    """PIL's lazy ``Image.open`` on an image file's bytes."""
    from PIL import Image

    return Image.open(io.BytesIO(data))


class EncodedImage:
    """An image kept as its file's bytes; ``numpy.asarray`` decodes it to RGB uint8, so every
    task and backbone that takes an array takes it, and a large set is not held decoded."""

    def __init__(self, data: bytes, where: str, size: tuple[int, int]) -> None:
        self.data, self.where = data, where
        #: (width, height), found when the image was checked at read time
        self.size = size

    @classmethod
    def checked(cls, data: bytes, where: str) -> EncodedImage:
        """The image, once its pixels decoded; an exception from PIL if they do not."""
        with _open_bytes(data) as opened:
            opened.load()  # the pixel data, not only the header: a short file fails here, not mid-training
            return cls(data, where, (int(opened.width), int(opened.height)))

    def decoded(self) -> Any:
        with _open_bytes(self.data) as opened:
            return opened.convert("RGB")

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        array = np.asarray(self.decoded())
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"EncodedImage({self.where}, {len(self.data)} bytes)"


def names_of(feature: Any) -> list[str] | None:
    """A ``ClassLabel``'s names, also inside a list feature (``List(ClassLabel)``); else None."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    inner = getattr(feature, "feature", None)
    return names_of(inner) if inner is not None and not isinstance(inner, dict) else None


def named(value: Any, names: list[str] | None) -> Any:
    """A label value as its name: a ClassLabel index by its names (-1, no label, is None), a list item by item."""
    if isinstance(value, list):
        return [named(v, names) for v in value]
    if names is not None and isinstance(value, int):
        return None if value < 0 else names[value]
    return value


class Table:
    """One split's columns, read once, with label columns as names and images encoded."""

    def __init__(self, dataset: Any, split: str, request: DataRequest) -> None:
        self.dataset, self.split, self.request = dataset, split, request
        self.columns = list(dataset.column_names)

    def where(self, row: int) -> str:
        return f"{self.split} split, row {row}"

    def require(self, name: str, key: str) -> None:
        """DataError naming the config ``key`` if the split has no column ``name``."""
        if name not in self.columns:
            raise DataError(
                f"the data set's {self.split} split has no column {name!r}; its columns are: {', '.join(self.columns)}",
                hint=f"set {key} to the column's name",
            )

    def column(self, name: str, key: str) -> list[Any]:
        """The column's values (ClassLabel indices as names); DataError naming ``key`` if it is missing."""
        self.require(name, key)
        names = names_of(self.dataset.features[name])
        return [named(v, names) for v in self.dataset[name]]

    def images(self, name: str) -> list[EncodedImage | None]:
        """The image column, encoded (None where a row has no image that decodes inside the data; skipped)."""
        import datasets

        self.require(name, "data.options.image_column")
        raw = self.dataset.cast_column(name, datasets.Image(decode=False))[name]
        return [self._encoded(value, i) for i, value in enumerate(raw)]

    def _encoded(self, value: Any, row: int) -> EncodedImage | None:
        """A row's image (its bytes, or a file inside the data set's folder) once it decodes; else None, skipped."""
        if not isinstance(value, dict) or (value.get("bytes") is None and value.get("path") is None):
            self.request.skip(self.where(row), "no image")
            return None
        data = value.get("bytes")
        if data is None:
            data = self._file_bytes(value["path"], row)
            if data is None:
                return None
        try:
            return EncodedImage.checked(data, self.where(row))
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
            self.request.skip(self.where(row), f"unreadable image ({type(exc).__name__}: {exc})")
            return None

    def _file_bytes(self, claimed: str, row: int) -> bytes | None:
        """The bytes of an image stored as a path: a claim, read only inside the data set's folder."""
        root = self.request.path
        folder = (root if root.is_dir() else root.parent).resolve() if root is not None else None
        path = (folder / claimed).resolve() if folder is not None else None
        if folder is None or path is None or not path.is_relative_to(folder):
            self.request.skip(self.where(row), f"the image's path {claimed!r} lies outside the data set's folder")
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            self.request.skip(self.where(row), f"cannot read {path}: {exc.strerror}")
            return None

    def label_order(self, name: str) -> list[str] | None:
        """The ClassLabel names of column ``name`` (or of its list items), where it has them."""
        return names_of(self.dataset.features[name]) if name in self.columns else None
