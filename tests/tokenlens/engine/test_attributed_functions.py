"""Every attributed function on every native gradient method equals Inseq's step function of the same name.

probability, logprob, logit, contrast_prob and contrast_logit (Inseq: probability, probability with
logprob=True, logit, contrast_prob, contrast_logits), raw values (Inseq's `aggregate(normalize=False)`,
compared here directly rather than through the adapter's stored file), on a tiny random GPT-2 with a forced
target and a contrast target of the same length. Inseq 0.7.1 refuses contrastive step functions with
integrated gradients ("methods expanding inputs to multiple steps ... are not yet supported"), so those two
are held to the per-step autograd reference (engine/reference.py) instead.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenlens.engine.inseq_engine import distinct_pad_token
from tokenlens.engine.native import attribute_native
from tokenlens.engine.options import ATTRIBUTED_FNS
from tokenlens.engine.reference import per_step_scores
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptFailure, PromptInput
from tokenlens.models import LoadedModel, load_model

TEXT = "The capital of France is"
TARGET = " Paris, a city"
CONTRAST = " Lyon, a town"
TOLERANCE = {"saliency": 1e-4, "input_x_gradient": 1e-4, "integrated_gradients": 1e-3}
N_STEPS = 8
INSEQ_NAMES = {"logit": "logit", "contrast_prob": "contrast_prob", "contrast_logit": "contrast_logits"}


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), device="cpu")


def tokens(loaded: LoadedModel) -> tuple[list[int], list[int], list[int]]:
    """Prompt, target and contrast ids, cut from the tokenized whole texts as Inseq tokenizes them."""
    tokenizer = loaded.tokenizer
    prompt = tokenizer(TEXT).input_ids
    target = tokenizer(TEXT + TARGET).input_ids[len(prompt) :]
    contrast = tokenizer(TEXT + CONTRAST).input_ids[len(prompt) :]
    assert len(target) == len(contrast), (target, contrast)
    return prompt, target, contrast


def inseq_scores(loaded: LoadedModel, method: str, attributed_fn: str, options: dict[str, Any]) -> np.ndarray:
    import inseq

    kwargs: dict[str, Any] = {"n_steps": N_STEPS} if method == "integrated_gradients" else {}
    if attributed_fn == "logprob":
        kwargs["logprob"] = True
    elif attributed_fn in INSEQ_NAMES:
        kwargs["attributed_fn"] = INSEQ_NAMES[attributed_fn]
    if attributed_fn.startswith("contrast_"):
        kwargs["contrast_targets"] = TEXT + CONTRAST
    with distinct_pad_token(loaded), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Inseq warns that contrastive functions keep the original inputs
        model = inseq.load_model(loaded.model, method, tokenizer=loaded.tokenizer)
        with contextlib.redirect_stdout(io.StringIO()):
            output = model.attribute(TEXT, generated_texts=TEXT + TARGET, show_progress=False, **kwargs)
    sequence = output.sequence_attributions[0]
    matrix = sequence.aggregate(normalize=False).target_attributions.float().numpy()  # [n_in + n_out, n_out]
    scores: np.ndarray = np.nan_to_num(matrix.T, nan=0.0)
    return scores


def native_scores(loaded: LoadedModel, method: str, options: dict[str, Any]) -> AttributionOutput:
    prompt_ids, target, contrast = tokens(loaded)
    prompt = PromptInput(
        "fn", TEXT, prompt_ids, [False] * len(prompt_ids), len(target), target, TEXT, contrast_ids=contrast
    )
    result = attribute_native(loaded, [prompt], method, options)[0]
    assert isinstance(result, AttributionOutput), result
    return result


@pytest.mark.parametrize("attributed_fn", ATTRIBUTED_FNS)
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_native_equals_inseq_step_function(tiny_gpt2: LoadedModel, method: str, attributed_fn: str) -> None:
    given: dict[str, Any] = {"attributed_fn": attributed_fn}
    if method == "integrated_gradients":
        given["n_steps"] = N_STEPS
    options = validate_options(method, given)
    ours = native_scores(tiny_gpt2, method, options)
    assert ours.method_params["attributed_fn"] == attributed_fn
    if method == "integrated_gradients" and attributed_fn.startswith("contrast_"):
        prompt_ids, target, contrast = tokens(tiny_gpt2)
        reference = per_step_scores(tiny_gpt2, tiny_gpt2.model, prompt_ids, target, method, options, contrast)
    else:
        reference = inseq_scores(tiny_gpt2, method, attributed_fn, options)
    assert ours.scores.shape == reference.shape
    scale = float(np.abs(reference).max())
    assert scale > 0
    assert float(np.abs(ours.scores - reference).max()) <= TOLERANCE[method] * scale


def test_contrast_functions_differ_from_the_plain_ones(tiny_gpt2: LoadedModel) -> None:
    """The contrast token really is what is differentiated: contrast_logit is not logit."""
    plain = native_scores(tiny_gpt2, "saliency", validate_options("saliency", {"attributed_fn": "logit"}))
    contrast = native_scores(tiny_gpt2, "saliency", validate_options("saliency", {"attributed_fn": "contrast_logit"}))
    assert float(np.abs(plain.scores - contrast.scores).max()) > 0.01 * float(np.abs(plain.scores).max())


def test_contrastive_function_without_a_long_enough_contrast_fails_that_prompt(tiny_gpt2: LoadedModel) -> None:
    prompt_ids, target, contrast = tokens(tiny_gpt2)
    short = PromptInput("short", TEXT, prompt_ids, [False] * len(prompt_ids), len(target), target, TEXT, contrast[:1])
    missing = PromptInput("missing", TEXT, prompt_ids, [False] * len(prompt_ids), len(target), target, TEXT)
    fine = PromptInput("fine", TEXT, prompt_ids, [False] * len(prompt_ids), len(target), target, TEXT, contrast)
    options = validate_options("saliency", {"attributed_fn": "contrast_prob"})
    results = attribute_native(tiny_gpt2, [short, missing, fine], "saliency", options)
    for failure, what in zip(results[:2], ("1 tokens", "no contrast_target"), strict=True):
        assert isinstance(failure, PromptFailure) and failure.permanent
        assert failure.error_type == "ContrastTargetError" and what in failure.message
        assert failure.prompt_id in failure.message
    assert isinstance(results[2], AttributionOutput)


def row_normalised(scores: np.ndarray) -> np.ndarray:
    peaks = np.abs(scores).max(axis=1, keepdims=True)
    normalised: np.ndarray = np.divide(scores, peaks, out=np.zeros_like(scores), where=peaks > 0)
    return normalised


@pytest.mark.parametrize("attributed_fn", ["logit", "contrast_logit", "contrast_prob"])
def test_inseq_adapter_passes_the_step_function_and_contrast_through(
    tiny_gpt2: LoadedModel, attributed_fn: str
) -> None:
    """Through the adapter (whichever per-row normalisation it stores, so compared row-normalised)."""
    from tokenlens.engine.inseq_engine import attribute_inseq

    prompt_ids, target, contrast = tokens(tiny_gpt2)
    prompt = PromptInput("fn", TEXT, prompt_ids, [False] * len(prompt_ids), len(target), target, TEXT, contrast)
    options = validate_options("saliency", {"attributed_fn": attributed_fn})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [through_inseq] = attribute_inseq(tiny_gpt2, [prompt], "saliency", options)
    assert isinstance(through_inseq, AttributionOutput), through_inseq
    ours = native_scores(tiny_gpt2, "saliency", options)
    assert through_inseq.output_ids == ours.output_ids
    difference = np.abs(row_normalised(through_inseq.scores) - row_normalised(ours.scores)).max()
    assert float(difference) <= 1e-4
