"""``image-folder``: images in ``<label>/*`` folders, or ``train/<label>/*`` beside
``test/<label>/*`` (and optionally ``val/``). Each image's header is checked when
the data is read; an unreadable or corrupt image is skipped and counted in the
report. Examples carry the image's path; pixels are read when batched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.data import label_folder_files, read_split_folders
from adapt.errors import DataError
from adapt.interfaces import DataRequest, DataSource, Example

IMAGE_SUFFIXES = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"]


class ImageFolderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suffixes: list[str] = Field(IMAGE_SUFFIXES, min_length=1, description="image file suffixes to read (lower case)")


def readable(path: Path) -> str | None:
    """None if PIL can parse the image's header, else why not."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
        return f"{type(exc).__name__}: {exc}"
    return None


LAYOUT = "<data.path>/<label>/<image>, or train/ and test/ folders of those"


def read_image_folders(root: Path, request: DataRequest, options: ImageFolderOptions) -> list[Example]:
    examples = []
    for file, label in label_folder_files(root, options.suffixes, LAYOUT):
        problem = readable(file)
        if problem:
            request.skip(str(file), problem)
        else:
            examples.append({"image": file, "label": label})
    if not examples:
        raise DataError(f"no readable images under {root}", hint=f"supported suffixes: {', '.join(options.suffixes)}")
    return examples


class ImageFolderSource(DataSource):
    name = "image-folder"
    tasks = ("image-classification", "image-embedding")
    #: an image and its folder's name as label
    fields = ("image", "label")
    options_schema = ImageFolderOptions

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        options = request.options or ImageFolderOptions()
        return read_split_folders(request.path, lambda folder: read_image_folders(folder, request, options), LAYOUT)


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(ImageFolderSource())
