"""What goes into an attribution engine and what comes out, engine-independent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PromptInput:
    """One prompt, tokenized and ready to attribute.

    `input_ids` is exactly what the model sees (chat template included);
    `template_mask[j]` is True where input token j comes from the template or is
    a special token rather than from the user's prompt text.
    """

    prompt_id: str
    text: str
    input_ids: list[int]
    template_mask: list[bool]
    max_new_tokens: int
    #: A forced continuation (token ids) to attribute instead of generating one.
    target_ids: list[int] | None = None
    #: The text that was tokenized into `input_ids` (the prompt with its chat template).
    model_text: str = ""
    #: Per output token, the token a contrastive attributed function differentiates instead (contrast_prob,
    #: contrast_logit); aligned with the continuation, so its length is the number of output tokens.
    contrast_ids: list[int] | None = None
    #: Each input token's character offsets in `model_text`, as the tokenizer gave them with `input_ids`
    #: (None where it gives none): the words' spans are taken from them, without tokenizing the text again.
    offsets: list[tuple[int, int]] | None = None


@dataclass
class AttributionOutput:
    """One prompt's attribution, before it becomes TokenLens JSON.

    `scores[i, j]`: the method's raw score of source token j (inputs first, then
    earlier outputs) for output token i. Shape (n_out, n_in + n_out); the engine
    guarantees zeros at and after column n_in + i and no NaN.
    """

    prompt_id: str
    input_ids: list[int]
    output_ids: list[int]
    scores: np.ndarray
    #: p(output token i | everything before it), one per output token.
    token_probabilities: list[float]
    engine: str
    method_params: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    #: The attention implementation the attribution passes ran ("eager", "sdpa", ...), when known.
    attention_implementation: str | None = None
    #: Inseq's native FeatureAttributionOutput as JSON text, when Inseq ran.
    inseq_native_json: str | None = None


@dataclass
class PromptFailure:
    """A prompt the engine could not attribute; the rest of its batch is unaffected."""

    prompt_id: str
    error_type: str
    message: str
    #: Retrying can't help (e.g. the prompt is longer than the context window).
    permanent: bool = False
