"""Memory-lean training of decoders: gradient checkpointing (the same loss and gradients,
a lower peak) and sequence packing (fewer rows, each example attending only to itself:
the same loss as the unpacked batch), on tiny random decoders and through `adapt run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from adapt.cli import make_cli
from adapt.host import make_host
from tests.tiny import decoder_checkpoint

TEXTS = [f"the team won the match {i % 7}" + " again" * (i % 5) if i % 2 else f"shares fell {i % 5}" for i in range(48)]


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lean")
    return {t: decoder_checkpoint(root / t, t, causal_lm=True, texts=TEXTS) for t in ("gpt2", "llama", "qwen2")}


def _built(checkpoint: Path):
    from adapt.plugins.transformers.hf_text import TextOptions
    from adapt.plugins.transformers.transformers_backbone import Transformers

    backbone = Transformers()
    built = backbone.build("text-generation", 0, checkpoint=str(checkpoint), arch=None, options=TextOptions(max_length=64))
    return backbone, built


def _loss(built, batch) -> torch.Tensor:
    from adapt.plugins.transformers.generation import TextGeneration

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return TextGeneration().loss(built.model(**inputs), batch["labels"])


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "qwen2"])
def test_a_packed_batch_has_fewer_rows_and_the_same_loss_as_the_unpacked_one(lms, model_type):
    from adapt.plugins.transformers.generation import TextGeneration
    from adapt.plugins.transformers.hf_text import TextOptions

    backbone, built = _built(lms[model_type])
    built.model.eval()
    rows = [{"text": t} for t in TEXTS[:8]] + [{"prompt": "the team", "completion": " won the match"}] * 2
    batch = backbone.collator(built, TextOptions(max_length=64))(rows)
    packed = TextGeneration().pack(batch, 64)
    assert packed["input_ids"].shape[0] < batch["input_ids"].shape[0]
    assert "attention_mask" not in packed  # the segments come from the restarting positions
    learnt = (batch["labels"][:, 1:] != -100).sum()
    assert (packed["labels"] != -100).sum() == learnt  # every learnt token once, none across a boundary
    with torch.no_grad():
        assert torch.allclose(_loss(built, packed), _loss(built, batch), atol=1e-5)


def test_a_sequence_cannot_see_the_one_packed_before_it(lms):
    """The second example's logits are the same whatever example precedes it in the row."""
    from adapt.plugins.transformers.causal_lm import pack
    from adapt.plugins.transformers.hf_text import TextOptions

    backbone, built = _built(lms["llama"])
    built.model.eval()
    collate = backbone.collator(built, TextOptions(max_length=64))
    first = pack(collate([{"text": "shares fell"}, {"text": "the team won"}]), 64)
    second = pack(collate([{"text": "the market rose again and again"}, {"text": "the team won"}]), 64)
    assert first["input_ids"].shape[0] == second["input_ids"].shape[0] == 1
    n = int((first["position_ids"][0] == 0).nonzero()[1])  # where the second sequence starts
    m = int((second["position_ids"][0] == 0).nonzero()[1])
    with torch.no_grad():
        a = built.model(input_ids=first["input_ids"], position_ids=first["position_ids"])[0, n : n + 3]
        b = built.model(input_ids=second["input_ids"], position_ids=second["position_ids"])[0, m : m + 3]
    assert torch.allclose(a, b, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_and_keeps_far_fewer_activations(tmp_path):
    """A decoder whose activations dominate (8 layers, 256 tokens, batch 8)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from adapt.plugins.methods.lora import LoRA, LoRAOptions

    folder = tmp_path / "llama"
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=300, hidden_size=128, intermediate_size=512, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    from tests.tiny import decoder_tokenizer

    decoder_tokenizer(folder)
    _, built = _built(folder)
    LoRA().apply(built, LoRAOptions(r=4, targets="all-linear", dropout=0.0), [])
    built.model.train()
    ids = torch.randint(3, 300, (8, 256), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(256).expand(8, 256), "labels": ids}

    weights = {p.untyped_storage().data_ptr() for p in built.model.parameters()}

    def step() -> tuple[float, list[torch.Tensor], int]:
        """The loss, the gradients, and the bytes of activations kept for the backward pass
        (counted by a saved-tensors hook, which sees what checkpointing keeps and not what
        it recomputes: RSS on the CPU is blurred by the allocator keeping freed memory)."""
        kept: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                kept[storage.data_ptr()] = storage.nbytes()
            return t

        built.model.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = _loss(built, batch)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in built.model.parameters() if p.requires_grad], sum(kept.values())

    plain_loss, plain_grads, plain_peak = step()
    undo, why = built.switches["gradient_checkpointing"]()
    assert undo is not None, why
    lean_loss, lean_grads, lean_peak = step()
    undo()
    assert lean_loss == pytest.approx(plain_loss, abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(lean_grads, plain_grads))
    print(f"kept for backward: {plain_peak / 2**20:.1f} MiB plain, {lean_peak / 2**20:.1f} MiB with checkpointing")
    assert lean_peak < 0.25 * plain_peak, (lean_peak, plain_peak)


def _run(root: Path, checkpoint: Path, train: dict) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    config = {
        "name": "lm", "output_dir": str(root / "runs"), "task": "text-generation",
        "backbone": {"name": "transformers", "checkpoint": str(checkpoint), "options": {"max_length": 48}},
        "method": {"name": "lora", "options": {"r": 4, "targets": "all-linear", "dropout": 0.0}},
        "data": {"source": "jsonl", "path": str(root / "data.jsonl")},
        "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, **train}, "export": {"formats": []},
    }  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(root / "config.yaml")])
    assert result.exit_code == 0, result.output
    return {"output": result.output, "report": json.loads((root / "runs" / "lm" / "report.json").read_text())}


def test_adapt_run_with_checkpointing_and_packing_trains_as_without(tmp_path, lms):
    """The same examples, the same steps: the same validation perplexity, with fewer rows computed."""
    plain = _run(tmp_path / "plain", lms["llama"], {})
    lean = _run(tmp_path / "lean", lms["llama"], {"gradient_checkpointing": True, "packing": True})
    assert "gradient checkpointing on" in lean["output"]
    a, b = plain["report"]["metrics"]["adapted"]["perplexity"], lean["report"]["metrics"]["adapted"]["perplexity"]
    assert b == pytest.approx(a, rel=1e-3)


def test_packing_for_a_task_that_cannot_pack_is_one_clear_message(tmp_path):
    from tests.tiny import bert_checkpoint

    checkpoint = bert_checkpoint(tmp_path / "bert")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(TEXTS)))
    config = {"name": "c", "output_dir": str(tmp_path / "runs"), "task": "text-classification", "backbone": {"name": "transformers", "checkpoint": str(checkpoint)}, "method": {"name": "lora"}, "data": {"source": "jsonl", "path": str(tmp_path / "data.jsonl")}, "train": {"epochs": 1, "packing": True}, "export": {"formats": []}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2 and "train.packing" in result.output and "cannot pack" in result.output, result.output
    assert "Traceback" not in result.output
