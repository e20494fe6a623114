"""Test helpers for text models, for plugin authors' tests and adapt's own: a seeded 2-layer
BERT with a WordPiece tokenizer written as a real checkpoint, built by the transformers
backbone, and a tokenised batch for it. (Before 0.2: adapt.testing.tiny_text_*.)"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from adapt.interfaces import Batch, BuiltModel
from adapt.plugins.transformers.hf_text import TextOptions, TransformersTextBackbone


TINY_WORDS = (
    "the a of to in is was on for with at by and or not this that team won match shares fell market obama visited paris"
).split()


def write_wordpiece_vocab(folder: Path, words: Sequence[str] = TINY_WORDS) -> Path:
    """A WordPiece ``vocab.txt`` of BERT's special tokens, ``words``, letters and their ``##`` pieces."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text(
        "\n".join(
            [
                "[PAD]",
                "[UNK]",
                "[CLS]",
                "[SEP]",
                "[MASK]",
                *words,
                *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"],
                *"abcdefghijklmnopqrstuvwxyz.,",
            ]
        )
        + "\n"
    )
    return vocab


def tiny_text_checkpoint(
    folder: Path, num_labels: int = 2, *, words: Sequence[str] = TINY_WORDS, dropout: float = 0.1, seed: int = 0
) -> Path:
    """Write a seeded 2-layer BERT (hidden size 32) with a WordPiece tokenizer to ``folder``:
    a real checkpoint that ``backbone: {name: transformers, checkpoint: FOLDER}`` loads."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = write_wordpiece_vocab(folder, words)
    BertTokenizer(vocab=str(vocab)).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab.read_text().split()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    config.num_labels = num_labels
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def tiny_text_model(folder: Path, num_labels: int = 2, task: str = "text-classification") -> BuiltModel:
    """:func:`tiny_text_checkpoint` built by the generic transformers backbone (layers, head, families found)."""
    checkpoint = folder if (folder / "config.json").exists() else tiny_text_checkpoint(folder, num_labels)
    return TransformersTextBackbone().build(
        task, num_labels, checkpoint=str(checkpoint), arch=None, options=TextOptions(max_length=32)
    )


def tiny_text_batch(
    built: BuiltModel, texts: Sequence[str] = ("the team won the match", "shares fell on the market")
) -> Batch:
    """Tokenised ``texts`` with labels 0, 1, ..., for :func:`tiny_text_model`."""
    return TransformersTextBackbone().collator(built, TextOptions(max_length=32))(
        [{"text": t, "label": i % built.num_labels} for i, t in enumerate(texts)]
    )
