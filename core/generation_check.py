"""The export gate of a text-generation model: every test prompt continued greedily
(up to :data:`adapt.causal_lm.CHECK_TOKENS` new tokens) by an exported cached decoder,
in ONNX Runtime, must give the very tokens transformers' ``generate`` gives with the
merged model. Logit parity over whole sequences does not prove the cache path right:
this runs it, step by step, as a device will. Also times both, in new tokens per second.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from adapt import causal_lm


class GenerationCheck:
    """The merged model's continuations of the test prompts (made once), and each file's against them."""

    def __init__(self, session: Any, merged_model: Any) -> None:
        from adapt.hf_text import inner_model

        tokenizer = session.built.preprocessor
        max_length = session.plan.backbone.max_length(session.built, session.plan.backbone_options)
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.prompts = causal_lm.check_prompts(tokenizer, session.splits.test, max_length)
        self.inner = inner_model(merged_model)
        self._reference: list[list[int]] | None = None
        self.reference_tokens_per_s = 0.0

    def reference(self) -> list[list[int]]:
        if self._reference is None:
            started = time.perf_counter()
            self._reference = [causal_lm.greedy_reference(self.inner, p, self.eos, self.pad) for p in self.prompts]
            self.reference_tokens_per_s = _rate(self._reference, time.perf_counter() - started)
        return self._reference

    def run(self, path: Path) -> tuple[float, float]:
        """``(agreement, tokens per second)`` of an ONNX cached decoder file."""
        from adapt import onnx_predict

        reference = self.reference()
        session = onnx_predict.open_session(path)
        started = time.perf_counter()
        continued = [onnx_predict.generate_ids(session, p, self.eos, max_new_tokens=causal_lm.CHECK_TOKENS) for p in self.prompts]
        return causal_lm.agreement(reference, continued), _rate(continued, time.perf_counter() - started)


def _rate(continuations: list[list[int]], seconds: float) -> float:
    """New tokens per second, counting the step that produced the end token."""
    steps = sum(min(len(c) + 1, causal_lm.CHECK_TOKENS) for c in continuations)
    return round(steps / max(seconds, 1e-9), 2)
