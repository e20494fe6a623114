"""``item-table``: the item tower of ``task: recommendation`` for items without text: one
learnt vector per item id, looked up in a table.

The table's rows are addressed by a stable hash of the item id (FNV-1a, 64 bits, modulo
``buckets``), so the backbone needs no vocabulary and the catalogue may grow; two ids
that share a row share a vector (with the default 65,536 rows and 10,000 items, about
one id in 13 shares its row with another). The table is new (no checkpoint), so it trains
under every method: use ``method: freeze``. The exported graph maps ``item_ids`` (int64,
the hashed rows) to the vector; a device looks items up in the exported index instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import ConfigError
from adapt.interfaces import Backbone, Batch, BuiltModel, Example, OnnxIO

if TYPE_CHECKING:
    import torch

TASK = "recommendation"
FNV_OFFSET, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


class ItemTableOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(64, ge=2, le=4096, description="length of each item's vector (head.dim, if set, projects it)")
    buckets: int = Field(65536, ge=16, le=2**24, description="rows of the table; item ids are hashed into them")


def row_of(item: str, buckets: int) -> int:
    """The table row of an item id: FNV-1a (64 bits) of its UTF-8 bytes, modulo ``buckets``."""
    value = FNV_OFFSET
    for byte in item.encode("utf-8"):
        value = ((value ^ byte) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return value % buckets


def _tower(buckets: int, width: int, dim: int) -> torch.nn.Module:
    from torch import nn

    class ItemTower(nn.Module):
        """``item_ids`` (rows of the table) -> the item's vector (projected to ``dim`` if set)."""

        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(buckets, width)
            nn.init.normal_(self.table.weight, std=0.1)
            self.projection = nn.Linear(width, dim) if dim else None

        def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
            vectors = self.table(item_ids)
            return self.projection(vectors) if self.projection is not None else vectors

    return ItemTower()


class ItemTableBackbone(Backbone):
    name = "item-table"
    tasks = (TASK,)
    families: tuple[str, ...] = ()
    options_schema = ItemTableOptions

    def build(
        self, task: str, num_labels: int, *, checkpoint: str | None, arch: str | None, options: Any
    ) -> BuiltModel:
        if checkpoint or arch:
            raise ConfigError(
                "backbone item-table has no checkpoint and no arch: its table is learnt from the interactions",
                hint="remove backbone.checkpoint and backbone.arch",
            )
        options = options or ItemTableOptions()
        model = _tower(options.buckets, options.width, num_labels)
        new = tuple(name for name, _ in model.named_parameters())
        return BuiltModel(model, task, num_labels, head=("projection",) if num_labels else (), new_parameters=new)

    def collator(self, built: BuiltModel, options: Any) -> Callable[[Sequence[Example]], Batch]:
        import torch

        buckets = (options or ItemTableOptions()).buckets

        def collate(examples: Sequence[Example]) -> Batch:
            batch = {"item_ids": torch.tensor([row_of(str(e["text"]), buckets) for e in examples], dtype=torch.long)}
            if examples and "label" in examples[0]:
                batch["labels"] = torch.tensor([e["label"] for e in examples])
            return batch

        return collate

    def example_inputs(self, built: BuiltModel, batch_size: int = 2) -> Batch:
        import torch

        return {"item_ids": torch.arange(batch_size, dtype=torch.long)}

    def onnx_io(self, built: BuiltModel) -> OnnxIO:
        return OnnxIO(("item_ids",), ("logits",), {"item_ids": {0: "batch"}, "logits": {0: "batch"}})

    def save_preprocessing(self, built: BuiltModel, options: Any, folder: Path) -> dict[str, Any]:
        """preprocess.json: a device feeds ``item_ids``, each id's row by :func:`row_of`."""
        return {
            "kind": "items",
            "buckets": (options or ItemTableOptions()).buckets,
            "hash": "fnv1a-64 of the id's UTF-8 bytes, modulo buckets",
        }

    def default_targets(self, method: str) -> list[str]:
        return []


@hookimpl
def adapt_register_backbones(register: Any) -> None:
    register(ItemTableBackbone())
