"""The TokenLens JSON result format (revision 2.1), as pydantic models.

Compatible with the seed's files (``metadata`` + ``data`` with tokens and the
association matrix): a file passes the seed's own validators (``llm_version``,
a ``version`` the seed accepts), and TokenLens's own revision is
``metadata.tokenlens_format``. Extended with run/prompt ids, token
probabilities, template marks and timings. Validation enforces the contract in
ARCHITECTURE.md: the matrix shape, zeros at and after each row's diagonal, and
finite numbers only. ``normalized_association`` is computed from the raw scores
when a file does not hold it (TokenLens files never do: see
`tokenlens.result_codec`, which turns results into bytes and back).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenlens import defaults

#: The seed project's data versions; its validators accept only these in `metadata.version`.
SEED_VERSIONS = ("1.0.0", "1.0.1", "1.1.0")
#: The seed version TokenLens files carry: the one with `attribution_method` (what the file's numbers are).
SEED_VERSION = SEED_VERSIONS[-1]
#: TokenLens's own revision of the result format (`metadata.tokenlens_format`); 2.0 wrote it as `version`.
TOKENLENS_FORMAT = "2.1"
#: The revision of run.json.
SCHEMA_VERSION = "2.0"


def llm_version_of(llm_id: str) -> str:
    """The seed's short model name: the last part of the model id or path (``Qwen/Qwen2.5-7B`` -> ``Qwen2.5-7B``)."""
    return llm_id.rstrip("/").rsplit("/", 1)[-1] or llm_id


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
    #: Characters [start, end) of the prompt text (input tokens) or the generated text (output tokens) this
    #: token covers; None for template tokens and in files written before spans (`tokenlens.words`).
    span: list[int] | None = None
    #: The index of the token's word and sentence within its sequence (`tokenlens.words.annotate_groups`).
    word: int | None = None
    sentence: int | None = None


