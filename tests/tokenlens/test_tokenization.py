"""Chat templates, template marks, forced targets and context limits, on SmolLM2's real tokenizer."""

from __future__ import annotations

import pytest

from tokenlens.batch import PromptRecord
from tokenlens.errors import PromptTooLongError
from tokenlens.tokenization import prepare_prompt


@pytest.mark.slow
def test_chat_template_marks_only_the_users_words(smollm2) -> None:  # type: ignore[no-untyped-def]
    prompt = prepare_prompt(
        smollm2, PromptRecord(id="a", prompt="The quick brown fox"), chat_template=True, max_new_tokens=4
    )
    tokens = smollm2.tokenizer.convert_ids_to_tokens(prompt.input_ids)
    user = [tok for tok, is_template in zip(tokens, prompt.template_mask, strict=True) if not is_template]
    assert user == ["The", "Ġquick", "Ġbrown", "Ġfox"]
    assert tokens[0] == "<|im_start|>" and prompt.template_mask[0]
    assert "<|im_start|>user" in prompt.model_text


@pytest.mark.slow
def test_no_chat_and_forced_target(smollm2) -> None:  # type: ignore[no-untyped-def]
    record = PromptRecord(id="a", prompt="The quick brown fox", target=" jumps over")
    prompt = prepare_prompt(smollm2, record, chat_template=False, max_new_tokens=50)
    assert prompt.template_mask == [False] * len(prompt.input_ids)
    assert prompt.target_ids is not None
    assert smollm2.tokenizer.decode(prompt.target_ids) == " jumps over"
    assert prompt.max_new_tokens == len(prompt.target_ids)


@pytest.mark.slow
def test_prompt_longer_than_context_is_refused(smollm2) -> None:  # type: ignore[no-untyped-def]
    long_text = "word " * 9000
    with pytest.raises(PromptTooLongError, match="context window is 8192"):
        prepare_prompt(smollm2, PromptRecord(id="big", prompt=long_text), chat_template=False, max_new_tokens=8)
