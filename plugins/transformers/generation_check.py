"""The export gate of a text-generation model: every test prompt continued greedily
(up to :data:`adapt.plugins.transformers.causal_lm.CHECK_TOKENS` new tokens) by an exported cached decoder,
in ONNX Runtime, must give the very tokens transformers' ``generate`` gives with the
merged model. Logit parity over whole sequences does not prove the cache path right:
this runs it, step by step, as a device will. Also times both, in new tokens per second.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from adapt.interfaces import ExportCheck, ExportVerdict

from adapt.plugins.transformers import causal_lm


#: Test prompts whose continuations the report shows, per exported file.
SAMPLES = 3


class GenerationCheck:
    """The merged model's continuations of the test prompts (made once), and each file's against them."""

    def __init__(self, tokenizer: Any, test: Sequence[Any], max_length: int | None, merged_model: Any) -> None:
        from adapt.plugins.transformers.fused_decoder import fusable
        from adapt.plugins.transformers.hf_text import inner_model

        self.tokenizer = tokenizer
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.prompts = causal_lm.check_prompts(tokenizer, test, max_length or tokenizer.model_max_length)
        self.inner = inner_model(merged_model)
        self.kv_cache = "shared" if fusable(self.inner) else "appended"  # as preprocess.json tells predict.py
        self._reference: list[list[int]] | None = None
        self.reference_tokens_per_s = 0.0

    def reference(self) -> list[list[int]]:
        if self._reference is None:
            started = time.perf_counter()
            self._reference = [causal_lm.greedy_reference(self.inner, p, self.eos, self.pad) for p in self.prompts]
            self.reference_tokens_per_s = _rate(self._reference, time.perf_counter() - started)
        return self._reference

    def run(self, path: Path) -> tuple[float, float, list[list[int]]]:
        """``(agreement, tokens per second, the continuations)`` of an ONNX cached decoder file."""
        from adapt import onnx_predict

        reference = self.reference()
        session = onnx_predict.open_session(path)
        started = time.perf_counter()
        continued = [
            onnx_predict.generate_ids(session, p, self.eos, self.kv_cache, max_new_tokens=causal_lm.CHECK_TOKENS)
            for p in self.prompts
        ]
        seconds = time.perf_counter() - started
        return causal_lm.agreement(reference, continued), _rate(continued, seconds), continued

    def samples(self, continued: list[list[int]]) -> list[dict[str, str]]:
        """The first :data:`SAMPLES` test prompts and the file's continuations, as text."""
        decode = self.tokenizer.decode
        return [
            {"prompt": decode(prompt, skip_special_tokens=True), "continuation": decode(new, skip_special_tokens=True)}
            for prompt, new in list(zip(self.prompts, continued))[:SAMPLES]
        ]


def check_generation(check: ExportCheck) -> ExportVerdict | None:
    """Task.check_export of text-generation: an ONNX cached decoder's greedy continuations of
    the test prompts against the merged model's (made once per export, kept in ``check.memo``)."""
    if check.path.suffix != ".onnx":
        return None
    generation = check.memo.get("generation")
    if generation is None:
        generation = check.memo["generation"] = GenerationCheck(
            check.preprocessor, check.test, check.sequence_length, check.merged_model
        )
    share, rate, continued = generation.run(check.path)
    problem = None
    if share < 1:
        problem = (
            f"generates other tokens than the merged model: {share:.0%} of {len(generation.prompts)} test prompts "
            f"continue identically (greedy, {causal_lm.CHECK_TOKENS} new tokens, KV cache)"
        )
    return ExportVerdict(
        parity={"generation_agreement": share},
        latency={"tokens_per_s": rate},
        reference_latency={"tokens_per_s": generation.reference_tokens_per_s},
        problem=problem,
        hint="its cache inputs or position ids do not match the model's",
        samples=generation.samples(continued),
    )


def _rate(continuations: list[list[int]], seconds: float) -> float:
    """New tokens per second, counting the step that produced the end token."""
    steps = sum(min(len(c) + 1, causal_lm.CHECK_TOKENS) for c in continuations)
    return round(steps / max(seconds, 1e-9), 2)
