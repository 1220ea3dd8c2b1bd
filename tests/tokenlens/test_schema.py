"""The TokenLens JSON contract: shapes, the zero upper triangle, finite numbers, seed compatibility."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tokenlens.schema import AnalysisResult, ErrorRecord, RunManifest, normalize_rows


def token(text: str, token_id: int) -> dict[str, Any]:
    return {"token": text, "token_id": token_id, "clean_token": text}


def result_dict(matrix: list[list[float]], n_in: int = 2, n_out: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"llm_id": "m", "prompt": "hi there", "attribution_method": "saliency"},
        "data": {
            "input_tokens": [token(f"i{j}", j) for j in range(n_in)],
            "output_tokens": [token(f"o{k}", 100 + k) for k in range(n_out)],
            "association_matrix": matrix,
            "normalized_association": normalize_rows(matrix),
        },
    }


GOOD = [[0.5, -1.0, 0.0, 0.0], [0.2, 0.1, 0.4, 0.0]]


def test_valid_result_round_trips_through_json() -> None:
    result = AnalysisResult.model_validate(result_dict(GOOD))
    again = AnalysisResult.from_json_bytes(result.to_json_bytes())
    assert again == result
    assert again.metadata.version == "1.1.0" and again.metadata.tokenlens_format == "2.1"
    assert again.metadata.llm_version == "m"
    assert again.data.normalized_association[0] == [0.5, -1.0, 0.0, 0.0]


def test_raw_scores_are_float32_in_memory_as_in_files() -> None:
    result = AnalysisResult.model_validate(result_dict(GOOD))
    assert result.data.association_matrix[1][0] == float(np.float32(0.2)) != 0.2


def test_normalized_rows_peak_at_one_in_absolute_value() -> None:
    normalized = normalize_rows([[2.0, -4.0, 0.0], [0.0, 0.0, 0.0], [0.1, 0.3, 0.2]])
    assert normalized[0] == [0.5, -1.0, 0.0]
    assert normalized[1] == [0.0, 0.0, 0.0]
    assert max(abs(v) for v in normalized[2]) == 1.0


@pytest.mark.parametrize(
    ("matrix", "problem"),
    [
        ([[0.5, 1.0, 0.0, 0.0]], "rows"),
        ([[0.5, 1.0, 0.0], [0.2, 0.1, 0.4]], "columns"),
        ([[0.5, 1.0, 0.3, 0.0], [0.2, 0.1, 0.4, 0.0]], "cannot depend"),
        ([[0.5, 1.0, 0.0, 0.0], [0.2, 0.1, 0.4, 0.7]], "cannot depend"),
        ([[math.nan, 1.0, 0.0, 0.0], [0.2, 0.1, 0.4, 0.0]], "NaN"),
        ([[math.inf, 1.0, 0.0, 0.0], [0.2, 0.1, 0.4, 0.0]], "NaN"),
    ],
)
def test_contract_violations_are_rejected(matrix: list[list[float]], problem: str) -> None:
    raw = result_dict(GOOD)
    raw["data"]["association_matrix"] = matrix
    with pytest.raises(ValidationError, match=problem):
        AnalysisResult.model_validate(raw)


def test_seed_format_file_without_extensions_loads() -> None:
    seed = {
        "metadata": {
            "timestamp": "2025-01-01T00:00:00",
            "llm_id": "meta-llama/x",
            "prompt": "p",
            "generation_params": {},
        },
        "data": {
            "input_tokens": [token("a", 1)],
            "output_tokens": [token("b", 2)],
            "association_matrix": [[1.0, 0.0]],
            "normalized_association": [[1.0, 0.0]],
        },
    }
    result = AnalysisResult.from_json_bytes(json.dumps(seed))
    assert result.data.input_tokens[0].is_template is False
    # A seed 1.0.x file names no method: TokenLens says so rather than guess one.
    assert result.metadata.attribution_method == "unknown"
    assert result.metadata.llm_version == "x" and result.metadata.tokenlens_format is None


def test_extra_metadata_survives_and_json_has_no_nan() -> None:
    raw = result_dict(GOOD)
    raw["metadata"]["custom_note"] = "kept"
    text = AnalysisResult.model_validate(raw).to_json_bytes().decode()
    assert '"custom_note":"kept"' in text
    assert "NaN" not in text and "Infinity" not in text


def test_error_record_and_manifest_defaults() -> None:
    record = ErrorRecord(run_id="r", prompt_id="p", prompt="x", error_type="E", message="m")
    assert record.attempts == 1 and record.timestamp.endswith("Z")
    manifest = RunManifest(run_id="r", model="m", method="saliency", prompt_count=3)
    assert manifest.mode == "embedded" and manifest.created_at.endswith("Z")
