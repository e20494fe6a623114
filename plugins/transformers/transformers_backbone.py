"""``transformers``: any architecture that transformers' Auto classes can build for
sequence or token classification (encoders: BERT, RoBERTa, DistilBERT, ALBERT,
ELECTRA, DeBERTa-v2, XLM-RoBERTa, MiniLM; decoders: GPT-2, Llama, ...), with no code per architecture: layers,
head, target families and graph inputs are found through the model's own API
(adapt.plugins.transformers.hf_text). Checkpoints: a hub id, a local folder, or ``pkg:<module>/<path>``."""

from __future__ import annotations

from typing import Any

from adapt import hookimpl
from adapt.plugins.transformers.hf_text import TransformersTextBackbone


class Transformers(TransformersTextBackbone):
    name = "transformers"


@hookimpl
def adapt_register_backbones(register: Any) -> None:
    register(Transformers())
