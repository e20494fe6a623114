"""Decoder language models (GPT-2, Llama, ...) for the ``text-generation`` task:
how examples become token sequences with their loss mask, and greedy or sampled
generation with a key/value cache, the same loop in PyTorch and in ONNX Runtime.

An example is plain ``text`` (every token is learnt), a ``prompt`` / ``completion``
pair (the completion is learnt), or chat ``messages`` (rendered with the
tokenizer's chat template; the last, assistant, message is learnt). The sequence
ends with the end-of-text token, so the model learns where to stop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from adapt.errors import DataError
from adapt.interfaces import IGNORE_INDEX, Batch, Example

if TYPE_CHECKING:
    import torch

TASK = "text-generation"


def _chat_prompt(tokenizer: Any, messages: list[Any]) -> str:
    """The checkpoint's chat template applied to ``messages``. transformers renders it in
    jinja's sandbox; a template that reaches past it (``__globals__``) or fails to render
    is one message naming the template, not a traceback."""
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    except SecurityError as exc:
        raise DataError(
            f"the checkpoint's chat template tried something jinja's sandbox forbids ({exc}) and was stopped",
            hint="use a checkpoint whose tokenizer_config.json has a plain chat_template; this one may be malicious",
        ) from None
    except TemplateError as exc:
        raise DataError(
            f"the checkpoint's chat template cannot render these messages ({type(exc).__name__}: {exc})",
            hint="check the chat_template in the checkpoint's tokenizer_config.json, or write the data as "
            "prompt/completion pairs",
        ) from None


def split_example(tokenizer: Any, example: Example) -> tuple[str, str]:
    """``(prompt, completion)`` text of an example (the prompt is empty for plain text)."""
    if "messages" in example:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "the data holds chat `messages`, but the checkpoint's tokenizer has no chat template",
                hint="use a chat checkpoint (its tokenizer_config.json has chat_template), or write the data as "
                "prompt/completion pairs",
            )
        messages = example["messages"]
        prompt = _chat_prompt(tokenizer, messages[:-1])
        return prompt, messages[-1]["content"]
    if "completion" in example:
        return str(example.get("prompt") or ""), str(example["completion"])
    return "", str(example["text"])


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The tokens a prompt starts generation from: the tokenizer's begin-of-text token
    where it adds one (Llama), then the prompt's tokens."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [bos, *ids]
    return ids


def encode(tokenizer: Any, example: Example, max_length: int) -> tuple[list[int], int]:
    """Token ids of the whole example and how many of them are prompt (not learnt).
    Past ``max_length`` the completion keeps its start and the prompt its end."""
    prompt, completion = split_example(tokenizer, example)
    head = prompt_ids(tokenizer, prompt)
    tail = [*tokenizer(completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id][
        : max_length - 1 if head else max_length
    ]
    head = head[len(head) - (max_length - len(tail)) :] if len(head) + len(tail) > max_length else head
    return head + tail, len(head)


def collator(tokenizer: Any, max_length: int) -> Callable[[Sequence[Example]], Batch]:
    """Batches of right-padded sequences; ``labels`` equal the tokens where they are learnt
    and -100 on prompts and padding (the task shifts them by one)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collate(examples: Sequence[Example]) -> Batch:
        encoded = [encode(tokenizer, e, max_length) for e in examples]
        width = max((len(ids) for ids, _ in encoded), default=1)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, prompt_length) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
        positions = torch.arange(width).expand(len(encoded), width).clone()
        return {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions, "labels": labels}

    return collate


def _bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Row indices grouped first-fit, longest first, so each group's lengths sum to at most ``capacity``."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((b for b, free in enumerate(room) if free >= lengths[index]), None)
        if slot is None:
            bins.append([index])
            room.append(capacity - lengths[index])
        else:
            bins[slot].append(index)
            room[slot] -= lengths[index]
    return bins


