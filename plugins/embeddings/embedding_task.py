"""What every embedding task shares (image-embedding, text-embedding, recommendation, or a
plugin's): head options bound by ``configure``, a head of ``dim`` outputs, parity by
cosine, and the export's normalised ``embedding`` output. A task plugin may subclass
:class:`EmbeddingTask` and set ``options_schema`` (a pydantic model with a ``dim``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel

from adapt.interfaces import Task

if TYPE_CHECKING:
    import numpy as np
    import torch

#: The export's gallery (or index): one embedding per entry, and the entries' names.
GALLERY, GALLERY_IDS = "gallery.npy", "gallery.json"
#: An exported form's embeddings must keep at least this cosine with the merged model's.
MIN_COSINE = 0.9999


class EmbeddingTask(Task):
    """What the embedding tasks share: head options bound by ``configure``, a head of
    ``dim`` outputs, cosine parity, and the export's normalised ``embedding`` output."""

    options_schema: type[BaseModel] = BaseModel
    agreement_name = "min_cosine"
    min_agreement = MIN_COSINE

    def __init__(self, options: Any = None) -> None:
        self.options: Any = options if options is not None else self.options_schema()

    def configure(self, options: Any) -> Any:
        return type(self)(options)

    def head_size(self, num_labels: int) -> int:
        return int(self.options.dim)

    def agreement(self, reference: Sequence[Sequence[float]], candidate: Sequence[Sequence[float]]) -> float:
        return smallest_cosine(reference, candidate)

    def graph_outputs(self, model: torch.nn.Module) -> tuple[torch.nn.Module, tuple[str, ...]]:
        from adapt.plugins.embeddings.embedding import NormalisedEmbedding

        return NormalisedEmbedding(model, self.embedding_columns()), ("embedding",)

    def embedding_columns(self) -> int | None:
        """How many leading columns of the model's output are the embedding (None: all)."""
        return None

    def final_predictions(
        self, outputs: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
    ) -> list[list[float]]:
        return outputs["embedding"].tolist()


def smallest_cosine(reference: Sequence[Sequence[float]], candidate: Sequence[Sequence[float]]) -> float:
    """The smallest cosine between two forms' embeddings of one example (1.0: same directions)."""
    import numpy as np

    a, b = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if not len(a):
        return 1.0
    cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(cosines.min())


def npy_bytes(array: Any) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()
