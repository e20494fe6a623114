"""``roberta``: RoBERTa encoders through transformers, for text classification
and NER. RoBERTa has no token types, so its graph takes two inputs."""

from __future__ import annotations

from typing import Any

from adapt import hookimpl
from adapt.plugins.transformers.hf_text import BERT_LAYOUT_TARGETS, TransformersTextBackbone


class Roberta(TransformersTextBackbone):
    name = "roberta"
    model_types = ("roberta", "xlm-roberta")
    tasks = ("text-classification", "token-classification")
    input_names = ("input_ids", "attention_mask")
    # word-split input (NER) needs the leading-space convention of RoBERTa's BPE
    tokenizer_kwargs = {"add_prefix_space": True}
    targets = BERT_LAYOUT_TARGETS
    position_offset = 2  # position ids start after padding_idx (1)


@hookimpl
def adapt_register_backbones(register: Any) -> None:
    register(Roberta())
