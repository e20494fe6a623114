"""``digits``: scikit-learn's 1797 handwritten digits (8x8 grey images, 10 classes).

A real labelled data set that ships inside scikit-learn, so a run needs no
files and no network. Pixels (0-16) are scaled to 0-255 uint8.
"""

from __future__ import annotations

from typing import Any

from adapt import hookimpl
from adapt.errors import DataError
from adapt.interfaces import DataRequest, DataSource, Example


class DigitsSource(DataSource):
    name = "digits"
    tasks = ("image-classification", "image-embedding")
    #: an image and its label
    fields = ("image", "label")
    options_schema = None

    def read(self, request: DataRequest) -> dict[str, list[Example]]:
        if request.path is not None:
            raise DataError(
                f"the digits data source reads no files, but data.path is {str(request.path)!r}",
                hint="remove data.path, or pick another source (image-folder)",
            )
        import numpy as np
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
        return {"train": [{"image": image, "label": str(int(target))} for image, target in zip(images, digits.target)]}


@hookimpl
def adapt_register_data_sources(register: Any) -> None:
    register(DigitsSource())
