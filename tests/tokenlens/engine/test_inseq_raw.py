"""Raw means raw: the Inseq adapter stores the same unnormalised scores as the native engine, one to one.

For saliency, input x gradient, integrated gradients and attention, the adapter's `scores` (what becomes
`association_matrix`) and the native engine's, on the same tokens with the same attributed function
(probability), agree within 1e-4 (IG, same n_steps: 1e-3). The tiny random model's gradient scores are small
(~1e-4), so those tolerances are applied relative to the largest score, which is stricter than absolute here.
Also through the seed API: `InseqTokenAnalyzer` results carry the raw values, not Inseq's L1-normalised rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokenlens.batch import PromptRecord
from tokenlens.engine.inseq_engine import attribute_inseq
from tokenlens.engine.native import attribute_native
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput
from tokenlens.models import LoadedModel, load_model
from tokenlens.schema import AnalysisResult
from tokenlens.seed_api import InseqTokenAnalyzer, ModelManager, TokenAnalysisStorage, TokenAnalyzer
from tokenlens.tokenization import prepare_prompt

TOLERANCE = {"saliency": 1e-4, "input_x_gradient": 1e-4, "integrated_gradients": 1e-3, "attention": 1e-4}
PROMPT = "The quick brown fox jumps over the lazy dog"
#: A forced continuation of whole words: Inseq re-tokenizes prompt + continuation, and these can't merge with "dog".
TARGET = " and then it ran away"
NEW_TOKENS = 4


def options_for(method: str) -> dict[str, object]:
    if method == "attention":
        return {}
    return {"attributed_fn": "probability", **({"n_steps": 8} if method == "integrated_gradients" else {})}


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), device="cpu")


def attribute_both(loaded: LoadedModel, method: str) -> tuple[AttributionOutput, AttributionOutput]:
    """(Inseq adapter, native engine) on the same prompt tokens and the same continuation."""
    options = validate_options(method, options_for(method))
    prompt = prepare_prompt(
        loaded, PromptRecord(id="raw", prompt=PROMPT, target=TARGET), chat_template=False, max_new_tokens=NEW_TOKENS
    )
    assert prompt.target_ids is not None and len(prompt.target_ids) >= 4
    [through_inseq] = attribute_inseq(loaded, [prompt], method, options)
    [native] = attribute_native(loaded, [prompt], method, options)
    assert isinstance(through_inseq, AttributionOutput), through_inseq
    assert isinstance(native, AttributionOutput), native
    assert through_inseq.input_ids == native.input_ids == prompt.input_ids
    assert through_inseq.output_ids == native.output_ids == prompt.target_ids
    return through_inseq, native


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients", "attention"])
def test_inseq_raw_scores_equal_native_raw_scores(tiny_gpt2: LoadedModel, method: str) -> None:
    through_inseq, native = attribute_both(tiny_gpt2, method)
    assert through_inseq.scores.shape == native.scores.shape
    largest = float(np.abs(native.scores).max())
    assert largest > 0.0
    difference = float(np.abs(through_inseq.scores - native.scores).max())
    assert difference <= TOLERANCE[method] * min(1.0, largest), (difference, largest)
    if method != "attention":
        # Not Inseq's default aggregate: those rows each sum to 1 (over sources and earlier outputs).
        row_sums = np.abs(through_inseq.scores).sum(axis=1)
        assert not np.allclose(row_sums, 1.0, atol=0.1), row_sums


def test_the_seed_api_stores_inseq_raw_scores_like_the_native_engine(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    manager = ModelManager.initialize({"llm_id": str(tiny_gpt2_dir), "device": "cpu", "torch_dtype": "float32"})
    generation = {"max_new_tokens": NEW_TOKENS}
    options = options_for("input_x_gradient")
    native_analyze = TokenAnalyzer(
        manager, method="input_x_gradient", generation_params=generation, chat_template=False, method_params=options
    ).create_analysis_pipeline(TokenAnalysisStorage(base_path=str(tmp_path / "native")))
    inseq_analyze = InseqTokenAnalyzer(
        manager,
        attribution_method="input_x_gradient",
        generation_params=generation,
        chat_template=False,
        method_params=options,
    ).create_analysis_pipeline(TokenAnalysisStorage(base_path=str(tmp_path / "inseq")))
    native = native_analyze(PROMPT)
    through_inseq = inseq_analyze(PROMPT)
    assert isinstance(native, AnalysisResult) and isinstance(through_inseq, AnalysisResult)
    assert through_inseq.metadata.engine == "inseq" and native.metadata.engine == "native"
    assert [t.token_id for t in through_inseq.data.output_tokens] == [t.token_id for t in native.data.output_tokens]
    ours, theirs = np.array(native.data.association_matrix), np.array(through_inseq.data.association_matrix)
    largest = float(np.abs(ours).max())
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE["input_x_gradient"] * min(1.0, largest)
    np.testing.assert_allclose(through_inseq.data.normalized_association, native.data.normalized_association, atol=1e-3)
