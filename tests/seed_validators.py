"""Our own ports of the seed project's two result validators, to hold TokenLens files to them in tests.

- `ui_accepts`: the seed's old web UI check, ``validateAnalysisResult`` (TokenLense commit fe341e8,
  ``ui/src/utils/data.ts``), including its expansion of compressed matrices first.
- `SeedAnalysisResult`: the seed's current pydantic model, ``AnalysisResult`` in
  ``extractor/src/persistence/schema.py``: the same fields, types, enums and defaults.

Written from reading those files (not copied): JavaScript's ``typeof x === "number"`` is a JSON number and
never a boolean; any exception inside the UI check makes it answer false.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

# --- the old UI's validateAnalysisResult ---------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _looks_compressed(matrix: Any) -> bool:
    return (
        isinstance(matrix, dict)
        and isinstance(matrix.get("values"), list)
        and isinstance(matrix.get("indices"), list)
        and isinstance(matrix.get("shape"), list)
        and len(matrix["shape"]) == 2
    )


def _expand(matrix: Any) -> Any:
    """The UI's decompressMatrix: a list stays as it is; indices pack ``row << 16 | column``."""
    if isinstance(matrix, list):
        return matrix
    rows, columns = matrix["shape"]
    expanded = [[0] * columns for _ in range(rows)]
    for packed, value in zip(matrix["indices"], matrix["values"], strict=False):
        expanded[packed >> 16][packed & 0xFFFF] = value
    return expanded


def _ui_check(document: Any) -> bool:
    if not isinstance(document, dict):
        return False
    if _looks_compressed(document.get("data", {}).get("association_matrix")):
        data = dict(document["data"])
        data["association_matrix"] = _expand(data["association_matrix"])
        if data.get("normalized_association"):
            data["normalized_association"] = _expand(data["normalized_association"])
        else:
            data["normalized_association"] = data["association_matrix"]
        document = {**document, "data": data}
    metadata = document["metadata"]
    strings = ("timestamp", "llm_id", "llm_version", "prompt", "version")
    if not all(isinstance(metadata.get(name), str) for name in strings):
        return False
    params = metadata.get("generation_params")
    if not isinstance(params, dict) or not _is_number(params.get("max_new_tokens")):
        return False  # (typeof null is "object" in JS, but reading a field of null throws: false either way)
    data = document["data"]
    inputs, outputs, matrix = data.get("input_tokens"), data.get("output_tokens"), data.get("association_matrix")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or not isinstance(matrix, list):
        return False

    def token_ok(token: Any) -> bool:
        return (
            isinstance(token, dict)
            and isinstance(token.get("token"), str)
            and _is_number(token.get("token_id"))
            and isinstance(token.get("clean_token"), str)
        )

    if not all(token_ok(t) for t in inputs) or not all(token_ok(t) for t in outputs):
        return False
    width = len(inputs) + len(outputs)
    return all(isinstance(row, list) and len(row) == width and all(_is_number(v) for v in row) for row in matrix)


def ui_accepts(document: Any) -> bool:
    """What the seed's old UI answers for a parsed result file: True only if it would show it."""
    try:
        return _ui_check(document)
    except (KeyError, TypeError, AttributeError, IndexError):
        return False


# --- the current pydantic AnalysisResult -----------------------------------------------------------------------


class SeedDataVersion(str, Enum):
    v1_0_0 = "1.0.0"
    v1_0_1 = "1.0.1"
    v1_1_0 = "1.1.0"


class SeedAttributionSource(str, Enum):
    source = "source"
    target = "target"
    combined = "combined"
    unknown = "unknown"


class SeedToken(BaseModel):
    token: str
    token_id: int
    clean_token: str


class SeedData(BaseModel):
    input_tokens: list[SeedToken]
    output_tokens: list[SeedToken]
    association_matrix: list[list[float]]
    normalized_association: list[list[float]] | None = None
    attribution_source: SeedAttributionSource = SeedAttributionSource.unknown
    raw_dimensions: list[int] | None = None


class SeedMetadata(BaseModel):
    timestamp: datetime = Field(default_factory=datetime.now)
    llm_id: str
    llm_version: str
    prompt: str
    generation_params: dict[str, str | int | float] = Field(default_factory=dict)
    version: SeedDataVersion = SeedDataVersion.v1_1_0
    attribution_method: str | None = None


class SeedAnalysisResult(BaseModel):
    """Validates like the seed's pydantic ``AnalysisResult`` (unknown fields are ignored, as there)."""

    metadata: SeedMetadata
    data: SeedData
