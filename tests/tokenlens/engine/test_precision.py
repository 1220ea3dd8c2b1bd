"""The native engine in float32 against a float64 per-step reference, on a prompt with a p > 0.9999 token.

The reference (engine/reference.py) is the same model copied to float64, one autograd pass per output token.
Issue 12's goal: every row within 2e-4 of it, and on the confident tokens at least 10x closer to it than plain
float32 autograd (what Inseq computes), which loses the gradient of a confident token to cancellation.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from tokenlens.engine.native import attribute_native
from tokenlens.engine.reference import per_step_scores
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptInput
from tokenlens.models import LoadedModel

#: SmolLM2's reply starts "```python\n": the newline after "python" has p = 0.99993.
PROMPT = "<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n<|im_start|>assistant\n"
CONFIDENT = 0.999
ROW_TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def smollm2_float64(smollm2: LoadedModel) -> Any:
    return copy.deepcopy(smollm2.model).double()


def row_errors(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    errors: np.ndarray = np.abs(scores - reference).max(axis=1)
    return errors


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "attributed_fn"), [("saliency", "probability"), ("saliency", "logprob"), ("input_x_gradient", "logprob")]
)
def test_float32_engine_is_float64_exact_where_float32_autograd_is_not(
    smollm2: LoadedModel, smollm2_float64: Any, method: str, attributed_fn: str
) -> None:
    ids = smollm2.tokenizer(PROMPT).input_ids
    prompt = PromptInput("confident", PROMPT, ids, [False] * len(ids), 4, model_text=PROMPT)
    options = validate_options(method, {"attributed_fn": attributed_fn})
    ours = attribute_native(smollm2, [prompt], method, options)[0]
    assert isinstance(ours, AttributionOutput), ours
    probabilities = np.array(ours.token_probabilities)
    confident = probabilities > CONFIDENT
    assert probabilities.max() > 0.9999, probabilities  # the prompt still makes a p > 0.9999 token
    exact = per_step_scores(smollm2, smollm2_float64, ids, ours.output_ids, method, options)
    plain = per_step_scores(smollm2, smollm2.model, ids, ours.output_ids, method, options)
    ours_error, plain_error = row_errors(ours.scores, exact), row_errors(plain, exact)
    assert ours_error.max() <= ROW_TOLERANCE, ours_error
    assert ours_error[confident].max() * 10 <= plain_error[confident].max(), (ours_error, plain_error)
    assert np.abs(exact).max() > 100 * ROW_TOLERANCE  # the scores are not too small for the comparison to mean much
