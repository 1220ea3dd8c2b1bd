"""TokenLens's native attribution engine: Inseq's numbers for saliency, input x gradient, integrated gradients
and attention, computed in one teacher-forced pass per batch instead of one pass per generated token.

Inseq attributes a generation step by step: for output token t it runs a new
forward and backward pass over the prefix it sees. A causal LM's activations at
position q depend only on positions <= q, so one forward pass over prompt +
output holds every step's activations. This engine

1. generates greedily with the KV cache, left-padded batches (generation.py);
2. plans length-sorted batches that fit the memory budget (memory.py);
3. has the method run each batch (methods.py): the gradient methods through one
   segmented teacher-forced pass with batched vector-Jacobian products
   (gradient_pass.py), started from the closed-form, well-conditioned gradient
   of the attributed function at the LM head (head_gradient.py); `attention`
   from one forward pass;
4. refuses up front a prompt whose smallest pieces need more memory than the
   device has (an error record naming the bytes); on out-of-memory frees the
   failed attempt, then retries with half the target chunk (if a backward call
   ran out), half the batch, then half the integration steps per pass (a
   forward that ran out is never repeated at its size), and fails only that prompt.

Parameters are frozen while it runs, so backward computes input gradients only.
The scores are Inseq's *unnormalised* aggregate (`aggregate(normalize=False)`);
Inseq's default `aggregate()` additionally divides each step by its L1 norm.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenlens import defaults
from tokenlens.engine.generation import generate_greedy
from tokenlens.engine.layout import BatchScores, Item
from tokenlens.engine.memory import (
    BACKWARD,
    CPU_SLOT_ROWS,
    PREPARE,
    MemoryModel,
    failed_phase,
    is_out_of_memory,
    memory_model,
    release_memory,
)
from tokenlens.engine.methods import NativeMethod, native_method
from tokenlens.engine.options import CONTRASTIVE_FNS
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptFailure, PromptInput
from tokenlens.errors import MethodOptionError
from tokenlens.models import LoadedModel

log = logging.getLogger(__name__)

#: Prompts that share a generation forward pass when no batch size is given.
DEFAULT_GENERATION_BATCH = 16


def attribute_native(
    loaded: LoadedModel,
    prompts: list[PromptInput],
    method: str,
    options: dict[str, Any],
    generation_params: dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> list[AttributionOutput | PromptFailure]:
    """Attribute each prompt's continuation (forced `target_ids`, else a greedy generation) with `method`.

    `options` come validated and defaulted from `registry.validate_options`.
    `batch_size` sets the prompts per forward pass (default: as many as the
    memory budget holds, of similar lengths). Returns one result per prompt, in
    order; a prompt that can't be attributed (too long for the context window,
    nothing to attribute) is a PromptFailure and the others go on.
    """
    native = native_method(method)
    options = validate_options(method, options)  # idempotent; fills defaults for direct callers
    if getattr(loaded.model.config, "is_encoder_decoder", False):
        raise MethodOptionError(
            f"the native engine attributes decoder-only models; {loaded.model_id} is encoder-decoder"
        )
    native.check_supported(loaded, options)
    memory = memory_model(loaded)
    results: list[AttributionOutput | PromptFailure | None] = [None] * len(prompts)
    items: list[Item] = []
    to_generate: list[int] = []
    for index, prompt in enumerate(prompts):
        # Before generating, a prompt must fit with its forced target, or with one new token at least.
        n_out = len(prompt.target_ids) if prompt.target_ids is not None else 1
        failure = _check_prompt(loaded, prompt) or _check_memory(memory, native, options, prompt, n_out)
        if failure is not None:
            results[index] = failure
        elif prompt.target_ids is not None:
            items.append(Item(index, prompt, list(prompt.target_ids), {"generation": 0.0}))
        else:
            to_generate.append(index)

    with _frozen_parameters(loaded.model):
        for index, generated, seconds in _generate_all(
            loaded, [prompts[i] for i in to_generate], to_generate, generation_params or {}, batch_size
        ):
            if isinstance(generated, PromptFailure):
                results[index] = generated
            elif not generated:
                results[index] = PromptFailure(
                    prompts[index].prompt_id,
                    "EmptyGeneration",
                    "the model generated no tokens (max_new_tokens is 0?); nothing to attribute",
                    permanent=True,
                )
            else:
                failure = _check_memory(memory, native, options, prompts[index], len(generated))
                if failure is not None:
                    results[index] = failure
                else:
                    items.append(Item(index, prompts[index], generated, {"generation": seconds}))
        items = _with_contrasts(items, options, results)
        for batch in _plan_batches(loaded, items, native, options, batch_size):
            for item, outcome in _attribute_resilient(loaded, batch, native, options):
                results[item.index] = outcome
    return [result if result is not None else _lost(prompts[i]) for i, result in enumerate(results)]


def _lost(prompt: PromptInput) -> PromptFailure:  # pragma: no cover - every path above fills its slot
    return PromptFailure(prompt.prompt_id, "InternalError", "the native engine produced no result for this prompt")


# --------------------------------------------------------------------------- checks


def _check_prompt(loaded: LoadedModel, prompt: PromptInput) -> PromptFailure | None:
    if not prompt.input_ids:
        return PromptFailure(
            prompt.prompt_id, "EmptyPrompt", "the prompt has no tokens; nothing to attribute", permanent=True
        )
    if prompt.target_ids is not None and len(prompt.target_ids) == 0:
        return PromptFailure(
            prompt.prompt_id,
            "EmptyTarget",
            "the forced target has no tokens; give a non-empty target or none to generate",
            permanent=True,
        )
    n_out = len(prompt.target_ids) if prompt.target_ids is not None else int(prompt.max_new_tokens)
    if prompt.target_ids is None and n_out < 1:
        return PromptFailure(
            prompt.prompt_id,
            "EmptyGeneration",
            f"max_new_tokens is {n_out}; ask for at least 1 new token",
            permanent=True,
        )
    context = loaded.context_length
    total = len(prompt.input_ids) + n_out
    if context is not None and total > context:
        what = "forced target tokens" if prompt.target_ids is not None else "max_new_tokens"
        return PromptFailure(
            prompt.prompt_id,
            "PromptTooLongError",
            f"prompt {prompt.prompt_id!r} has {len(prompt.input_ids)} tokens + {n_out} {what} = {total}, more than "
            f"the model's context window of {context} tokens; shorten the prompt or lower --max-new-tokens",
            permanent=True,
        )
    return None


def _check_memory(
    memory: MemoryModel, method: NativeMethod, options: dict[str, Any], prompt: PromptInput, n_out: int
) -> PromptFailure | None:
    """A prompt whose smallest pieces need more memory than the device can give fails now, for good: retrying
    smaller can't help, and running it would only fail (or, on a CPU, wake the OOM killer)."""
    width = len(prompt.input_ids) + n_out
    needed = method.alone_bytes(memory, width, n_out, options)
    if needed <= memory.limit_bytes:
        return None
    gib = 2**30
    message = (
        f"prompt {prompt.prompt_id!r} ({len(prompt.input_ids)} + {n_out} tokens) needs ~{needed / gib:.1f} GiB "
        f"for {method.name} even alone, in the smallest pieces (one target per backward call, one integration "
        f"step per pass); the device can give it {memory.limit_bytes / gib:.1f} GiB. Use a device with more "
        "memory, a smaller --max-new-tokens (or target) or a shorter prompt"
    )
    return PromptFailure(prompt.prompt_id, "OutOfMemoryError", message, permanent=True)


