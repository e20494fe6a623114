"""Tiny random checkpoints written to disk, for tests that must not touch a hub.

Each builder saves a real checkpoint folder (config, weights, tokenizer) that
the backbone plugins load exactly as they load a downloaded one. The weights are
seeded, so a checkpoint does not depend on which tests ran before it.
"""

from __future__ import annotations

from pathlib import Path

WORDS = "the a an of to in is was on for with at by from and or but not this that obama visited paris london market fell rose shares guitar music plays team won match".split()


def bert_checkpoint(folder: Path, num_labels: int = 2, dropout: float = 0.1, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"], *"abcdefghijklmnopqrstuvwxyz.,"]) + "\n")
    BertTokenizerFast(vocab=str(vocab)).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab.read_text().split()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, num_labels=num_labels, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def roberta_checkpoint(folder: Path, num_labels: int = 2, seed: int = 0) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 4, vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(folder))
    tokenizer = RobertaTokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=80, pad_token_id=1, num_labels=num_labels)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    return folder
