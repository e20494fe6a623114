"""adapt: adapt a pretrained model with few parameters, merge, and export it for the edge.

Plugin authors need one import: ``from adapt import hookimpl``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from adapt import moved
from adapt.hookspecs import hookimpl

moved.install()  # modules that moved into family packages keep their old names (adapt.moved)

try:
    __version__ = version("adapt-edge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["hookimpl", "__version__"]