def pack(batch: Batch, length: int) -> Batch:
    """A collated batch's sequences joined into as few rows of at most ``length`` tokens as fit.
    Each sequence keeps its own positions (0, 1, ...) and the rest of a row is a padding segment;
    without an attention mask transformers reads the segments from the restarting positions and
    keeps attention within each (its packed-sequence mask). The first token of each sequence is
    not a target, so no sequence learns to predict the next one: the loss is the unpacked batch's."""
    import torch

    lengths = [int(n) for n in batch["attention_mask"].sum(1).tolist()]
    bins = _bins(lengths, max(length, max(lengths, default=1)))
    width = max(sum(lengths[i] for i in group) for group in bins)
    input_ids = torch.zeros((len(bins), width), dtype=torch.long)  # any id pads: its segment is never learnt
    labels = torch.full((len(bins), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(bins), width), dtype=torch.long)
    for row, group in enumerate(bins):
        at = 0
        for index in sorted(group):
            n = lengths[index]
            input_ids[row, at : at + n] = batch["input_ids"][index, :n]
            labels[row, at + 1 : at + n] = batch["labels"][index, 1:n]
            positions[row, at : at + n] = torch.arange(n)
            at += n
        positions[row, at:] = torch.arange(width - at)  # padding: a segment of its own, never learnt
    return {"input_ids": input_ids, "position_ids": positions, "labels": labels}


def check_tokenizer(tokenizer: Any, checkpoint: str) -> None:
    """Generation needs an end-of-text token: it ends every learnt sequence."""
    from adapt.errors import CheckpointError

    if tokenizer.eos_token_id is None:
        raise CheckpointError(
            f"checkpoint {checkpoint!r}: its tokenizer has no end-of-text token, which text-generation needs to learn "
            "where to stop",
            hint="set eos_token in its tokenizer_config.json / special_tokens_map.json",
        )


# -- the cached decoder graph -----------------------------------------------------

#: Graph names of the cache, as ONNX Runtime GenAI and Optimum name them.
PAST = "past_key_values.{layer}.{kind}"
PRESENT = "present.{layer}.{kind}"


def cache_shapes(inner: torch.nn.Module) -> list[tuple[int, int]]:
    """``(heads, head_dim)`` of every cache tensor (key then value, layer by layer), read
    off the model's own cache after one token, so no config field names are assumed.
    Kept on the model after the first call (the graph's names, axes and example inputs
    all ask for them; adapting or merging does not change them)."""
    import torch

    known = getattr(inner, "_adapt_cache_shapes", None)
    if known is not None:
        return list(known)
    device = next(inner.parameters()).device
    with torch.no_grad():
        one = torch.ones((1, 1), dtype=torch.long, device=device)
        out = inner(input_ids=one, attention_mask=one, use_cache=True)
    shapes = [(int(t.shape[1]), int(t.shape[3])) for layer in cache_of(out).layers for t in (layer.keys, layer.values)]
    inner.__dict__["_adapt_cache_shapes"] = shapes  # a plain attribute: not a parameter, buffer or module
    return list(shapes)


def cache_argument(model: torch.nn.Module) -> str:
    """The forward argument that takes the cache: ``cache`` in recent transformers
    releases, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output: Any) -> Any:
    """The cache a forward returned (``cache``, or ``past_key_values`` in older releases)."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


def cache_names(shapes: Sequence[tuple[int, int]], pattern: str) -> list[str]:
    return [pattern.format(layer=i // 2, kind="key" if i % 2 == 0 else "value") for i in range(len(shapes))]


def graph_io(shapes: Sequence[tuple[int, int]]) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, dict[int, str]]]:
    """Inputs, outputs and dynamic axes of the cached decoder graph."""
    past, present = cache_names(shapes, PAST), cache_names(shapes, PRESENT)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    axes.update({name: {0: "batch", 2: "past"} for name in past})
    axes.update({name: {0: "batch", 2: "total"} for name in present})
    return ("input_ids", "attention_mask", "position_ids", *past), ("logits", *present), axes


