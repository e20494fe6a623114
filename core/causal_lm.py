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


def split_example(tokenizer: Any, example: Example) -> tuple[str, str]:
    """``(prompt, completion)`` text of an example (the prompt is empty for plain text)."""
    if "messages" in example:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("the data holds chat `messages`, but the checkpoint's tokenizer has no chat template", hint="use a chat checkpoint (its tokenizer_config.json has chat_template), or write the data as prompt/completion pairs")
        messages = example["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
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
    tail = [*tokenizer(completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id][: max_length - 1 if head else max_length]
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
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    return collate


def check_tokenizer(tokenizer: Any, checkpoint: str) -> None:
    """Generation needs an end-of-text token: it ends every learnt sequence."""
    from adapt.errors import CheckpointError

    if tokenizer.eos_token_id is None:
        raise CheckpointError(f"checkpoint {checkpoint!r}: its tokenizer has no end-of-text token, which text-generation needs to learn where to stop", hint="set eos_token in its tokenizer_config.json / special_tokens_map.json")


def as_tensor(ids: Sequence[int]) -> torch.Tensor:
    import torch

    return torch.tensor([list(ids)], dtype=torch.long)
