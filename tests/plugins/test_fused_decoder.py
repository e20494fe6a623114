"""The fused decoder export (adapt.plugins.transformers.fused_decoder): ONNX Runtime's
GroupQueryAttention with packed QKV and rotary, and packed gate/up MLPs, on tiny random
Llama and Qwen2 decoders (heads of 16, GQA 4/2; Qwen2 has q/k/v biases). It must compute
what transformers computes, in PyTorch and in a real ONNX Runtime session, over
right-padded prompts and cached steps; the shared-buffer generation loop of predict.py
must give transformers' own greedy tokens; models it cannot fuse exactly say why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adapt.interfaces import OnnxIO
from adapt.plugins.transformers import causal_lm
from adapt.plugins.transformers.cached_decoder import CausalLMWithCache
from adapt.plugins.transformers.fused_decoder import fused, why_not_fused
from tests.tiny import DECODERS, decoder_checkpoint


@pytest.fixture(scope="module")
def decoders(tmp_path_factory) -> dict[str, CausalLMWithCache]:
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("fused")
    models = {}
    for kind in ("llama", "qwen2"):
        inner = AutoModelForCausalLM.from_pretrained(decoder_checkpoint(root / kind, kind, causal_lm=True)).eval()
        with torch.no_grad():  # biases and norms away from their initial zeros and ones
            for parameter in inner.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        models[kind] = CausalLMWithCache(inner).eval()
    return models


def padded_batch(vocab: int, shapes: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Two prompts, the second right-padded (as the collator pads), and an empty cache."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 7), generator=generator)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": torch.arange(7).expand(2, 7).clone()}
    for name, (heads, dim) in zip(causal_lm.cache_names(shapes, causal_lm.PAST), shapes):
        batch[name] = torch.zeros(2, heads, 0, dim)
    return batch


def real(logits: torch.Tensor | np.ndarray, mask: torch.Tensor) -> torch.Tensor:
    """Logits at the positions that hold tokens (padding's are not defined the same way)."""
    return torch.as_tensor(logits)[mask.bool()]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_the_fused_copy_computes_what_transformers_computes(decoders, kind):
    model = decoders[kind]
    copy = fused(model)
    assert copy is not None, why_not_fused(model.model)
    shapes = causal_lm.cache_shapes(model.model)
    batch = padded_batch(model.model.config.vocab_size, shapes)
    with torch.no_grad():
        reference, candidate = model(**batch), copy(**batch)
        assert torch.allclose(real(reference[0], batch["attention_mask"]), real(candidate[0], batch["attention_mask"]), atol=1e-5)
        for want, got in zip(reference[1:], candidate[1:]):
            assert torch.allclose(want[0], got[0], atol=1e-5)  # the unpadded row's cache
        step = {"input_ids": torch.tensor([[5]]), "attention_mask": torch.ones(1, 8, dtype=torch.long), "position_ids": torch.tensor([[7]])}
        past = {name: t[:1] for name, t in zip(causal_lm.cache_names(shapes, causal_lm.PAST), reference[1:])}
        assert torch.allclose(model(**step, **past)[0], copy(**step, **past)[0], atol=1e-5)
    assert copy.model.model.layers[0].self_attn.qkv.out_features == sum(heads * dim for heads, dim in shapes[:2]) + 64
    # the packed weights are the originals' storage (no second copy while the export traces), values unchanged
    original, packed = model.model.model.layers[0].self_attn.k_proj.weight, copy.model.model.layers[0].self_attn.qkv.weight
    assert original.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()
    queries = model.model.model.layers[0].self_attn.q_proj.out_features
    assert torch.equal(original, packed[queries : queries + original.shape[0]])


def export_fused(model: CausalLMWithCache, path: Path) -> Path:
    from adapt.exporters.onnx_exporter import OnnxExporter

    shapes = causal_lm.cache_shapes(model.model)
    names, outputs, axes = causal_lm.graph_io(shapes)
    inputs = causal_lm.example_inputs(shapes, model.model.config.vocab_size)
    return OnnxExporter().export(fused(model), inputs, OnnxIO(names, outputs, axes), path, None)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_the_fused_graph_in_onnx_runtime_matches_pytorch(tmp_path, decoders, kind):
    import onnx
    import onnxruntime as ort

    model = decoders[kind]
    path = export_fused(model, tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    layers = DECODERS[kind]["num_hidden_layers"]
    assert ops.count("GroupQueryAttention") == layers and ops.count("MatMul") == 4 * layers + 1  # qkv, o, gate_up, down; lm_head
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    assert "position_ids" not in inputs  # positions come from the attention mask
    batch = padded_batch(model.model.config.vocab_size, causal_lm.cache_shapes(model.model))
    got = session.run(None, {n: batch[n].numpy() for n in inputs})
    with torch.no_grad():
        want = model(**batch)
    assert torch.allclose(real(want[0], batch["attention_mask"]), real(got[0], batch["attention_mask"]), atol=1e-4)
    assert all(np.allclose(w[0].numpy(), g[0], atol=1e-4) for w, g in zip(want[1:], got[1:]))


def test_the_shared_cache_loop_generates_transformers_greedy_tokens(tmp_path, decoders):
    """predict.py's loop with buffers bound as past and present (kv_cache: shared), and the
    appended loop on the same graph, continue a prompt exactly as transformers' generate."""
    import onnxruntime as ort

    from adapt.onnx_predict import generate_ids

    model = decoders["llama"]
    session = ort.InferenceSession(str(export_fused(model, tmp_path / "model.onnx")), providers=["CPUExecutionProvider"])
    prompt = [5, 17, 42, 8, 99, 3]
    reference = causal_lm.greedy_reference(model.model, prompt, eos_id=-1, pad_id=0, max_new_tokens=24)
    assert generate_ids(session, prompt, -1, "shared", max_new_tokens=24) == reference
    assert generate_ids(session, prompt, -1, "appended", max_new_tokens=24) == reference


def test_what_cannot_be_fused_exactly_says_why(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    def made(kind: str, shape: str = "llama", **changes) -> torch.nn.Module:
        options = {**DECODERS[shape], **changes, "bos_token_id": 0, "eos_token_id": 0, "vocab_size": 64}
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **options))

    assert "rotary" in why_not_fused(made("gpt2", "gpt2"))
    assert "multiples of 16" in why_not_fused(made("llama", hidden_size=32))
    assert "depends on the sequence length" in why_not_fused(made("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    assert "sliding window" in why_not_fused(made("mistral", sliding_window=16))
    assert why_not_fused(made("llama")) is None and why_not_fused(made("mistral", sliding_window=None)) is None