def example_inputs(
    shapes: Sequence[tuple[int, int]], vocab: int, batch_size: int = 2, new: int = 4, past: int = 3
) -> Batch:
    """Inputs to trace the cached graph with: ``new`` tokens after ``past`` cached ones
    (a non-empty cache, so the trace keeps the concatenation; length 0 runs the same graph)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    inputs: Batch = {
        "input_ids": torch.randint(3, vocab, (batch_size, new), generator=generator),
        "attention_mask": torch.ones(batch_size, past + new, dtype=torch.long),
        "position_ids": torch.arange(past, past + new).expand(batch_size, new).clone(),
    }
    for name, (heads, dim) in zip(cache_names(shapes, PAST), shapes):
        inputs[name] = torch.randn(batch_size, heads, past, dim, generator=generator)
    return inputs


# -- generation, checked --------------------------------------------------------------

#: New tokens each test prompt is continued by when an export's generation is checked.
CHECK_TOKENS = 32


def check_prompts(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[list[int]]:
    """The prompt tokens of test examples (for plain text, its first half), each short
    enough to leave room for :data:`CHECK_TOKENS` new ones within ``max_length``."""
    room = max(1, max_length - CHECK_TOKENS)
    prompts = []
    for example in examples:
        prompt, completion = split_example(tokenizer, example)
        ids = prompt_ids(tokenizer, prompt)
        if not ids:
            text = tokenizer(completion, add_special_tokens=False)["input_ids"]
            ids = text[: max(1, len(text) // 2)]
        prompts.append(ids[-room:])
    return prompts


def greedy_reference(
    inner: torch.nn.Module, prompt: Sequence[int], eos_id: int, pad_id: int, max_new_tokens: int = CHECK_TOKENS
) -> list[int]:
    """Greedy continuation by transformers' own ``generate`` (KV cache on), without the end token."""
    import torch
    from transformers import GenerationConfig

    ids = torch.tensor([list(prompt)], dtype=torch.long)
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id, use_cache=True
    )
    with torch.no_grad():
        generated = inner.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)  # type: ignore[operator]
        new = generated[0, len(prompt) :].tolist()
    return before_end(new, eos_id)


def before_end(tokens: list[int], eos_id: int) -> list[int]:
    """The tokens before the first end-of-text token (all of them without one)."""
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


def agreement(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> float:
    """The share of prompts whose continuations are identical."""
    return sum(1 for a, b in zip(reference, candidate) if list(a) == list(b)) / len(reference) if reference else 1.0


def positions(inner: torch.nn.Module) -> int | None:
    """How many positions the decoder has (None where its config does not say: rotary
    models without a limit), recorded in preprocess.json for the standalone predictor."""
    value = getattr(getattr(inner, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def generate_text(inner: torch.nn.Module, tokenizer: Any, prompt: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A prompt's continuation by transformers' ``generate`` (KV cache on): greedy at
    temperature 0, else sampled with ``top_k`` / ``top_p`` and ``seed``; cut at ``stop``
    strings. ``{"generated": text}``, with ``notes`` where the prompt was cut to the
    model's positions or generation stopped at them (as the ONNX predictor does)."""
    import torch
    from transformers import GenerationConfig

    from adapt.onnx_predict import cut_at_stops, generate_within

    temperature = float(settings.get("temperature", 0.0))
    sampling = (
        {
            "do_sample": True,
            "temperature": temperature,
            "top_k": int(settings.get("top_k", 0)),
            "top_p": float(settings.get("top_p", 1.0)),
        }
        if temperature > 0
        else {"do_sample": False}
    )
    inner.eval()

    def generate(start: list[int], budget: int) -> list[int]:
        ids = torch.tensor([start], dtype=torch.long)
        config = GenerationConfig(
            max_new_tokens=budget,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            **sampling,
        )
        torch.manual_seed(int(settings.get("seed", 0)))
        with torch.no_grad():
            generated = inner.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)  # type: ignore[operator]
            out = generated[0, ids.shape[1] :].tolist()
        return before_end(out, tokenizer.eos_token_id)

    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    new, notes = generate_within(
        prompt_ids(tokenizer, prompt) or [tokenizer.eos_token_id],
        int(settings.get("max_new_tokens", 64)),
        positions(inner),
        bos,
        generate,
    )
    return {
        "generated": cut_at_stops(tokenizer.decode(new), settings.get("stop", ())),
        **({"notes": notes} if notes else {}),
    }
