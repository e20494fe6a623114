"""``image-embedding``: a model that maps an image to a vector, trained on identities
(one label per identity: a person, a writer, a product) so that images of one identity
lie close. Face recognition is the archetype.

The backbone builds its model with ``head.dim`` outputs (its head is the projection);
``wrap_model`` adds one learnt centre per training identity for the margin loss
(adapt.plugins.embeddings.embedding: ArcFace or CosFace). Predictions are the L2-normalised embeddings;
metrics (adapt.plugins.embeddings.metrics): verification ``auc`` (the primary metric),
``tar@far1e-3`` and ``verification_accuracy`` on pairs drawn from the split, and
identification ``top1`` / ``top5``. The export's ``embedding`` output is normalised in
the graph, and a gallery (one mean embedding per training identity) is written beside it.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.plugins.embeddings.embedding_task import GALLERY, GALLERY_IDS, EmbeddingTask, npy_bytes
from adapt.errors import DataError

if TYPE_CHECKING:
    import torch

    from adapt.interfaces import BuiltModel

#: text-embedding: characters of each document kept in the index, to show a hit.
SNIPPET = 200


class HeadOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(128, ge=2, le=4096, description="length of the embedding")
    loss: Literal["arcface", "cosface"] = Field("arcface", description="margin loss over the training identities")
    margin: float | None = Field(
        None,
        ge=0,
        le=1.5,
        description="the margin: radians added to the true identity's angle (arcface, default 0.5) or subtracted from "
        "its cosine (cosface, default 0.35)",
    )
    scale: float = Field(30.0, gt=0, le=128, description="the logits' scale s (cosines times s)")


class ImageEmbedding(EmbeddingTask):
    name = "image-embedding"
    pipeline_tag = "image-feature-extraction"
    primary_metric = "auc"
    options_schema = HeadOptions
    fields = ("image", "label")
    #: predict prints the nearest identities of the export's gallery, with their cosines
    postprocess = MappingProxyType({"kind": "nearest-neighbours", "key": "identity"})

    def embedding_columns(self) -> int | None:
        return int(self.options.dim)  # the rest are the cosines to the identity centres

    def draw(
        self,
        examples: Sequence[Mapping[str, Any]],
        predictions: Sequence[Sequence[float]],
        label_names: Sequence[str],
        folder: Path,
    ) -> dict[str, Path]:
        """A few test images and their nearest test images by cosine."""
        from adapt.plugins.embeddings.neighbours_picture import draw_neighbours

        return draw_neighbours(examples, predictions, label_names, folder)

    def label_names(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        for i, example in enumerate(examples):
            if "image" not in example or example.get("label") in (None, ""):
                raise DataError(
                    f"example {i} needs `image` and `label` (its identity)",
                    hint="read identities with data.source: image-folder, one sub-folder per identity",
                )
        return sorted({str(e["label"]) for e in examples})

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        # an identity unseen in training is still a valid query: it only has no centre, so
        # it is marked -1 (the loss never sees it: val and test are only embedded)
        return {**example, "label": index.get(str(example["label"]), -1)}

    def wrap_model(self, built: BuiltModel, num_labels: int) -> BuiltModel:
        from adapt.plugins.embeddings.embedding import EmbeddingModel, wrapped

        return wrapped(built, EmbeddingModel(built.model, self.options.dim, num_labels), new=("centres",))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from adapt.plugins.embeddings.embedding import margin_loss

        margin = (
            self.options.margin
            if self.options.margin is not None
            else (0.5 if self.options.loss == "arcface" else 0.35)
        )
        return margin_loss(logits[:, self.options.dim :], labels, self.options.loss, margin, self.options.scale)

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[list[float]], list[int]]:
        import torch.nn.functional as F

        return F.normalize(logits[:, : self.options.dim].float(), dim=-1).tolist(), labels.tolist()

    def metrics(
        self, predictions: Sequence[Sequence[float]], references: Sequence[int], label_names: Sequence[str]
    ) -> dict[str, float]:
        import numpy as np

        from adapt.plugins.embeddings.metrics import identification, verification

        embeddings, ids = np.asarray(predictions, dtype=np.float32), np.asarray(references)
        return {**verification(embeddings, ids), **identification(embeddings, ids), "examples": float(len(ids))}

    def gallery(
        self,
        predictions: Sequence[Sequence[float]],
        references: Sequence[int],
        label_names: Sequence[str],
        examples: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """One entry per training identity: its embeddings' mean, normalised again
        (``gallery.npy``, float32, identities x dim), and the identities in that order
        (``gallery.json``). A query's nearest entries are its likeliest identities."""
        import numpy as np

        embeddings, ids = np.asarray(predictions, dtype=np.float32), np.asarray(references)
        known = [i for i in range(len(label_names)) if np.any(ids == i)]
        means = np.stack([embeddings[ids == i].mean(axis=0) for i in known])
        means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-12
        return {
            GALLERY: npy_bytes(means),
            GALLERY_IDS: {
                "ids": [label_names[i] for i in known],
                "dim": int(means.shape[1]),
                "enrolled": {label_names[i]: int(np.sum(ids == i)) for i in known},
            },
        }


class TextHeadOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(
        0,
        ge=0,
        le=4096,
        description="a new linear projection to this size after pooling; 0: none, the pooled hidden state is the "
        "embedding (so the untuned model is a fair baseline)",
    )
    loss: Literal["contrastive"] = Field(
        "contrastive",
        description="in-batch negatives: each query's own positive against every other positive in the batch "
        "(InfoNCE, multiple-negatives ranking)",
    )
    temperature: float = Field(
        0.05, gt=0, le=1, description="the softmax temperature of the contrastive loss (cosines divided by it)"
    )


class TextEmbedding(EmbeddingTask):
    """``text-embedding``: (query, positive) pairs, such as a headline and its article,
    trained with in-batch negatives so that a query lies nearest its own positive.

    A batch of pairs is laid out (``flatten``) as its queries then its positives, each
    a text with ``label`` 0 (query) or 1 (positive), which every text backbone collates.
    Metrics: retrieval of each query's positive among all positives of the split
    (``recall@1/5/10``, ``mrr``, ``ndcg@10``; ``recall@10`` is the primary one); the
    untuned model's figures are measured on the test split before training
    (``metrics.baseline``). The export's gallery is the index of the training split's
    documents (``gallery.npy`` with ``gallery.json``: each document's opening words)."""

    name = "text-embedding"
    pipeline_tag = "sentence-similarity"
    primary_metric = "recall@10"
    options_schema = TextHeadOptions
    labelled = False
    baseline = True
    fields = ("query", "positive")
    #: predict prints the nearest documents of the export's index (a query is a text)
    postprocess = MappingProxyType({"kind": "nearest-neighbours", "key": "document"})

    def label_names(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        for i, example in enumerate(examples):
            if not str(example.get("query") or "").strip() or not str(example.get("positive") or "").strip():
                raise DataError(
                    f"example {i} needs a non-empty `query` and `positive`",
                    hint="give (query, positive) pairs: jsonl with data.query_column / data.positive_column, or "
                    "text-folder with data.options.prompt_lines (first lines: the query)",
                )
        return []

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        return dict(example)

    def flatten(self, examples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """A batch of pairs as texts: the queries (label 0), then their positives (label 1)."""
        return [{"text": e["query"], "label": 0} for e in examples] + [
            {"text": e["positive"], "label": 1} for e in examples
        ]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from adapt.plugins.embeddings.embedding import info_nce

        return info_nce(logits[labels == 0], logits[labels == 1], self.options.temperature)

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[list[float]], list[int]]:
        import torch.nn.functional as F

        return F.normalize(logits.float(), dim=-1).tolist(), labels.tolist()

    def metrics(
        self, predictions: Sequence[Sequence[float]], references: Sequence[int], label_names: Sequence[str]
    ) -> dict[str, float]:
        import numpy as np

        from adapt.plugins.embeddings.metrics import retrieval

        embeddings, roles = np.asarray(predictions, dtype=np.float32), np.asarray(references)
        queries, documents = embeddings[roles == 0], embeddings[roles == 1]  # in pair order: batches keep it
        return {**retrieval(queries, documents, np.arange(len(queries))), "queries": float(len(queries))}

    def example_scores(
        self, predictions: Sequence[Sequence[float]], references: Sequence[int], label_names: Sequence[str]
    ) -> list[float]:
        """Per query, 1 where its positive ranks in the top 10 of the split's positives:
        their mean is recall@10, so the int8 gate judges a drop paired over the queries."""
        import numpy as np

        from adapt.plugins.embeddings.metrics import ranks

        embeddings, roles = np.asarray(predictions, dtype=np.float32), np.asarray(references)
        queries, documents = embeddings[roles == 0], embeddings[roles == 1]
        return [float(r <= 10) for r in ranks(queries, documents, np.arange(len(queries)))]

    def gallery(
        self,
        predictions: Sequence[Sequence[float]],
        references: Sequence[int],
        label_names: Sequence[str],
        examples: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """The search index: the training split's positives (``gallery.npy``) and, in that
        order, their opening words (``gallery.json`` ``ids``, :data:`SNIPPET` characters)."""
        import numpy as np

        documents = np.asarray(predictions, dtype=np.float32)[np.asarray(references) == 1]
        snippets = [" ".join(str(e["positive"]).split())[:SNIPPET] for e in examples]
        return {
            GALLERY: npy_bytes(documents),
            GALLERY_IDS: {"ids": snippets, "dim": int(documents.shape[1]), "kind": "documents"},
        }


@hookimpl
def adapt_register_tasks(register: Any) -> None:
    register(ImageEmbedding())
    register(TextEmbedding())
