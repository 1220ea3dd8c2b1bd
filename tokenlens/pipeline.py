"""Turn one batch of prompts into stored results: attribute, build TokenLens files, write them once, record errors.

This is the only code path that produces results. `tokenlens run` calls it
in-process; the Celery task in worker/ is a thin wrapper around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage_backends import Storage, open_storage
from tokenlens import defaults
from tokenlens.batch import BatchTask, PromptRecord
from tokenlens.engine.options import CONTRASTIVE_FNS
from tokenlens.engine.registry import resolve_engine, validate_options
from tokenlens.engine.types import AttributionOutput, PromptFailure, PromptInput
from tokenlens.errors import TokenLensError
from tokenlens.models import GRADIENT_METHODS, LoadedModel, check_closed_form_head
from tokenlens.progress import stored_result_state
from tokenlens.results import RunStore
from tokenlens.schema import (
    AnalysisData,
    AnalysisMetadata,
    AnalysisResult,
    ErrorRecord,
    TokenInfo,
)
from tokenlens.tokenization import encode_text, prepare_prompt
from tokenlens.words import annotate_groups, decoded_spans, input_spans

log = logging.getLogger(__name__)

#: Exceptions that say the input or the options are wrong: the same prompt, attributed alone, fails the same way
#: every time, so it becomes an error record at once instead of after every attempt.
DETERMINISTIC_ERRORS = frozenset(
    {
        "ValueError",
        "TypeError",
        "KeyError",
        "IndexError",
        "NotImplementedError",
        "AssertionError",
        "UnknownMethodError",
        "MethodOptionError",
        "GenerationOptionError",
        "PromptTooLongError",
    }
)


def result_done(store: RunStore, prompt_id: str) -> bool:
    """Whether the prompt has a valid result; a corrupt one is removed, so the prompt is attributed again.

    Only that file is replaced: the new result is then created in its place (create-only, as always).
    """
    state = stored_result_state(store, prompt_id)
    if state == "corrupt":
        log.warning("run %s: the result of %s is corrupt; attributing it again", store.run_id, prompt_id)
        store.delete_result(prompt_id)
    return state == "done"


def engine_batch_size_for(engine: str, device: str = "cpu") -> int:
    """Prompts handed to `engine` at once by default on `device`; `should_stop` is polled between such groups."""
    sizes = defaults.GPU_ENGINE_BATCH_SIZES if device.startswith("cuda") else defaults.ENGINE_BATCH_SIZES
    return sizes.get(engine, 1)


@dataclass
class BatchReport:
    """What happened to each prompt of a batch."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    tokens_attributed: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    #: prompt id -> "ErrorType: message" for every prompt in `retry` or `failed`.
    reasons: dict[str, str] = field(default_factory=dict)
    results: dict[str, AnalysisResult] = field(default_factory=dict)

    def merge(self, other: BatchReport) -> None:
        """Add another call's outcome to this one (a batch processed in several calls)."""
        self.done += other.done
        self.skipped += other.skipped
        self.retry += other.retry
        self.failed += other.failed
        self.tokens_attributed += other.tokens_attributed
        self.reasons.update(other.reasons)
        self.results.update(other.results)

    def summary(self) -> dict[str, Any]:
        """The JSON-safe outcome (prompt ids per outcome and tokens), for task results and logs."""
        return {
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "retry": self.retry,
            "tokens_attributed": self.tokens_attributed,
        }


def run_engine(
    loaded: LoadedModel,
    prompts: list[PromptInput],
    method: str,
    engine: str,
    options: dict[str, Any],
    generation_params: dict[str, Any],
) -> list[AttributionOutput | PromptFailure]:
    """Dispatch to the native engine or Inseq; an engine-wide crash fails every prompt given to it."""
    if engine == "native" and method in GRADIENT_METHODS:
        try:
            check_closed_form_head(loaded.model.config, loaded.model_id, method)
        except TokenLensError as exc:  # the model, not the prompt: no attempt would ever succeed
            return [PromptFailure(p.prompt_id, "UnsupportedModelError", str(exc), permanent=True) for p in prompts]
    try:
        if engine == "native":
            from tokenlens.engine.native import attribute_native

            return attribute_native(loaded, prompts, method, options, generation_params)
        from tokenlens.engine.inseq_engine import attribute_inseq

        return attribute_inseq(loaded, prompts, method, options, generation_params)
    except Exception as exc:  # isolate: the caller decides about retries per prompt
        # An engine-wide crash on several prompts says nothing about each: they are retried, each alone.
        return [PromptFailure(p.prompt_id, type(exc).__name__, str(exc)) for p in prompts]


