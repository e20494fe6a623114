"""Modules that moved into family packages (adapt 0.1 -> 0.2) keep their old names.

``import adapt.hf_text`` or ``python -m adapt.detection_set`` finds the module at its new
place (``adapt.plugins.transformers.hf_text``, ``adapt.plugins.detection.example_set``) with a
DeprecationWarning naming it: the very same module object, so classes, isinstance checks and
``-m`` all work. Nothing is imported until an old name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType
from typing import Any, Sequence

#: old module (under adapt.) -> where it lives now
MOVED = {
    "adapt.detection_augment": "adapt.plugins.detection.augment",
    "adapt.detection_loss": "adapt.plugins.detection.loss",
    "adapt.detection_metrics": "adapt.plugins.detection.metrics",
    "adapt.detection_post": "adapt.plugins.detection.post",
    "adapt.detection_set": "adapt.plugins.detection.example_set",
    "adapt.detector": "adapt.plugins.detection.detector",
    "adapt.bbc_interactions": "adapt.plugins.embeddings.bbc_interactions",
    "adapt.embedding": "adapt.plugins.embeddings.embedding",
    "adapt.embedding_metrics": "adapt.plugins.embeddings.metrics",
    "adapt.embedding_task": "adapt.plugins.embeddings.embedding_task",
    "adapt.recommend": "adapt.plugins.embeddings.recommend",
    "adapt.causal_lm": "adapt.plugins.transformers.causal_lm",
    "adapt.cls_last_layer": "adapt.plugins.transformers.cls_last_layer",
    "adapt.generation_check": "adapt.plugins.transformers.generation_check",
    "adapt.hf_text": "adapt.plugins.transformers.hf_text",
    "adapt.plugins.interactions_source": "adapt.plugins.embeddings.interactions_source",
    # back in core: the detection sources and the hf-datasets source share its one rule for a box
    "adapt.plugins.detection.boxes": "adapt.boxes",
}


#: module -> {old attribute: the module that holds it now}
MOVED_ATTRIBUTES = {
    "adapt.testing": {
        name: "adapt.plugins.transformers.testing"
        for name in (
            "TINY_WORDS",
            "write_wordpiece_vocab",
            "tiny_text_checkpoint",
            "tiny_text_model",
            "tiny_text_batch",
        )
    },
}


def moved_attribute(module: str, name: str) -> Any:
    """``module.name`` where it moved (a module's ``__getattr__``), with a DeprecationWarning;
    AttributeError as usual for a name that never was there."""
    target = MOVED_ATTRIBUTES.get(module, {}).get(name)
    if target is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(f"{module}.{name} moved to {target}; import it from there", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(target), name)


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module at its new place."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.target}; import it from there", DeprecationWarning, stacklevel=3)
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The module ran when it was imported at its new place."""

    def get_code(self, fullname: str) -> CodeType | None:
        """For ``python -m OLD_NAME``: the new module's code, run as ``__main__``."""
        spec = importlib.util.find_spec(self.target)
        loader = spec.loader if spec is not None else None
        return loader.get_code(self.target) if isinstance(loader, importlib.abc.InspectLoader) else None


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`MOVED` (installed on sys.meta_path by ``adapt``)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(MOVED[fullname]))


def install() -> None:
    """Put the finder on sys.meta_path once."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
