"""The Inseq adapter on the real SmolLM2: shapes, the zero upper triangle, and native files that load back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokenlens.batch import PromptRecord
from tokenlens.engine.inseq_engine import attribute_inseq
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput
from tokenlens.seed_api import InseqTokenAnalyzer
from tokenlens.tokenization import prepare_prompt


@pytest.mark.slow
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "attention"])
def test_inseq_methods_on_smollm2(smollm2, method: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prompt = prepare_prompt(
        smollm2, PromptRecord(id="q", prompt="Paris is the capital of"), chat_template=False, max_new_tokens=4
    )
    [output] = attribute_inseq(smollm2, [prompt], method, validate_options(method, {}))
    assert isinstance(output, AttributionOutput), output
    n_in, n_out = len(output.input_ids), len(output.output_ids)
    assert output.input_ids == prompt.input_ids  # no special tokens in a plain prompt: same tokens as ours
    assert 1 <= n_out <= 4
    assert output.scores.shape == (n_out, n_in + n_out)
    assert np.isfinite(output.scores).all()
    for i in range(n_out):
        assert np.all(output.scores[i, n_in + i :] == 0.0)
        assert np.any(output.scores[i, : n_in + i] != 0.0)
    assert all(0.0 < p <= 1.0 for p in output.token_probabilities) and len(output.token_probabilities) == n_out

    # The native Inseq file loads back and converts to the same matrix.
    native_path = tmp_path / "q.json"
    native_path.write_text(output.inseq_native_json or "")
    native = InseqTokenAnalyzer.load_native_inseq(native_path)
    assert native.info["attribution_method"] == method
    converted = InseqTokenAnalyzer.convert_native_to_analysis_result(
        native_path, "Paris is the capital of", tokenizer=smollm2.tokenizer
    )
    assert [t.token_id for t in converted.data.input_tokens] == output.input_ids
    assert [t.token_id for t in converted.data.output_tokens] == output.output_ids
    np.testing.assert_allclose(np.array(converted.data.association_matrix), output.scores, atol=1e-6)
    assert converted.metadata.attribution_method == method


@pytest.mark.slow
def test_chat_template_eos_tokens_survive_inseq(smollm2) -> None:  # type: ignore[no-untyped-def]
    # SmolLM2 pads with its EOS (<|im_end|>), which its chat template uses inside every prompt. Inseq drops
    # tokens equal to the pad token; the adapter must keep them, aligned with the matrix.
    prompt = prepare_prompt(smollm2, PromptRecord(id="c", prompt="Hi"), chat_template=True, max_new_tokens=2)
    eos = smollm2.tokenizer.eos_token_id
    assert eos in prompt.input_ids
    pad_before = smollm2.tokenizer.pad_token
    [output] = attribute_inseq(smollm2, [prompt], "saliency", validate_options("saliency", {}))
    assert isinstance(output, AttributionOutput), output
    assert output.input_ids == prompt.input_ids
    assert output.scores.shape == (len(output.output_ids), len(output.input_ids) + len(output.output_ids))
    assert smollm2.tokenizer.pad_token == pad_before  # put back for the native engine and generation