def _token_infos(
    tokenizer: Any, ids: list[int], template: list[bool], probabilities: list[float] | None
) -> list[TokenInfo]:
    tokens = tokenizer.convert_ids_to_tokens(ids)
    infos = []
    for index, (token_id, token) in enumerate(zip(ids, tokens, strict=True)):
        probability = None
        if probabilities is not None and index < len(probabilities):
            probability = float(probabilities[index])
        infos.append(
            TokenInfo(
                token=str(token),
                token_id=int(token_id),
                clean_token=tokenizer.decode([token_id]),
                is_template=template[index],
                probability=probability,
            )
        )
    return infos


def _align_template_mask(prompt: PromptInput, input_ids: list[int], special: set[int]) -> list[bool]:
    """The template mask for the ids an engine actually used (Inseq may drop some tokens)."""
    if input_ids == prompt.input_ids:
        return list(prompt.template_mask)
    mask, cursor = [], 0
    for token_id in input_ids:
        while cursor < len(prompt.input_ids) and prompt.input_ids[cursor] != token_id:
            cursor += 1
        if cursor < len(prompt.input_ids):
            mask.append(prompt.template_mask[cursor])
            cursor += 1
        else:
            mask.append(token_id in special)
    return mask


def clean_scores(scores: np.ndarray, n_in: int) -> list[list[float]]:
    """Raw scores as the contract wants them: finite, and exactly 0 at and after each row's diagonal."""
    matrix = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    for i in range(matrix.shape[0]):
        matrix[i, n_in + i :] = 0.0
    cleaned: list[list[float]] = matrix.tolist()
    return cleaned


def build_result(
    loaded: LoadedModel,
    record: PromptRecord,
    prompt: PromptInput,
    output: AttributionOutput,
    *,
    method: str,
    run_id: str | None,
    generation_params: dict[str, Any],
) -> AnalysisResult:
    """The TokenLens JSON for one prompt."""
    tokenizer = loaded.tokenizer
    special = set(tokenizer.all_special_ids or [])
    input_mask = _align_template_mask(prompt, output.input_ids, special)
    output_mask = [token_id in special for token_id in output.output_ids]
    association = clean_scores(output.scores, len(output.input_ids))
    metadata = AnalysisMetadata(
        llm_id=loaded.model_id,
        prompt=record.prompt,
        attribution_method=method,
        generation_params={**generation_params, "max_new_tokens": prompt.max_new_tokens},
        run_id=run_id,
        prompt_id=record.id,
        engine=output.engine,
        method_params=output.method_params,
        timings_s={k: round(float(v), 6) for k, v in output.timings_s.items()},
        forced_target=record.target is not None,
        attributed_fn=output.method_params.get("attributed_fn"),
        contrast_target=record.contrast_target if _is_contrastive(output.method_params) else None,
        device=loaded.device,
        dtype=loaded.dtype,
        attention_implementation=output.attention_implementation,
    )
    data = AnalysisData(
        input_tokens=_token_infos(tokenizer, output.input_ids, input_mask, None),
        output_tokens=_token_infos(tokenizer, output.output_ids, output_mask, output.token_probabilities),
        association_matrix=association,
    )
    metadata.generated_text = _add_spans(tokenizer, prompt, output, data)
    return annotate_groups(AnalysisResult(metadata=metadata, data=data))


def _add_spans(tokenizer: Any, prompt: PromptInput, output: AttributionOutput, data: AnalysisData) -> str:
    """Give each token its character span (`tokenlens.words`); returns the generated text output spans point into."""
    model_text = prompt.model_text or prompt.text
    offsets: list[tuple[int, int]] | None
    if prompt.offsets is not None:  # from `prepare_prompt`: the tokens and offsets of model_text
        ids, offsets = prompt.input_ids, prompt.offsets
    else:  # a prompt built by hand, or a tokenizer without offsets: ask it once more
        ids, offsets = encode_text(tokenizer, model_text)
    if ids == output.input_ids:  # an engine that dropped tokens keeps no spans: words fall back to token text
        mask = [token.is_template for token in data.input_tokens]
        for token, span in zip(
            data.input_tokens, input_spans(offsets, mask, model_text.rfind(prompt.text), len(prompt.text)), strict=True
        ):
            token.span = list(span) if span is not None else None
    generated, spans = decoded_spans(tokenizer, output.output_ids)
    for token, (start, end) in zip(data.output_tokens, spans, strict=True):
        token.span = [start, end]
    return generated


def _is_contrastive(method_params: dict[str, Any]) -> bool:
    return method_params.get("attributed_fn") in CONTRASTIVE_FNS


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), max(size, 1))]


