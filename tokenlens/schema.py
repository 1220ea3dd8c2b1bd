"""The TokenLens JSON result format (version 2.0), as pydantic models.

Compatible with the seed's files (``metadata`` + ``data`` with tokens and two
matrices) and extended with run/prompt ids, token probabilities, template
marks and timings. Validation enforces the contract in ARCHITECTURE.md: the
matrix shape, zeros at and after each row's diagonal, and finite numbers only.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenlens import defaults

SCHEMA_VERSION = "2.0"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenInfo(BaseModel):
    """One token: its vocabulary string, id, and readable text."""

    model_config = ConfigDict(extra="allow")

    token: str
    token_id: int
    clean_token: str
    #: True for chat-template and special tokens, which the UI can hide.
    is_template: bool = False
    #: For output tokens: p(token | everything before it) under the model.
    probability: float | None = None


class AnalysisMetadata(BaseModel):
    """Who made the result, from what, and how."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    timestamp: str = Field(default_factory=utc_now_iso)
    llm_id: str
    prompt: str
    attribution_method: str = defaults.METHOD
    generation_params: dict[str, Any] = Field(default_factory=dict)
    version: str = SCHEMA_VERSION
    run_id: str | None = None
    prompt_id: str | None = None
    #: "native" (TokenLens's own exact engine) or "inseq".
    engine: str | None = None
    method_params: dict[str, Any] = Field(default_factory=dict)
    #: Seconds spent per phase for this prompt (generation, attribution, ...).
    timings_s: dict[str, float] = Field(default_factory=dict)
    #: True when the output is the prompt's forced `target`, not a generation.
    forced_target: bool = False
    device: str | None = None
    dtype: str | None = None


class AnalysisData(BaseModel):
    """Tokens and the association matrices. Row i = output token i."""

    input_tokens: list[TokenInfo]
    output_tokens: list[TokenInfo]
    association_matrix: list[list[float]]
    normalized_association: list[list[float]]

    @model_validator(mode="after")
    def _check_contract(self) -> AnalysisData:
        n_in, n_out = len(self.input_tokens), len(self.output_tokens)
        width = n_in + n_out
        for name in ("association_matrix", "normalized_association"):
            matrix: list[list[float]] = getattr(self, name)
            if len(matrix) != n_out:
                raise ValueError(f"{name} has {len(matrix)} rows, expected one per output token ({n_out})")
            for i, row in enumerate(matrix):
                if len(row) != width:
                    raise ValueError(f"{name} row {i} has {len(row)} columns, expected n_in + n_out = {width}")
                for j, value in enumerate(row):
                    if not math.isfinite(value):
                        raise ValueError(f"{name}[{i}][{j}] is {value}; NaN and Infinity are not allowed")
                    if j >= n_in + i and value != 0.0:
                        raise ValueError(
                            f"{name}[{i}][{j}] = {value} but output token {i} cannot depend on "
                            f"column {j} (itself or a later token); it must be 0"
                        )
        return self


class AnalysisResult(BaseModel):
    """One prompt's TokenLens JSON file."""

    metadata: AnalysisMetadata
    data: AnalysisData

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(indent=None).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, raw: bytes | str) -> AnalysisResult:
        return cls.model_validate_json(raw)


def normalize_rows(matrix: list[list[float]]) -> list[list[float]]:
    """Divide each row by its largest absolute value, so the strongest source is 1.0.

    An all-zero row stays zero (nothing to normalise by).
    """
    normalized = []
    for row in matrix:
        peak = max((abs(v) for v in row), default=0.0)
        normalized.append([v / peak for v in row] if peak > 0 else [0.0 for _ in row])
    return normalized


class ErrorRecord(BaseModel):
    """A prompt that failed for good: stored at runs/<run_id>/errors/<prompt_id>.json."""

    model_config = ConfigDict(protected_namespaces=())

    run_id: str
    prompt_id: str
    prompt: str
    error_type: str
    message: str
    attempts: int = 1
    timestamp: str = Field(default_factory=utc_now_iso)


class RunManifest(BaseModel):
    """runs/<run_id>/run.json: what the run is, so its state can be rebuilt from storage alone."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    run_id: str
    model: str
    method: str
    engine: str = defaults.ENGINE
    method_params: dict[str, Any] = Field(default_factory=dict)
    generation_params: dict[str, Any] = Field(default_factory=dict)
    chat_template: bool = defaults.CHAT_TEMPLATE
    #: The dtype the model computed in; None where the workers' own `--dtype` decided (`submit`).
    dtype: str | None = None
    prompt_count: int
    prompt_ids: list[str] = Field(default_factory=list)
    source: str | None = None
    created_at: str = Field(default_factory=utc_now_iso)
    mode: str = "embedded"
    version: str = SCHEMA_VERSION
