"""The [CLS]-only last layer changes no logit and no gradient, and stays off where
it would (another head, token classification)."""

from __future__ import annotations

import pytest
import torch

from adapt.plugins.transformers import cls_last_layer
from adapt.host import make_host
from adapt.plan import validate_options
from tests.tiny import bert_checkpoint, roberta_checkpoint


def lora_model(tmp_path, kind: str, task: str = "text-classification"):
    """A tiny BERT or RoBERTa classifier with LoRA on query and value, through the plugins, in float64."""
    host = make_host(autoload=False)
    backbone, method = host.backbones.get(kind), host.methods.get("lora")
    folder = tmp_path / kind
    (bert_checkpoint(folder, dropout=0.0) if kind == "bert" else roberta_checkpoint(folder))
    torch.manual_seed(0)
    built = backbone.build(task, 3, checkpoint=str(folder), arch=None, options=validate_options(backbone, "b", {}, "b"))
    method.apply(built, validate_options(method, "m", {"r": 2, "alpha": 4}, "m"), backbone.default_targets("lora"))
    with torch.no_grad():
        for name, param in built.model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.1)  # as after some training: the LoRA path matters
    return built.model.double().eval()  # eval: no dropout, so the two passes are comparable


def loss_and_grads(model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 40, (4, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=mask)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_same_logits_and_gradients_as_the_full_layer(tmp_path, kind):
    model = lora_model(tmp_path, kind)
    full_logits, full_grads = loss_and_grads(model)
    undo, note = cls_last_layer.switch_on(model.model)
    assert undo is not None, note
    logits, grads = loss_and_grads(model)
    torch.testing.assert_close(logits, full_logits, rtol=1e-10, atol=1e-12)
    assert grads.keys() == full_grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-9, atol=1e-12, msg=name)
    undo()
    assert "forward" not in cls_last_layer.last_layer(model.model).__dict__  # the class's own forward again
    assert {n for n, _ in model.named_parameters()} == set(full_grads) | {n for n, p in model.named_parameters() if not p.requires_grad}


def test_a_head_that_reads_every_position_fails_the_self_check(tmp_path):
    model = lora_model(tmp_path, "bert")
    pooler = model.model.bert.pooler
    pooler.forward = lambda hidden_states: torch.tanh(pooler.dense(hidden_states.mean(dim=1)))  # mean pooling
    undo, note = cls_last_layer.switch_on(model.model)
    assert undo is None and "self-check failed" in note
    assert "forward" not in cls_last_layer.last_layer(model.model).__dict__


def test_token_classification_is_left_alone(tmp_path):
    model = lora_model(tmp_path, "bert", task="token-classification")
    assert cls_last_layer.last_layer(model.model) is None
    assert cls_last_layer.switch_on(model.model) == (None, "")
