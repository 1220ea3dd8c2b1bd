"""The seed project's Python API, end to end on the real SmolLM2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokenlens import InseqTokenAnalyzer, ModelManager, TokenAnalysisStorage, TokenAnalyzer, visualize
from tokenlens.errors import TokenLensError
from tokenlens.schema import AnalysisResult


@pytest.fixture(scope="module")
def manager(smollm2):  # type: ignore[no-untyped-def]
    # ModelManager.initialize loads through the same cache as the `smollm2` fixture: seconds, not minutes.
    return ModelManager.initialize({"llm_id": "smollm2-135m-instruct", "device": "cpu", "torch_dtype": "float32"})


@pytest.mark.slow
def test_seed_flow_analyze_store_and_visualize(manager, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert manager.model is not None and manager.tokenizer is not None
    storage = TokenAnalysisStorage(base_path=str(tmp_path / "output"))
    analyzer = TokenAnalyzer(manager, method="saliency", generation_params={"max_new_tokens": 5})
    analyze = analyzer.create_analysis_pipeline(storage)

    result = analyze("What is the capital of France?")
    assert isinstance(result, AnalysisResult)
    dumped = result.model_dump(mode="json")
    assert set(dumped) == {"metadata", "data"}
    assert dumped["metadata"]["llm_id"] == "smollm2-135m-instruct"
    assert 1 <= len(dumped["data"]["output_tokens"]) <= 5
    stored = storage.load(result.metadata.prompt_id or "")
    assert stored.data.association_matrix == result.data.association_matrix
    assert (tmp_path / f"output/runs/{result.metadata.run_id}/run.json").is_file()
    assert (result.metadata.run_id or "").startswith("notebook-saliency-")

    batch = analyze(["Hello!", "What is the capital of France?"])
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[1].data.association_matrix == result.data.association_matrix  # same prompt, same stored result

    keys = visualize(result, storage=storage, show=False)
    png = tmp_path / "output" / keys[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_inseq_analyzer_stores_native_file(manager, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storage = TokenAnalysisStorage(base_path=str(tmp_path / "out"))
    analyzer = InseqTokenAnalyzer(manager, attribution_method="attention", generation_params={"max_new_tokens": 3})
    result = analyzer.create_analysis_pipeline(storage)("Paris is")
    assert result.metadata.engine == "inseq" and result.metadata.attribution_method == "attention"
    native_path = tmp_path / f"out/runs/{result.metadata.run_id}/inseq/{result.metadata.prompt_id}.json"
    converted = InseqTokenAnalyzer.convert_native_to_analysis_result(
        native_path, "Paris is", tokenizer=manager.tokenizer
    )
    np.testing.assert_allclose(converted.data.association_matrix, result.data.association_matrix, atol=1e-6)


def test_bad_config_and_method_are_clear() -> None:
    with pytest.raises(TokenLensError, match="unknown ModelManager config key"):
        ModelManager.initialize({"llm_id": "x", "precision": "fp16"})
    with pytest.raises(TokenLensError, match="unsupported storage format"):
        TokenAnalysisStorage(base_path="x", format="parquet")


def test_visualize_is_the_function_even_after_its_module_was_imported() -> None:
    import importlib

    import tokenlens

    importlib.import_module("tokenlens.heatmap")
    from tokenlens import visualize as again

    assert callable(again) and tokenlens.visualize is again


def test_contrastive_attribution_through_the_api(tiny_llama_dir: Path, tmp_path: Path) -> None:
    tiny = ModelManager.initialize({"llm_id": str(tiny_llama_dir), "device": "cpu"})
    analyzer = TokenAnalyzer(
        tiny, generation_params={"max_new_tokens": 2}, method_params={"attributed_fn": "contrast_logit"}
    )
    storage = TokenAnalysisStorage(base_path=str(tmp_path / "api"))
    with pytest.raises(TokenLensError, match="contrast_targets"):
        analyzer.analyze("The capital of France is", storage)
    lyon = analyzer.analyze("The capital of France is", storage, contrast_targets=" Lyon Lyon")
    assert lyon.metadata.attributed_fn == "contrast_logit"
    assert lyon.metadata.contrast_target == " Lyon Lyon"
    # Another contrast for the same prompt is another result, never the stored one.
    nice = analyzer.analyze("The capital of France is", storage, contrast_targets=" Nice Nice")
    assert nice.metadata.contrast_target == " Nice Nice"
    assert nice.data.association_matrix != lyon.data.association_matrix