class AnalysisMetadata(BaseModel):
    """Who made the result, from what, and how."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    timestamp: str = Field(default_factory=utc_now_iso)
    llm_id: str
    #: The seed's short model name (its validators require it); derived from `llm_id` when not given.
    llm_version: str = ""
    prompt: str
    attribution_method: str = defaults.METHOD
    generation_params: dict[str, Any] = Field(default_factory=dict)
    #: The seed data version the file conforms to (one of `SEED_VERSIONS`).
    version: str = SEED_VERSION
    #: TokenLens's format revision; None for a seed file read by TokenLens.
    tokenlens_format: str | None = TOKENLENS_FORMAT
    run_id: str | None = None
    prompt_id: str | None = None
    #: "native" (TokenLens's own exact engine) or "inseq".
    engine: str | None = None
    method_params: dict[str, Any] = Field(default_factory=dict)
    #: Seconds spent per phase for this prompt (generation, attribution, ...).
    timings_s: dict[str, float] = Field(default_factory=dict)
    #: True when the output is the prompt's forced `target`, not a generation.
    forced_target: bool = False
    #: What was differentiated for each output token (gradient methods): probability, logprob, logit,
    #: contrast_prob or contrast_logit (also in `method_params`).
    attributed_fn: str | None = None
    #: The prompt's alternative continuation, for the contrastive attributed functions.
    contrast_target: str | None = None
    device: str | None = None
    dtype: str | None = None
    #: The attention implementation the attribution ran: "eager" where attention weights are needed (the
    #: `attention` method, Inseq), "sdpa" (memory-efficient) for the native gradient passes.
    attention_implementation: str | None = None
    #: The output tokens decoded together (special tokens kept): the text output tokens' spans point into.
    generated_text: str | None = None

    @model_validator(mode="after")
    def _short_model_name(self) -> AnalysisMetadata:
        if not self.llm_version:
            self.llm_version = llm_version_of(self.llm_id)
        return self


class AnalysisData(BaseModel):
    """Tokens and the association matrices. Row i = output token i."""

    input_tokens: list[TokenInfo]
    output_tokens: list[TokenInfo]
    #: Raw scores, float32 (what files keep): other values are rounded to float32 on construction.
    association_matrix: list[list[float]]
    #: Each row over its largest absolute value; computed from `association_matrix` when not given.
    normalized_association: list[list[float]] = Field(default_factory=list)
    #: The seed's `AttributionSource`: TokenLens rows hold input (source) and output (target) columns.
    attribution_source: str = "combined"
    #: Seed 1.1.0: the shape of the attribution before it was laid out as this matrix.
    raw_dimensions: list[int] | None = None

    @model_validator(mode="after")
    def _check_contract(self) -> AnalysisData:
        n_in, n_out = len(self.input_tokens), len(self.output_tokens)
        raw = _check_matrix("association_matrix", self.association_matrix, n_in, n_out)
        if raw is not None:
            as_float32: list[list[float]] = raw.astype(np.float32).astype(np.float64).tolist()
            self.association_matrix = as_float32
        if not self.normalized_association and n_out:
            self.normalized_association = normalize_rows(self.association_matrix)
        else:
            _check_matrix("normalized_association", self.normalized_association, n_in, n_out)
        return self


def _check_matrix(name: str, matrix: list[list[float]], n_in: int, n_out: int) -> np.ndarray | None:
    """The contract: one row per output token, n_in + n_out columns, finite, 0 at and after the diagonal.

    Returns the matrix as an array (None when it has no rows).
    """
    width = n_in + n_out
    if len(matrix) != n_out:
        raise ValueError(f"{name} has {len(matrix)} rows, expected one per output token ({n_out})")
    for i, row in enumerate(matrix):
        if len(row) != width:
            raise ValueError(f"{name} row {i} has {len(row)} columns, expected n_in + n_out = {width}")
    if not n_out:
        return None
    values = np.asarray(matrix, dtype=np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        i, j = (int(k) for k in bad[0])
        raise ValueError(f"{name}[{i}][{j}] is {values[i, j]}; NaN and Infinity are not allowed")
    late = np.argwhere(np.triu(values, k=n_in) != 0.0)
    if len(late):
        i, j = (int(k) for k in late[0])
        raise ValueError(
            f"{name}[{i}][{j}] = {values[i, j]} but output token {i} cannot depend on "
            f"column {j} (itself or a later token); it must be 0"
        )
    return values


class AnalysisResult(BaseModel):
    """One prompt's TokenLens JSON file."""

    metadata: AnalysisMetadata
    data: AnalysisData

    @model_validator(mode="after")
    def _generation_length_known(self) -> AnalysisResult:
        # The seed's validators require it; where nothing recorded it, the output's length is what was generated.
        self.metadata.generation_params.setdefault("max_new_tokens", len(self.data.output_tokens))
        return self

    def to_json_bytes(self) -> bytes:
        """The plain JSON result file (`tokenlens.result_codec`'s "json" format)."""
        from tokenlens.result_codec import encode_result

        return encode_result(self, "json").body

    @classmethod
    def from_json_bytes(cls, raw: bytes | str) -> AnalysisResult:
        """A result file of any format or revision, seed files included (`tokenlens.result_codec.decode_result`)."""
        from tokenlens.result_codec import decode_result

        return decode_result(raw.encode("utf-8") if isinstance(raw, str) else raw)


def normalize_rows(matrix: list[list[float]]) -> list[list[float]]:
    """Divide each row by its largest absolute value, so the strongest source is 1.0.

    An all-zero row stays zero (nothing to normalise by).
    """
    values = np.asarray(matrix, dtype=np.float64)
    if values.size == 0:
        return [[] for _ in matrix]
    peaks = np.abs(values).max(axis=1, keepdims=True)
    normalized: list[list[float]] = np.divide(values, peaks, out=np.zeros_like(values), where=peaks > 0).tolist()
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
    #: How the run's results are written: "auto", "json" or "compact" (`tokenlens.result_codec`).
    result_format: str = defaults.RESULT_FORMAT
    prompt_count: int
    #: The prompt ids in order, in memory only: `RunStore.write_manifest` leaves them out of run.json (prompts.jsonl
    #: holds them; runs written before kept them here). Read them with `RunStore.prompt_ids`.
    prompt_ids: list[str] = Field(default_factory=list)
    source: str | None = None
    created_at: str = Field(default_factory=utc_now_iso)
    mode: str = "embedded"
    version: str = SCHEMA_VERSION
