"""The native engine gives Inseq's numbers: every native method against the same Inseq 0.7.1 method, on the same
tokens, after the same per-token aggregation (Inseq's `aggregate(normalize=False)`: L2 norm over the embedding
for gradient methods, mean over layers and heads for attention).

Tolerances (issue #3): saliency and input x gradient 1e-4, integrated gradients (same n_steps) 1e-3, in float32.
Native saliency differentiates log p by default and Inseq p, so those are compared row-normalised.
On the tiny random GPT-2 every score is ~1e-4, so its raw comparison is relative to the largest score.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenlens.engine.inseq_engine import distinct_pad_token
from tokenlens.engine.native import attribute_native
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptInput
from tokenlens.models import LoadedModel, load_model

TOLERANCE = {"saliency": 1e-4, "input_x_gradient": 1e-4, "integrated_gradients": 1e-3, "attention": 1e-4}
N_STEPS = 8


@dataclass
class InseqRun:
    input_ids: list[int]
    output_ids: list[int]
    #: Inseq's unnormalised aggregate in TokenLens layout: [n_out, n_in + n_out], NaN -> 0.
    scores: np.ndarray
    probabilities: list[float] | None


def run_inseq(loaded: LoadedModel, method: str, text: str, max_new_tokens: int, **kwargs: Any) -> InseqRun:
    import inseq

    with distinct_pad_token(loaded):
        model = inseq.load_model(loaded.model, method, tokenizer=loaded.tokenizer)
        with contextlib.redirect_stdout(io.StringIO()):
            output = model.attribute(
                text,
                generation_args={"max_new_tokens": max_new_tokens, "do_sample": False},
                show_progress=False,
                **kwargs,
            )
    sequence = output.sequence_attributions[0]
    input_ids = [int(token.id) for token in sequence.source]
    full = [int(token.id) for token in sequence.target]
    assert full[: len(input_ids)] == input_ids
    matrix = sequence.aggregate(normalize=False).target_attributions.float().numpy()  # [n_in + n_out, n_out]
    probabilities = None
    if sequence.step_scores and "probability" in sequence.step_scores:
        probabilities = [float(p) for p in sequence.step_scores["probability"]]
    return InseqRun(input_ids, full[len(input_ids) :], np.nan_to_num(matrix.T, nan=0.0), probabilities)


def run_native(loaded: LoadedModel, method: str, text: str, reference: InseqRun, **given: Any) -> AttributionOutput:
    """The native engine on exactly Inseq's tokens (its continuation forced)."""
    prompt = PromptInput(
        "exact",
        text,
        reference.input_ids,
        [False] * len(reference.input_ids),
        len(reference.output_ids),
        target_ids=reference.output_ids,
        model_text=text,
    )
    result = attribute_native(loaded, [prompt], method, validate_options(method, given))[0]
    assert isinstance(result, AttributionOutput), result
    return result


def row_normalised(scores: np.ndarray) -> np.ndarray:
    peaks = np.abs(scores).max(axis=1, keepdims=True)
    normalised: np.ndarray = np.divide(scores, peaks, out=np.zeros_like(scores), where=peaks > 0)
    return normalised


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def method_options(method: str) -> dict[str, Any]:
    return {"n_steps": N_STEPS} if method == "integrated_gradients" else {}


# --------------------------------------------------------------------------- tiny random GPT-2 (fast)


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), device="cpu")


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients", "attention"])
def test_tiny_gpt2_equals_inseq(tiny_gpt2: LoadedModel, method: str) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    reference = run_inseq(tiny_gpt2, method, text, 8, **method_options(method))
    given = {**method_options(method), **({"attributed_fn": "probability"} if method != "attention" else {})}
    ours = run_native(tiny_gpt2, method, text, reference, **given)
    assert ours.output_ids == reference.output_ids
    tolerance = TOLERANCE[method]
    assert max_difference(row_normalised(ours.scores), row_normalised(reference.scores)) <= tolerance
    assert max_difference(ours.scores, reference.scores) <= tolerance * float(np.abs(reference.scores).max())


# --------------------------------------------------------------------------- SmolLM2-135M-Instruct (slow)


def chat(loaded: LoadedModel, question: str) -> str:
    text: str = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return text


@pytest.mark.slow
def test_smollm2_saliency_equals_inseq_and_generates_what_inseq_generates(smollm2: LoadedModel) -> None:
    text = chat(smollm2, "What is 2+2? Reply with just the number.")
    reference = run_inseq(smollm2, "saliency", text, 12, step_scores=["probability"])
    eos = smollm2.tokenizer.eos_token_id
    assert reference.output_ids[-1] == eos and len(reference.output_ids) < 12  # the generation ended with EOS
    prompt = PromptInput("gen", text, reference.input_ids, [False] * len(reference.input_ids), 12, model_text=text)
    ours = attribute_native(smollm2, [prompt], "saliency", validate_options("saliency", {}))[0]
    assert isinstance(ours, AttributionOutput)
    # Our own greedy generation: the same tokens, EOS included, as Inseq (i.e. model.generate).
    assert ours.output_ids == reference.output_ids
    assert reference.probabilities is not None
    np.testing.assert_allclose(ours.token_probabilities, reference.probabilities, atol=1e-4)
    # Native saliency is d log p (the seed's); Inseq's is d p: rows agree up to their scale. Inseq's float32
    # autograd is itself up to 1.03e-4 from a float64 reference on this prompt's rows (normalised), where the
    # engine is within 3e-6 (measured; test_precision.py holds the engine to float64), so 2x the tolerance.
    assert ours.method_params["attributed_fn"] == "logprob"
    assert max_difference(row_normalised(ours.scores), row_normalised(reference.scores)) <= 2 * TOLERANCE["saliency"]
    # With Inseq's attributed function the raw numbers agree too.
    same_fn = run_native(smollm2, "saliency", text, reference, attributed_fn="probability")
    assert max_difference(same_fn.scores, reference.scores) <= TOLERANCE["saliency"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["input_x_gradient", "integrated_gradients", "attention"])
def test_smollm2_equals_inseq(smollm2: LoadedModel, method: str) -> None:
    text = chat(smollm2, "Name three colours.")
    reference = run_inseq(smollm2, method, text, 6, **method_options(method))
    ours = run_native(smollm2, method, text, reference, **method_options(method))
    if method != "attention":
        assert ours.method_params["attributed_fn"] == "probability"  # Inseq's default, compared raw
    assert max_difference(ours.scores, reference.scores) <= TOLERANCE[method]
    assert float(np.abs(reference.scores).max()) > 10 * TOLERANCE[method]  # the comparison is not vacuous
