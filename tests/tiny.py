"""Tiny random checkpoints written to disk, for tests that must not touch a hub.

Each builder saves a real checkpoint folder (config, weights, tokenizer) that
the backbone plugins load exactly as they load a downloaded one. The weights are
seeded, so a checkpoint does not depend on which tests ran before it.
"""

from __future__ import annotations

from pathlib import Path

WORDS = "the a an of to in is was on for with at by from and or but not this that obama visited paris london market fell rose shares guitar music plays team won match".split()


def bert_checkpoint(folder: Path, num_labels: int = 2, dropout: float = 0.1, seed: int = 0) -> Path:
    from adapt.plugins.transformers.testing import tiny_text_checkpoint

    return tiny_text_checkpoint(folder, num_labels, words=WORDS, dropout=dropout, seed=seed)


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


#: Tiny configs of encoder architectures for the generic ``transformers`` backbone:
#: model_type -> (config overrides, tokenizer kind). Realistic switches are on
#: (DeBERTa-v2 with relative attention, ALBERT and ELECTRA with a small embedding size).
ENCODERS = {
    "distilbert": ({"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 64}, "wordpiece"),
    "albert": ({"embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}, "wordpiece"),
    "electra": ({"embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}, "wordpiece"),
    "deberta-v2": ({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64, "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_biased_input": False, "position_buckets": 16, "norm_rel_ebd": "layer_norm"}, "wordpiece"),
    "xlm-roberta": ({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 80, "pad_token_id": 1}, "bpe"),
}


def encoder_checkpoint(folder: Path, model_type: str, num_labels: int = 2, seed: int = 0) -> Path:
    """A tiny random checkpoint of ``model_type`` (a key of ENCODERS) with a tokenizer, saved to ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    overrides, kind = ENCODERS[model_type]
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _bpe_tokenizer(folder) if kind == "bpe" else _wordpiece_tokenizer(folder)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), num_labels=num_labels, **overrides)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    return folder


def _wordpiece_tokenizer(folder: Path):
    from transformers import BertTokenizer

    from adapt.plugins.transformers.testing import write_wordpiece_vocab

    tokenizer = BertTokenizer(vocab=str(write_wordpiece_vocab(folder, WORDS)))
    tokenizer.save_pretrained(folder)
    return tokenizer


def _bpe_tokenizer(folder: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 4, vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(folder))
    tokenizer = RobertaTokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    return tokenizer


#: Tiny configs of decoder architectures: GPT-2 (Conv1D projections, fused c_attn),
#: Llama (RMSNorm, rotary positions, grouped-query attention: 4 query heads, 2 key/value
#: heads of 16, the least ONNX Runtime's fused attention takes; SwiGLU) and Qwen2 (the Llama
#: layout with biased q/k/v and tied embeddings).
DECODERS = {
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128},
    "llama": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128, "tie_word_embeddings": False},
    "qwen2": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128, "tie_word_embeddings": True},
}


def decoder_tokenizer(folder: Path, texts: list[str] | None = None):
    """A byte-level BPE trained here on ``texts`` (default: the test words), saved as
    GPT-2's tokenizer: end-of-text ``<|endoftext|>`` and no padding token, as GPT-2 ships."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts or [" ".join(WORDS)] * 4, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(folder))
    tokenizer = GPT2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    return tokenizer


def decoder_checkpoint(folder: Path, model_type: str, *, causal_lm: bool = False, num_labels: int = 2, seed: int = 0, texts: list[str] | None = None) -> Path:
    """A tiny random decoder (a key of DECODERS) with its tokenizer, saved to ``folder``:
    a causal LM, or a sequence classifier over ``num_labels``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    tokenizer = decoder_tokenizer(folder, texts)
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, **DECODERS[model_type])
    if causal_lm:
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    else:
        config.num_labels = num_labels
        AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    return folder
