"""``recommendation``: two-tower retrieval over a catalogue of items with text.

The item tower is a text-embedding model (``model_task``: any text backbone builds it,
trained with any method); the user tower pools a user's history: the normalised mean of
the vectors of the user's last ``head.history`` items (adapt.plugins.embeddings.recommend). Trained with
in-batch negatives: each user's next item against every other item of the batch, the
user's own history left out, at ``head.temperature``.

Data come from the ``interactions`` source (leave-last-out splits; val and test also
hold the whole catalogue). A batch of examples is laid out (``flatten``) as one text per
distinct item in it, and each text's label is one row ``[item, in catalogue, role for
user 1, role for user 2, ...]`` (role 0: none, 1: history, 2: target), so the loss and
the metrics know which items pool into which user without a second input.

Metrics: each user's held-out item ranked among the whole catalogue, the pooled history
left out (``recall@1/5/10``, ``mrr``, ``ndcg@10``; ``recall@10`` primary), next to the
same figures for a popularity ranking from the training interactions (``metrics.baseline``).
The export: the item tower (ONNX, int8, .ort, as every model), the item index
(``gallery.npy``, ``gallery.json``) and the user tower over that index (``user_tower.onnx``).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from adapt import hookimpl
from adapt.errors import DataError
from adapt.plugins.embeddings.embedding_task import GALLERY, GALLERY_IDS, EmbeddingTask, npy_bytes
from adapt.interfaces import Predictor

if TYPE_CHECKING:
    import torch

#: A text's role for one user of the batch (a column of its label row).
NONE, HISTORY, TARGET = 0, 1, 2
#: The label row's leading columns: the item's index, whether it is a catalogue entry.
ITEM, IN_CATALOGUE, ROLES = 0, 1, 2


class RecommendationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(
        0,
        ge=0,
        le=4096,
        description="a new linear projection of the item vectors to this size; 0: none, the pooled hidden state",
    )
    loss: Literal["contrastive"] = Field(
        "contrastive", description="in-batch negatives: a user's next item against every other item of the batch"
    )
    temperature: float = Field(
        0.05, gt=0, le=1, description="the softmax temperature of the loss (cosines divided by it)"
    )
    history: int = Field(
        10,
        ge=1,
        le=1000,
        description="the last N items of a user's history pool into the user's vector (and are not recommended again)",
    )


class Recommendation(EmbeddingTask):
    name = "recommendation"
    primary_metric = "recall@10"
    options_schema = RecommendationOptions
    labelled = False
    model_task = "text-embedding"
    gallery_split = "test"  # the catalogue: every item, in val and test
    baseline_name = "popularity"
    #: every example holds its catalogue: a user's (``history``, ``target``) or an item's (``item``)
    fields = ("catalogue",)
    #: predict reads a history of item ids and prints the next items, from the export's user tower and item index
    postprocess = MappingProxyType({"kind": "recommend"})

    def predict(self, predictor: Predictor, inputs: Sequence[str], settings: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The user tower and item index of the export answer (the PyTorch model adds nothing to them)."""
        from adapt.onnx_predict import PredictError, recommend

        if predictor.export_dir is None:
            raise PredictError(
                "the run has no export yet, and the recommendations come from its item index: export it first"
            )
        return [recommend(source, predictor.export_dir) for source in inputs]

    def label_names(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        for i, example in enumerate(examples):
            user = "target" in example and isinstance(example.get("history"), list)
            if "catalogue" not in example or not (user or "item" in example):
                raise DataError(
                    f"example {i} is neither a user (history, target) nor a catalogue item",
                    hint="read recommendation data with data.source: interactions",
                )
        return []

    def encode(self, example: Mapping[str, Any], index: Mapping[str, int]) -> dict[str, Any]:
        return dict(example)

    def flatten(self, examples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One text per distinct item of the batch, labelled ``[item, in catalogue, roles...]``."""
        users = [e for e in examples if "target" in e]
        rows: dict[int, list[int]] = {}

        def row(item: int) -> list[int]:
            return rows.setdefault(item, [item, 0] + [NONE] * len(users))

        for example in examples:
            if "item" in example:
                row(example["item"])[IN_CATALOGUE] = 1
        for column, user in enumerate(users, ROLES):
            for item in self.pooled(user):
                row(item)[column] = HISTORY
            row(user["target"])[column] = TARGET
        texts = examples[0]["catalogue"].texts if examples else ()
        return [{"text": texts[item], "label": label} for item, label in rows.items()]

    def pooled(self, user: Mapping[str, Any]) -> list[int]:
        """The history items that make the user's vector (the last ``head.history``)."""
        return [i for i in user["history"][-self.options.history :] if i != user["target"]]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each user's target among every item of the batch, its history masked out."""
        import torch.nn.functional as F

        items = F.normalize(logits.float(), dim=-1)
        roles = labels[:, ROLES:]
        history, target = roles == HISTORY, roles == TARGET
        users = (history.any(0) & target.any(0)).nonzero().flatten()
        if not len(users):
            return logits.sum() * 0.0
        vectors = F.normalize(history[:, users].T.float() @ items, dim=-1)
        scores = (vectors @ items.T / self.options.temperature).masked_fill(history[:, users].T, float("-inf"))
        return F.cross_entropy(scores, target[:, users].float().argmax(0))

    def decode(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[list[float]], list[dict[str, Any]]]:
        """Per text: its normalised vector, and as reference its item, whether it is a
        catalogue entry, and the users (their pooled items) whose target it is."""
        import torch.nn.functional as F

        table = labels.tolist()
        references: list[dict[str, Any]] = [
            {"item": r[ITEM], "catalogue": bool(r[IN_CATALOGUE]), "users": []} for r in table
        ]
        for column in range(ROLES, labels.shape[1]):
            target = [k for k, r in enumerate(table) if r[column] == TARGET]
            if target:
                references[target[0]]["users"].append([r[ITEM] for r in table if r[column] == HISTORY])
        return F.normalize(logits.float(), dim=-1).tolist(), references

    def metrics(
        self,
        predictions: Sequence[Sequence[float]],
        references: Sequence[Mapping[str, Any]],
        label_names: Sequence[str],
    ) -> dict[str, float]:
        import numpy as np

        from adapt.plugins.embeddings.metrics import rank_metrics
        from adapt.plugins.embeddings.recommend import rank_of_targets, user_vectors

        vectors: dict[int, Sequence[float]] = {}
        for vector, reference in zip(predictions, references):
            vectors.setdefault(reference["item"], vector)
        catalogue = sorted({r["item"] for r in references if r["catalogue"]}) or sorted(vectors)
        column = {item: k for k, item in enumerate(catalogue)}
        queries = [(history, r["item"]) for r in references for history in r["users"]]
        if not queries:
            return {**rank_metrics(np.array([])), "users": 0.0}
        items = np.asarray([vectors[i] for i in catalogue], dtype=np.float32)
        known = np.asarray([vectors[i] for i in vectors], dtype=np.float32)
        position = {item: k for k, item in enumerate(vectors)}
        users = user_vectors(known, [[position[i] for i in history] for history, _ in queries])
        seen = [[column.get(i, -1) for i in history] for history, _ in queries]
        ranks = rank_of_targets(users @ items.T, seen, [column.get(target, -1) for _, target in queries])
        return {**rank_metrics(ranks), "users": float(len(queries))}

    def baseline_metrics(
        self, train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]]
    ) -> dict[str, float]:
        """The popularity ranking: items by how many training users interacted with them,
        scored on the test users like the model (their pooled history left out)."""
        import numpy as np

        from adapt.plugins.embeddings.metrics import rank_metrics
        from adapt.plugins.embeddings.recommend import popularity_scores, rank_of_targets

        size = max((len(e["catalogue"].ids) for e in test[:1]), default=0)
        counts = popularity_scores(((e["user"], i) for e in train for i in (*e["history"], e["target"])), size)
        users = [e for e in test if "target" in e]
        ranks = rank_of_targets(
            np.tile(counts, (len(users), 1)), [self.pooled(u) for u in users], [u["target"] for u in users]
        )
        return {**rank_metrics(ranks), "users": float(len(users))}

    def gallery(
        self,
        predictions: Sequence[Sequence[float]],
        references: Sequence[Sequence[int]],
        label_names: Sequence[str],
        examples: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """The item index: every catalogue item's vector (``gallery.npy``, in catalogue
        order), their ids (``gallery.json``) and the user tower over them (``user_tower.onnx``)."""
        import numpy as np

        from adapt.plugins.embeddings.recommend import USER_TOWER, export_user_tower

        ids = examples[0]["catalogue"].ids if examples else ()
        vectors = {int(r[ITEM]): v for v, r in zip(predictions, references) if r[IN_CATALOGUE]}
        if sorted(vectors) != list(range(len(ids))):
            raise DataError(
                f"the gallery split holds {len(vectors)} of the catalogue's {len(ids)} items",
                hint="read recommendation data with data.source: interactions",
            )
        index = np.asarray([vectors[i] for i in range(len(ids))], dtype=np.float32)
        return {
            GALLERY: npy_bytes(index),
            GALLERY_IDS: {
                "ids": list(ids),
                "dim": int(index.shape[1]),
                "kind": "items",
                "history": self.options.history,
            },
            USER_TOWER: export_user_tower(index),
        }


@hookimpl
def adapt_register_tasks(register: Any) -> None:
    register(Recommendation())
