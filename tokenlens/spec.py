"""What a run is, decided once: `RunSpec`, and the one function that cuts a run's prompts into `BatchTask`s.

`tokenlens run`, `tokenlens submit` and the seed API each build one frozen `RunSpec`
from their flags or arguments and pass it on; everything cheap about it (method,
engine, method options, model name, lengths, ids) is validated when it is built, so
a bad value fails before a prompt set is read, a model loads or a batch is queued.
`build_batches` is the only code that turns a spec and prompt records into batches,
whether they are queued for workers or attributed in-process.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tokenlens import defaults
from tokenlens.batch import (
    MAX_BATCH_PROMPTS,
    MAX_NEW_TOKENS_LIMIT,
    BatchTask,
    PromptRecord,
    check_safe_id,
    validate_generation_params,
)
from tokenlens.engine.options import CONTRASTIVE_FNS
from tokenlens.engine.registry import get_method, resolve_engine, validate_options
from tokenlens.errors import TokenLensError
from tokenlens.models import DTYPES, check_model_spec
from tokenlens.result_codec import check_format
from tokenlens.schema import RunManifest


def new_run_id(method: str) -> str:
    """A fresh run id: UTC time, method and a random suffix (``20261127-160515-saliency-db8868``)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{method.replace('_', '-')}-{uuid.uuid4().hex[:6]}"


def model_for_workers(model: str) -> str:
    """The model as a worker must load it: a local directory or file becomes its absolute path."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


@dataclass(frozen=True)
class RunSpec:
    """A run's identity and settings, validated on construction (`TokenLensError` naming the bad value)."""

    run_id: str
    #: The model as the user named it (alias, hub id, local directory or .gguf file).
    model: str
    #: Where results go, as given; `tokenlens.plan` replaces it by the URL its storage names (absolute).
    results_url: str = defaults.RESULTS_URL
    method: str = defaults.METHOD
    #: The engine as asked for ("auto", "native" or "inseq"); `resolved_engine` is the one that runs.
    engine: str = defaults.ENGINE
    #: The method's options; on construction they are validated and completed with the method's defaults.
    method_params: Mapping[str, Any] = field(default_factory=dict)
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    #: Generation options besides `max_new_tokens` (the seed API's `generation_params`).
    generation_params: Mapping[str, Any] = field(default_factory=dict)
    chat_template: bool = defaults.CHAT_TEMPLATE
    #: The dtype the run's model computes in; None where the workers' own `--dtype` decides (`submit`).
    dtype: str | None = None
    #: Prompts per batch: per queued batch for `submit`, per engine call for `run`; None: the default.
    batch_size: int | None = None
    #: How results are written: "auto", "json" or "compact" (`tokenlens.result_codec`).
    result_format: str = defaults.RESULT_FORMAT
    resolved_engine: str = field(init=False)

    def __post_init__(self) -> None:
        check_safe_id("run id", self.run_id)
        get_method(self.method)
        object.__setattr__(self, "resolved_engine", resolve_engine(self.method, self.engine))
        options = validate_options(self.method, dict(self.method_params))
        object.__setattr__(self, "method_params", MappingProxyType(options))
        if "max_new_tokens" in self.generation_params:
            raise TokenLensError("pass max_new_tokens as its own setting, not inside generation_params")
        # The same allow-list the workers apply to every batch they take (tokenlens.batch).
        generation = validate_generation_params(self.generation_params)
        object.__setattr__(self, "generation_params", MappingProxyType(generation))
        check_model_spec(self.model)
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise TokenLensError(f"--max-new-tokens {self.max_new_tokens} must be from 1 to {MAX_NEW_TOKENS_LIMIT}")
        if self.batch_size is not None and not 1 <= self.batch_size <= MAX_BATCH_PROMPTS:
            raise TokenLensError(f"--batch-size {self.batch_size} must be from 1 to {MAX_BATCH_PROMPTS}")
        check_format(self.result_format)
        if self.dtype is not None and self.dtype not in DTYPES:
            raise TokenLensError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")

    @property
    def contrastive(self) -> bool:
        """Whether the attributed function compares against each prompt's `contrast_target`."""
        return self.method_params.get("attributed_fn") in CONTRASTIVE_FNS

    @property
    def worker_model(self) -> str:
        """The model as workers load it and as run.json records it (`model_for_workers`)."""
        return model_for_workers(self.model)

    def recorded_generation_params(self) -> dict[str, Any]:
        """Every generation option, `max_new_tokens` included, as run.json records them."""
        return {"max_new_tokens": self.max_new_tokens, **self.generation_params}

    def manifest(
        self,
        prompt_ids: Sequence[str],
        *,
        mode: str,
        source: str | None = None,
        created_at: str | None = None,
    ) -> RunManifest:
        """The run.json of this run over `prompt_ids`."""
        optional: dict[str, Any] = {"created_at": created_at} if created_at is not None else {}
        return RunManifest(
            run_id=self.run_id,
            model=self.worker_model,
            method=self.method,
            engine=self.resolved_engine,
            method_params=dict(self.method_params),
            generation_params=self.recorded_generation_params(),
            chat_template=self.chat_template,
            dtype=self.dtype,
            result_format=self.result_format,
            prompt_count=len(prompt_ids),
            prompt_ids=list(prompt_ids),
            source=source,
            mode=mode,
            **optional,
        )


def build_batches(spec: RunSpec, records: Sequence[PromptRecord], size: int) -> list[BatchTask]:
    """`records` in order, `size` at a time, as the batches of `spec`'s run (queued or run in-process)."""
    if size < 1:
        raise ValueError(f"batch size {size} must be at least 1")
    return [
        BatchTask(
            run_id=spec.run_id,
            results_url=spec.results_url,
            model=spec.worker_model,
            method=spec.method,
            engine=spec.engine,
            method_params=dict(spec.method_params),
            max_new_tokens=spec.max_new_tokens,
            generation_params=dict(spec.generation_params),
            chat_template=spec.chat_template,
            result_format=spec.result_format,
            prompts=list(records[start : start + size]),
        )
        for start in range(0, len(records), size)
    ]