def process_batch(
    loaded: LoadedModel,
    task: BatchTask,
    *,
    storage: Storage | None = None,
    attempts: Mapping[str, int] | None = None,
    max_attempts: int = defaults.MAX_ATTEMPTS,
    should_stop: Callable[[], bool] | None = None,
    engine_batch_size: int | None = None,
    on_prompt_finished: Callable[[str, str], None] | None = None,
) -> BatchReport:
    """Attribute `task`'s prompts and store each result exactly once.

    - Prompts that already have a result are skipped (a redelivered batch is harmless).
    - A failing prompt is returned in `retry`, or recorded as an error once it
      failed permanently or `attempts[prompt_id] >= max_attempts`.
    - `should_stop()` is polled between engine calls; prompts not started then
      are handed back in `retry` with no attempt charged.
    - `on_prompt_finished(prompt_id, outcome)` is called with "done", "skipped",
      "retry" or "failed" as each prompt settles (progress bars).
    """
    started = time.perf_counter()
    report = BatchReport()
    store = RunStore(storage or open_storage(task.results_url), task.run_id)
    generation_params = {k: v for k, v in task.generation_params.items() if k != "max_new_tokens"}
    attempts = attempts or {}
    notify = on_prompt_finished or (lambda _pid, _outcome: None)
    records = {record.id: record for record in task.prompts}

    def fail(prompt_id: str, error_type: str, message: str, permanent: bool) -> None:
        attempt = attempts.get(prompt_id, 1)
        report.reasons[prompt_id] = f"{error_type}: {message}"
        if permanent or attempt >= max_attempts:
            record = records[prompt_id]
            store.write_error(
                ErrorRecord(
                    run_id=task.run_id,
                    prompt_id=prompt_id,
                    prompt=record.prompt,
                    error_type=error_type,
                    message=message,
                    attempts=attempt,
                )
            )
            report.failed.append(prompt_id)
            notify(prompt_id, "failed")
        else:
            report.retry.append(prompt_id)
            notify(prompt_id, "retry")

    todo = []
    for record in task.prompts:
        if result_done(store, record.id):
            report.skipped.append(record.id)
            notify(record.id, "skipped")
        else:
            todo.append(record)
    try:
        engine = resolve_engine(task.method, task.engine)
        options = validate_options(task.method, task.method_params)
    except TokenLensError as exc:  # an unknown method or options that don't fit: no attempt can succeed
        for record in todo:
            fail(record.id, type(exc).__name__, str(exc), permanent=True)
        report.timings_s["total"] = time.perf_counter() - started
        store.flush_progress()
        return report

    prepared: list[PromptInput] = []
    for record in todo:
        try:
            prepared.append(
                prepare_prompt(loaded, record, chat_template=task.chat_template, max_new_tokens=task.max_new_tokens)
            )
        except TokenLensError as exc:
            fail(record.id, type(exc).__name__, str(exc), permanent=True)

    size = engine_batch_size or engine_batch_size_for(engine, loaded.device)
    groups = _chunks(prepared, size)
    for index, group in enumerate(groups):
        if should_stop is not None and should_stop():
            for prompt in (p for later in groups[index:] for p in later):
                report.retry.append(prompt.prompt_id)
                report.reasons[prompt.prompt_id] = "handed back: worker stopping"
                notify(prompt.prompt_id, "retry")
            break
        outcomes = run_engine(loaded, group, task.method, engine, options, generation_params)
        by_id = {prompt.prompt_id: prompt for prompt in group}
        for outcome in outcomes:
            if isinstance(outcome, PromptFailure):
                alone = len(group) == 1
                deterministic = alone and outcome.error_type in DETERMINISTIC_ERRORS
                fail(outcome.prompt_id, outcome.error_type, outcome.message, outcome.permanent or deterministic)
                continue
            prompt = by_id[outcome.prompt_id]
            record = records[outcome.prompt_id]
            try:
                result = build_result(
                    loaded,
                    record,
                    prompt,
                    outcome,
                    method=task.method,
                    run_id=task.run_id,
                    generation_params=generation_params,
                )
            except ValueError as exc:  # a result that breaks the contract is a failure, never a file
                fail(outcome.prompt_id, "ResultValidationError", str(exc), permanent=False)
                continue
            if outcome.inseq_native_json is not None:
                store.write_inseq(outcome.prompt_id, outcome.inseq_native_json)
            if store.write_result(result, task.result_format):
                report.done.append(outcome.prompt_id)
                report.tokens_attributed += len(outcome.output_ids)
                report.results[outcome.prompt_id] = result
                store.clear_error(outcome.prompt_id)  # an earlier failure is superseded
                notify(outcome.prompt_id, "done")
            else:
                report.skipped.append(outcome.prompt_id)
                notify(outcome.prompt_id, "skipped")
    report.timings_s["total"] = time.perf_counter() - started
    store.flush_progress()  # the run's progress record counts this batch's results now
    return report
