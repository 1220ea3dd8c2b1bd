"""Turn a prompt record into exactly the tokens the model sees: chat template, special tokens, forced target.

Tokenization follows Inseq's rule (the tokenizer's own special tokens, and a
doubled BOS from a chat template collapsed to one) so that the native engine
and Inseq attribute the same token ids.
"""

from __future__ import annotations

from typing import Any

from tokenlens.batch import PromptRecord
from tokenlens.engine.types import PromptInput
from tokenlens.errors import PromptTooLongError
from tokenlens.models import LoadedModel


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, prompt: str, chat_template: bool) -> tuple[str, int]:
    """The text fed to the model, and where the user's prompt starts inside it (-1 if unknown)."""
    if chat_template and has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return text, text.rfind(prompt)
    return prompt, 0


def encode_text(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids (and character offsets where the tokenizer gives them), as Inseq encodes a text."""
    offsets: list[tuple[int, int]] | None
    try:
        encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        offsets = [(int(pair[0]), int(pair[1])) for pair in encoded["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):
        encoded = tokenizer(text, add_special_tokens=True)
        offsets = None
    ids = list(encoded["input_ids"])
    bos = tokenizer.bos_token_id
    if len(ids) >= 2 and bos is not None and ids[0] == ids[1] == bos:
        ids = ids[1:]
        offsets = offsets[1:] if offsets is not None else None
    return ids, offsets


def template_mask_for(
    tokenizer: Any, ids: list[int], offsets: list[tuple[int, int]] | None, prompt_start: int, prompt_len: int
) -> list[bool]:
    """True for tokens that are special or lie outside the user's prompt text."""
    special = set(tokenizer.all_special_ids or [])
    mask = []
    for index, token_id in enumerate(ids):
        if token_id in special:
            mask.append(True)
            continue
        if offsets is None or prompt_start < 0:
            mask.append(False)
            continue
        start, end = offsets[index]
        inside = end > prompt_start and start < prompt_start + prompt_len
        mask.append(not inside)
    return mask


def prepare_prompt(
    loaded: LoadedModel, record: PromptRecord, *, chat_template: bool, max_new_tokens: int
) -> PromptInput:
    """Tokenize one prompt for attribution; `PromptTooLongError` if it can't fit the context window."""
    tokenizer = loaded.tokenizer
    text, prompt_start = render_prompt(tokenizer, record.prompt, chat_template)
    ids, offsets = encode_text(tokenizer, text)
    mask = template_mask_for(tokenizer, ids, offsets, prompt_start, len(record.prompt))
    target_ids = None
    if record.target is not None:
        target_ids = list(tokenizer(record.target, add_special_tokens=False)["input_ids"])
    contrast_ids = None
    if record.contrast_target is not None:
        contrast_ids = list(tokenizer(record.contrast_target, add_special_tokens=False)["input_ids"])
    new_tokens = len(target_ids) if target_ids is not None else (record.max_new_tokens or max_new_tokens)
    context = loaded.context_length
    if context is not None and len(ids) + new_tokens > context:
        raise PromptTooLongError(
            f"prompt {record.id!r} has {len(ids)} tokens and asks for {new_tokens} more, but the model's context "
            f"window is {context} tokens; shorten the prompt or lower max_new_tokens"
        )
    return PromptInput(
        prompt_id=record.id,
        text=record.prompt,
        input_ids=ids,
        template_mask=mask,
        max_new_tokens=new_tokens,
        target_ids=target_ids,
        model_text=text,
        contrast_ids=contrast_ids,
        offsets=offsets,
    )