def _with_contrasts(
    items: list[Item], options: dict[str, Any], results: list[AttributionOutput | PromptFailure | None]
) -> list[Item]:
    """Items a contrastive attributed function can attribute: each needs a contrast token per output token
    (aligned 1:1, as Inseq's default alignment); the others fail here, for good."""
    attributed_fn = options.get("attributed_fn")
    if attributed_fn not in CONTRASTIVE_FNS:
        return items
    kept = []
    for item in items:
        contrast = item.prompt.contrast_ids
        problem = None
        if not contrast:
            problem = "has no contrast_target; add the alternative continuation to compare against"
        elif len(contrast) < len(item.output_ids):
            problem = (
                f"has a contrast_target of {len(contrast)} tokens but an output of {len(item.output_ids)}; tokens "
                "are compared one to one, so give a contrast_target at least as long (or a `target` as long)"
            )
        if problem is None:
            kept.append(item)
        else:
            message = f"prompt {item.prompt.prompt_id!r} {problem} (attributed function {attributed_fn})"
            results[item.index] = PromptFailure(item.prompt.prompt_id, "ContrastTargetError", message, permanent=True)
    return kept


# --------------------------------------------------------------------------- generation


def _generate_all(
    loaded: LoadedModel,
    prompts: list[PromptInput],
    indices: list[int],
    generation_params: dict[str, Any],
    batch_size: int | None,
) -> Iterator[tuple[int, list[int] | PromptFailure, float]]:
    """Greedy continuations in length-sorted batches, each prompt charged its share of its batch's time."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
    size = max(1, batch_size or DEFAULT_GENERATION_BATCH)
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        yield from _generate_resilient(
            loaded, [prompts[i] for i in chunk], [indices[i] for i in chunk], generation_params
        )


def _generate_resilient(
    loaded: LoadedModel, prompts: list[PromptInput], indices: list[int], generation_params: dict[str, Any]
) -> Iterator[tuple[int, list[int] | PromptFailure, float]]:
    """Generate a batch; on out-of-memory free it and generate each half, down to one prompt (which fails)."""
    pending = [(prompts, indices)]
    while pending:
        group, group_indices = pending.pop()
        started = time.perf_counter()
        outputs = _try_generate(loaded, group, generation_params)
        if isinstance(outputs, str):
            release_memory()  # outside the `except`: the failed attempt's traceback and tensors are gone
            if len(group) == 1:
                message = f"out of memory generating this prompt alone: {outputs}"
                yield group_indices[0], PromptFailure(group[0].prompt_id, "OutOfMemoryError", message), 0.0
                continue
            half = len(group) // 2
            log.warning("out of memory generating %d prompts; splitting the batch in two", len(group))
            pending += [(group[half:], group_indices[half:]), (group[:half], group_indices[:half])]
            continue
        share = (time.perf_counter() - started) / len(group)
        for index, output in zip(group_indices, outputs, strict=True):
            yield index, output, share


def _try_generate(
    loaded: LoadedModel, prompts: list[PromptInput], generation_params: dict[str, Any]
) -> list[list[int]] | str:
    """The continuations, or the out-of-memory message (the exception itself must not outlive this call)."""
    try:
        return generate_greedy(loaded, prompts, generation_params)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        return str(exc)


# --------------------------------------------------------------------------- batching and out-of-memory


def _plan_batches(
    loaded: LoadedModel, items: list[Item], method: NativeMethod, options: dict[str, Any], batch_size: int | None
) -> list[list[Item]]:
    """Length-sorted batches: `batch_size` prompts each, or as many as fit the memory budget (all their
    integration steps in one pass) with little padding (defaults.MAX_PADDING_RATIO; more on CUDA)."""
    ordered = sorted(items, key=lambda item: len(item.ids))
    on_gpu = str(loaded.device).startswith("cuda")
    padding_ratio = defaults.GPU_MAX_PADDING_RATIO if on_gpu else defaults.MAX_PADDING_RATIO
    memory = memory_model(loaded) if batch_size is None else None
    batches: list[list[Item]] = []
    current: list[Item] = []
    for item in ordered:
        candidate = [*current, item]
        width = max(len(member.ids) for member in candidate)
        if memory is None:
            full = batch_size is not None and len(candidate) > batch_size
        else:
            too_padded = len(candidate) * width > padding_ratio * sum(len(m.ids) for m in candidate)
            full = too_padded or not method.batch_fits(memory, len(candidate), width, options)
        if current and full:
            batches.append(current)
            current = [item]
        else:
            current = candidate
    if current:
        batches.append(current)
    return batches


def _first_sizes(
    loaded: LoadedModel, items: list[Item], method: NativeMethod, options: dict[str, Any]
) -> tuple[int, int]:
    """Targets per backward call and integration steps per pass to start with: what the memory budget allows."""
    chunk = int(options.get("target_chunk", 16))
    step_group = method.graph_rows(options)
    if method.is_gradient:
        memory = memory_model(loaded)
        width = max(len(item.ids) for item in items)
        step_group = max(1, min(step_group, memory.rows_that_fit(width) // len(items)))
        if step_group < method.graph_rows(options):  # several passes: their float32 sum sits beside the graph
            n_out = max(len(item.output_ids) for item in items)
            accumulator = memory.accumulator_bytes(len(items), n_out, width)
            step_group = max(1, min(step_group, memory.rows_that_fit(width, accumulator) // len(items)))
        rows = step_group * len(items)
        chunk = max(1, min(chunk, memory.slots_that_fit(rows, width, memory.head_bytes(chunk * rows))))
        if loaded.model.device.type == "cpu":
            chunk = max(1, min(chunk, CPU_SLOT_ROWS // rows))
    return chunk, step_group


@dataclass(frozen=True)
class _Attempt:
    """One try at a batch: its prompts, targets per backward call and integration steps per pass."""

    items: list[Item]
    chunk: int
    step_group: int


@dataclass(frozen=True)
class _OutOfMemory:
    """What is kept of a failed attempt: where it ran out and the message, never the exception (its traceback
    holds the attempt's graph)."""

    phase: str
    message: str


def _attribute_resilient(
    loaded: LoadedModel, items: list[Item], method: NativeMethod, options: dict[str, Any]
) -> list[tuple[Item, AttributionOutput | PromptFailure]]:
    """Attribute a batch. On out-of-memory, free the failed attempt, then retry smaller: a backward call that ran
    out halves the target chunk first; a forward pass that ran out (the rows' graph itself does not fit) splits
    the batch, then the integration-step group, and is never run again at that size."""
    chunk, step_group = _first_sizes(loaded, items, method, options)
    pending = [_Attempt(items, chunk, step_group)]
    outcomes: list[tuple[Item, AttributionOutput | PromptFailure]] = []
    while pending:
        attempt = pending.pop()
        batch = _try_batch(loaded, attempt, method, options)
        if isinstance(batch, BatchScores):
            used = {**options, "target_chunk": attempt.chunk} if method.is_gradient else dict(options)
            outcomes += _outcomes(loaded, attempt.items, method, batch, used)
            continue
        release_memory()  # outside the `except`: the failed attempt's traceback and graph are gone
        smaller = _smaller_attempts(attempt, batch, method)
        if smaller:
            pending += reversed(smaller)
            continue
        item = attempt.items[0]
        message = f"out of memory attributing this prompt alone, in the smallest pieces: {batch.message}"
        outcomes.append((item, PromptFailure(item.prompt.prompt_id, "OutOfMemoryError", message)))
    return outcomes


def _try_batch(
    loaded: LoadedModel, attempt: _Attempt, method: NativeMethod, options: dict[str, Any]
) -> BatchScores | _OutOfMemory:
    try:
        return _attribute_batch(loaded, attempt.items, method, options, attempt.chunk, attempt.step_group)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        return _OutOfMemory(failed_phase(exc), str(exc))


def _smaller_attempts(attempt: _Attempt, failure: _OutOfMemory, method: NativeMethod) -> list[_Attempt]:
    """The attempts to make instead of one that ran out of memory (none: it can't be cut smaller)."""
    items, chunk, step_group = attempt.items, attempt.chunk, attempt.step_group
    if failure.phase == BACKWARD and method.is_gradient and chunk > 1:
        log.warning("out of memory attributing %d prompt(s); retrying with target_chunk=%d", len(items), chunk // 2)
        return [_Attempt(items, chunk // 2, step_group)]
    if len(items) > 1:
        half = len(items) // 2
        log.warning("out of memory (%s) attributing %d prompts; splitting the batch in two", failure.phase, len(items))
        return [_Attempt(items[:half], chunk, step_group), _Attempt(items[half:], chunk, step_group)]
    if failure.phase != PREPARE and step_group > 1:  # the plain pass for p(y) has one row whatever the group
        log.warning("out of memory (%s); integrating %d steps per pass", failure.phase, (step_group + 1) // 2)
        return [_Attempt(items, chunk, (step_group + 1) // 2)]
    return []


def _attribute_batch(
    loaded: LoadedModel, items: list[Item], method: NativeMethod, options: dict[str, Any], chunk: int, step_group: int
) -> BatchScores:
    """The one place a batch is run (tests stand in for it to simulate running out of memory)."""
    return method.attribute_batch(loaded, items, options, chunk, step_group)


def _outcomes(
    loaded: LoadedModel, items: list[Item], method: NativeMethod, batch: BatchScores, used: dict[str, Any]
) -> list[tuple[Item, AttributionOutput | PromptFailure]]:
    """Each prompt's result from its batch's scores, with its share of the batch's time."""
    share_forward = batch.forward_s / len(items)
    share_backward = batch.backward_s / len(items)
    outcomes: list[tuple[Item, AttributionOutput | PromptFailure]] = []
    for item, scores, probabilities in zip(items, batch.scores, batch.probabilities, strict=True):
        if not np.isfinite(scores).all():
            failure = PromptFailure(
                item.prompt.prompt_id,
                "NonFiniteScores",
                f"the {method.name} scores overflowed ({loaded.dtype}); run this prompt in float32",
                permanent=True,
            )
            outcomes.append((item, failure))
            continue
        timings = {**item.timings_s, "forward": share_forward, "backward": share_backward}
        timings["total"] = sum(timings.values())
        output = AttributionOutput(
            prompt_id=item.prompt.prompt_id,
            input_ids=list(item.prompt.input_ids),
            output_ids=list(item.output_ids),
            scores=scores,
            token_probabilities=probabilities,
            engine="native",
            method_params=used,
            timings_s=timings,
            attention_implementation=batch.attention,
        )
        outcomes.append((item, output))
    return outcomes


@contextlib.contextmanager
def _frozen_parameters(model: Any) -> Iterator[None]:
    """Gradients w.r.t. the inputs only: no parameter gradient is ever computed (or stored)."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
