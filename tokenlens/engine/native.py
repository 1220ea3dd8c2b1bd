"""TokenLens's native attribution engine: Inseq's numbers for saliency, input x gradient, integrated gradients
and attention, computed in one teacher-forced pass per batch instead of one pass per generated token.

Inseq attributes a generation step by step: for output token t it runs a new
forward and backward pass over the prefix it sees. A causal LM's activations at
position q depend only on positions <= q, so one forward pass over prompt +
output holds every step's activations. This engine

1. generates greedily with the KV cache, left-padded batches (generation.py);
2. runs the teacher-forced forward pass in segments (SEGMENT_POSITIONS or
   `target_chunk` positions, longer if that makes more than MAX_SEGMENTS),
   each segment reading the earlier ones through the KV cache *inside* the
   autograd graph, so the targets of a segment backpropagate only through the
   prefix they can see;
3. for each segment, computes its targets' input-embedding gradients with
   batched vector-Jacobian products (`is_grads_batched`, `target_chunk` targets
   per call, every prompt of the batch in each), starting from the closed form
   of the LM-head gradient: d p_y / d h = p_y (W_y - p^T W) (log p_y:
   W_y - p^T W), so no vocabulary-sized backward ever runs;
4. reduces each gradient to one score per source token exactly as Inseq's
   default aggregation does (L2 norm over the embedding dimension).

Parameters are frozen while it runs, so backward computes input gradients only.
Integrated gradients uses Captum's rule (Gauss-Legendre steps, UNK baseline with
EOS positions kept, as Inseq builds it); `attention` averages the chosen layers'
and heads' weights from one forward pass, as Inseq's `attention` does.

The scores are Inseq's *unnormalised* aggregate (`aggregate(normalize=False)`);
Inseq's default `aggregate()` additionally divides each step by its L1 norm.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import itertools
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenlens.engine.generation import attention_implementation, generate_greedy, pad_token_id
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptFailure, PromptInput
from tokenlens.errors import MethodOptionError
from tokenlens.models import LoadedModel

log = logging.getLogger(__name__)

GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
NATIVE_METHODS = (*GRADIENT_METHODS, "attention")

#: Memory the engine plans to use on CPU (at most a quarter of the machine's RAM): batches, integration-step
#: groups and target chunks are sized from it before anything runs, because on Linux running out of RAM
#: usually means the OOM killer, not a MemoryError to recover from. On CUDA it plans with half the free memory.
CPU_MEMORY_BUDGET_BYTES = 4 << 30
#: At most this many forward segments per pass: each keeps its own copy of the keys and values it attended
#: to, so their number bounds the graph's memory; targets of a long segment take several backward calls.
MAX_SEGMENTS = 8
#: Shortest forward segment, in positions. Backward calls for a segment's targets run through all of it, so
#: a target wastes on average half a segment; shorter segments waste less but make more (and smaller) calls.
SEGMENT_POSITIONS = 16
#: Largest padded area (prompts x longest length) a batch may have per real token when no batch size is
#: given: padding costs full price in every backward pass, while batching saves little once a pass is
#: a few hundred rows.
MAX_PADDING_RATIO = 1.15
#: On CPU, at most this many target slots x rows per backward call. Measured on SmolLM2-135M, 2 cores,
#: integrated gradients (8 step rows) on 64 targets: 64 slot-rows took 42-47 s, 128 took 51 s, 32 took 49 s;
#: larger calls make the backward's memory-bound elementwise work slower. GPUs take the full `target_chunk`.
CPU_SLOT_ROWS = 64
#: Prompts that share a generation forward pass when no batch size is given.
DEFAULT_GENERATION_BATCH = 16
#: Target positions whose vocabulary distribution is materialised at once (bounds a [n, vocab] buffer).
LM_HEAD_ROWS = 512
#: Config fields of models whose logits are not just `lm_head(h)`; the closed-form head gradient would be wrong.
_LOGIT_TRANSFORM_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class _Item:
    """One prompt ready to attribute: its tokens and continuation, and where it goes in the caller's list."""

    index: int
    prompt: PromptInput
    output_ids: list[int]
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return list(self.prompt.input_ids) + list(self.output_ids)


@dataclass
class _BatchScores:
    """What one batch pass produced for each of its prompts, and its phase times."""

    scores: list[np.ndarray]
    probabilities: list[list[float]]
    forward_s: float
    backward_s: float


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
    if method not in NATIVE_METHODS:
        raise MethodOptionError(
            f"method {method!r} has no native engine (native methods: {', '.join(NATIVE_METHODS)}); "
            "run it with --engine inseq"
        )
    options = validate_options(method, options)  # idempotent; fills defaults for direct callers
    _check_model_supported(loaded, method, options)
    results: list[AttributionOutput | PromptFailure | None] = [None] * len(prompts)
    items: list[_Item] = []
    to_generate: list[int] = []
    for index, prompt in enumerate(prompts):
        failure = _check_prompt(loaded, prompt)
        if failure is not None:
            results[index] = failure
        elif prompt.target_ids is not None:
            items.append(_Item(index, prompt, list(prompt.target_ids), {"generation": 0.0}))
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
                items.append(_Item(index, prompts[index], generated, {"generation": seconds}))
        for batch in _plan_batches(loaded, items, method, options, batch_size):
            for item, outcome in _attribute_resilient(loaded, batch, method, options):
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


def _check_model_supported(loaded: LoadedModel, method: str, options: dict[str, Any]) -> None:
    """Fail before any work on a model or option set the native engine can't attribute exactly."""
    config = loaded.model.config
    if getattr(config, "is_encoder_decoder", False):
        raise MethodOptionError(
            f"the native engine attributes decoder-only models; {loaded.model_id} is encoder-decoder"
        )
    if method == "attention":
        n_layers, n_heads = _layer_head_counts(loaded)
        _resolve_indices("layers", options.get("layers"), n_layers)
        _resolve_indices("heads", options.get("heads"), n_heads)
        return
    for name in _LOGIT_TRANSFORM_FIELDS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise MethodOptionError(
                f"model {loaded.model_id} transforms its logits ({name}={value}); the native {method} can't "
                "reproduce that exactly yet: run it with --engine inseq"
            )
    head = loaded.model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise MethodOptionError(f"model {loaded.model_id} has no output embedding layer; use --engine inseq")


def _layer_head_counts(loaded: LoadedModel) -> tuple[int, int]:
    config = loaded.model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not layers or not heads:
        raise MethodOptionError(f"can't tell the layer and head counts of {loaded.model_id}; use --engine inseq")
    return int(layers), int(heads)


def _resolve_indices(name: str, values: list[int] | None, count: int) -> list[int]:
    """Layer or head indices (negative ones count from the end); all of them when None."""
    if values is None:
        return list(range(count))
    resolved = []
    for value in values:
        if not -count <= value < count:
            raise MethodOptionError(
                f"attention option {name} has {value}, but the model has {count} {name} "
                f"(valid: 0..{count - 1}, or negative from the end)"
            )
        resolved.append(value % count)
    if not resolved:
        raise MethodOptionError(f"attention option {name} is empty; leave it out to use all {count}")
    return resolved


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
    started = time.perf_counter()
    try:
        outputs = generate_greedy(loaded, prompts, generation_params)
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        _release_memory()
        if len(prompts) == 1:
            yield (
                indices[0],
                PromptFailure(
                    prompts[0].prompt_id, "OutOfMemoryError", f"out of memory generating this prompt alone: {exc}"
                ),
                0.0,
            )
            return
        half = len(prompts) // 2
        yield from _generate_resilient(loaded, prompts[:half], indices[:half], generation_params)
        yield from _generate_resilient(loaded, prompts[half:], indices[half:], generation_params)
        return
    share = (time.perf_counter() - started) / len(prompts)
    for index, output in zip(indices, outputs, strict=True):
        yield index, output, share


# --------------------------------------------------------------------------- batching and out-of-memory


def _graph_rows_per_prompt(method: str, options: dict[str, Any]) -> int:
    return int(options.get("n_steps", 1)) if method == "integrated_gradients" else 1


def _plan_batches(
    loaded: LoadedModel, items: list[_Item], method: str, options: dict[str, Any], batch_size: int | None
) -> list[list[_Item]]:
    """Length-sorted batches: `batch_size` prompts each, or as many as fit the memory budget (all their
    integration steps in one pass) with little padding (MAX_PADDING_RATIO)."""
    ordered = sorted(items, key=lambda item: len(item.ids))
    rows = _graph_rows_per_prompt(method, options)
    memory = _memory_model(loaded) if batch_size is None else None
    batches: list[list[_Item]] = []
    current: list[_Item] = []
    for item in ordered:
        candidate = [*current, item]
        width = max(len(member.ids) for member in candidate)
        if memory is None:
            full = batch_size is not None and len(candidate) > batch_size
        else:
            too_padded = len(candidate) * width > MAX_PADDING_RATIO * sum(len(m.ids) for m in candidate)
            if method == "attention":
                too_big = len(candidate) * memory.attention_bytes(width) > memory.budget_bytes
            else:
                too_big = len(candidate) * rows > memory.rows_that_fit(width)
            full = too_padded or too_big
        if current and full:
            batches.append(current)
            current = [item]
        else:
            current = candidate
    if current:
        batches.append(current)
    return batches


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover - torch always has it
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _attribute_resilient(
    loaded: LoadedModel, items: list[_Item], method: str, options: dict[str, Any]
) -> list[tuple[_Item, AttributionOutput | PromptFailure]]:
    """Attribute a batch; on out-of-memory halve the target chunk, then the batch, then the integration-step group.

    Integration steps per pass and targets per backward call start at what the memory budget allows.
    """
    chunk = int(options.get("target_chunk", 16))
    step_group = _graph_rows_per_prompt(method, options)
    if method in GRADIENT_METHODS:
        memory = _memory_model(loaded)
        width = max(len(item.ids) for item in items)
        step_group = max(1, min(step_group, memory.rows_that_fit(width) // len(items)))
        rows = step_group * len(items)
        chunk = max(1, min(chunk, memory.slots_that_fit(rows, width)))
        if loaded.model.device.type == "cpu":
            chunk = max(1, min(chunk, CPU_SLOT_ROWS // rows))
    while True:
        try:
            batch = _attribute_batch(loaded, items, method, options, chunk, step_group)
            break
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            _release_memory()
            if method in GRADIENT_METHODS and chunk > 1:
                chunk //= 2
                log.warning("out of memory attributing %d prompt(s); retrying with target_chunk=%d", len(items), chunk)
                continue
            if len(items) > 1:
                half = len(items) // 2
                log.warning("out of memory attributing %d prompts; splitting the batch in two", len(items))
                narrower = {**options, "target_chunk": chunk} if method in GRADIENT_METHODS else options
                return _attribute_resilient(loaded, items[:half], method, narrower) + _attribute_resilient(
                    loaded, items[half:], method, narrower
                )
            if step_group > 1:
                step_group = (step_group + 1) // 2
                log.warning("out of memory; integrating %d steps per pass", step_group)
                continue
            return [
                (
                    items[0],
                    PromptFailure(
                        items[0].prompt.prompt_id,
                        "OutOfMemoryError",
                        f"out of memory attributing this prompt alone, in the smallest pieces: {exc}",
                    ),
                )
            ]
    used = dict(options)
    if method in GRADIENT_METHODS:
        used["target_chunk"] = chunk
    share_forward = batch.forward_s / len(items)
    share_backward = batch.backward_s / len(items)
    outcomes: list[tuple[_Item, AttributionOutput | PromptFailure]] = []
    for item, scores, probabilities in zip(items, batch.scores, batch.probabilities, strict=True):
        if not np.isfinite(scores).all():
            outcomes.append(
                (
                    item,
                    PromptFailure(
                        item.prompt.prompt_id,
                        "NonFiniteScores",
                        f"the {method} scores overflowed ({loaded.dtype}); run this prompt in float32",
                        permanent=True,
                    ),
                )
            )
            continue
        timings = {**item.timings_s, "forward": share_forward, "backward": share_backward}
        timings["total"] = sum(timings.values())
        outcomes.append(
            (
                item,
                AttributionOutput(
                    prompt_id=item.prompt.prompt_id,
                    input_ids=list(item.prompt.input_ids),
                    output_ids=list(item.output_ids),
                    scores=scores,
                    token_probabilities=probabilities,
                    engine="native",
                    method_params=used,
                    timings_s=timings,
                ),
            )
        )
    return outcomes


def _attribute_batch(
    loaded: LoadedModel, items: list[_Item], method: str, options: dict[str, Any], chunk: int, step_group: int
) -> _BatchScores:
    if method == "attention":
        return _attention_batch(loaded, items, options)
    return _gradient_batch(loaded, items, method, options, chunk, step_group)


# --------------------------------------------------------------------------- the padded batch


@dataclass
class _Layout:
    """A left-padded batch and where each prompt's targets sit in it.

    Row b holds prompt b right-aligned in `width` positions, starting at `pads[b]`.
    Its output token k sits at position `starts[b] + k` and is predicted from the
    hidden state at the position before it (its logit position).
    """

    ids: Any  # LongTensor [B, width]
    mask: Any  # LongTensor [B, width]
    positions: Any  # LongTensor [B, width]
    pads: list[int]
    starts: list[int]
    n_out: list[int]

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    def targets_at(self, position: int) -> list[tuple[int, int, int]]:
        """(row, output index, token id) of every target whose logit is read at `position`."""
        found = []
        for row, (start, n_out) in enumerate(zip(self.starts, self.n_out, strict=True)):
            k = position + 1 - start
            if 0 <= k < n_out:
                found.append((row, k, int(self.ids[row, position + 1])))
        return found


def _layout(loaded: LoadedModel, items: Sequence[_Item]) -> _Layout:
    import torch

    sequences = [item.ids for item in items]
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(items), width), pad_token_id(loaded), dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    pads = []
    for row, seq in enumerate(sequences):
        pad = width - len(seq)
        ids[row, pad:] = torch.tensor(seq, dtype=torch.long)
        mask[row, pad:] = 1
        pads.append(pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = loaded.model.device
    n_out = [len(item.output_ids) for item in items]
    return _Layout(ids.to(device), mask.to(device), positions.to(device), pads, [width - n for n in n_out], n_out)


def _empty_scores(items: Sequence[_Item]) -> list[np.ndarray]:
    return [np.zeros((len(item.output_ids), len(item.ids)), dtype=np.float64) for item in items]


# --------------------------------------------------------------------------- gradient methods


def _gauss_legendre(n_steps: int) -> tuple[list[float], list[float]]:
    """Captum's default IG rule: Gauss-Legendre nodes and weights rescaled from [-1, 1] to [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return [float(a) for a in 0.5 * (1 + nodes)], [float(w) for w in 0.5 * weights]


def _baseline_ids(loaded: LoadedModel, ids: Any) -> Any:
    """Inseq's IG baseline: UNK everywhere except positions holding EOS, which keep it."""
    import torch

    tokenizer = loaded.tokenizer
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
    eos = getattr(loaded.model.config, "eos_token_id", None)
    if isinstance(eos, list | tuple):
        eos = eos[0]
    if eos is None:
        eos = tokenizer.pad_token_id
    return torch.where(ids.eq(eos), torch.full_like(ids, int(eos)), torch.full_like(ids, int(unk)))


def _cache_kwarg(module: Any) -> str:
    parameters = inspect.signature(module.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class _HeadGradient:
    """The attributed function's gradient w.r.t. the final hidden state, in closed form.

    p = softmax(W h + b); d p_y/dh = p_y (W_y - p^T W); d log p_y/dh = W_y - p^T W.
    """

    def __init__(self, loaded: LoadedModel, logprob: bool) -> None:
        import torch

        head = loaded.model.get_output_embeddings()
        self.weight = head.weight.detach()
        bias = getattr(head, "bias", None)
        self.bias = bias.detach() if bias is not None else None
        # The softmax runs in at least float32. p^T W stays in the weight's dtype (a matmul accumulates
        # in float32 anyway), as autograd through the head would do it, and no wide copy of W is made.
        self.compute_dtype = torch.promote_types(self.weight.dtype, torch.float32)
        self.logprob = logprob

    def __call__(self, hidden: Any, token_ids: Any) -> tuple[Any, Any]:
        """Cotangents [n, d] (hidden's dtype) and p_y [n] (at least float32) for hidden states [n, d], targets [n]."""
        import torch

        cotangents, probabilities = [], []
        for start in range(0, hidden.shape[0], LM_HEAD_ROWS):
            h = hidden[start : start + LM_HEAD_ROWS]
            y = token_ids[start : start + LM_HEAD_ROWS]
            logits = h @ self.weight.T
            if self.bias is not None:
                logits = logits + self.bias
            p = torch.softmax(logits.to(self.compute_dtype), dim=-1)
            p_y = p.gather(-1, y[:, None]).squeeze(-1)
            expected = (p.to(self.weight.dtype) @ self.weight).to(self.compute_dtype)
            direction = self.weight[y].to(self.compute_dtype) - expected
            g = direction if self.logprob else p_y[:, None] * direction
            cotangents.append(g.to(hidden.dtype))
            probabilities.append(p_y)
        return torch.cat(cotangents), torch.cat(probabilities)


def _segment_bounds(layout: _Layout, length: int) -> list[int]:
    """Forward segments over positions [0, width - 1): the first ends `length` logit positions after the
    first target's, the rest are `length` long. The last position is never a source of any target."""
    end = layout.width - 1
    first = min(layout.starts) - 1
    bounds = [0]
    cut = first + length
    while cut < end:
        bounds.append(cut)
        cut += length
    bounds.append(end)
    return bounds


def _segment_length(layout: _Layout, chunk: int) -> int:
    """SEGMENT_POSITIONS or `chunk` positions, or longer where that would make more than MAX_SEGMENTS segments."""
    targets = layout.width - min(layout.starts)
    return max(SEGMENT_POSITIONS, chunk, -(-targets // MAX_SEGMENTS))


@dataclass(frozen=True)
class _MemoryModel:
    """Rough bytes per token of one row (a prompt, or a prompt at one integration step), to size work up front.

    Calibrated on SmolLM2-135M in float32 (measured: ~2.6 MB per token-row of graph); deliberately on the
    safe side. Out-of-memory errors that still happen halve chunk and batch.
    """

    budget_bytes: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    element_bytes: int

    def graph_bytes(self, width: int) -> int:
        """Saved activations of one token-row through the whole model (keys/values once per segment)."""
        per_layer = 12 * self.hidden + 4 * self.intermediate + 2 * (MAX_SEGMENTS + 1) * self.hidden
        return self.layers * self.element_bytes * (per_layer + 2 * self.heads * width)

    def backward_bytes(self, width: int) -> int:
        """Transient gradient memory of one target slot for one token-row (one layer at a time)."""
        return self.element_bytes * (2 * self.intermediate + 4 * self.hidden + 2 * self.heads * width)

    def attention_bytes(self, width: int) -> int:
        """One row's attention weights (every layer and head, kept until averaged) and forward activations."""
        return self.element_bytes * self.layers * width * (self.heads * width + 4 * self.hidden + self.intermediate)

    def rows_that_fit(self, width: int) -> int:
        """Token-rows of `width` whose graph fits in two thirds of the budget."""
        return max(1, (2 * self.budget_bytes // 3) // (width * self.graph_bytes(width)))

    def slots_that_fit(self, rows: int, width: int) -> int:
        """Target slots per backward call that fit in a third of the budget, for `rows` rows of `width`."""
        return max(1, (self.budget_bytes // 3) // (rows * width * self.backward_bytes(width)))


def _memory_model(loaded: LoadedModel) -> _MemoryModel:
    import torch

    config = loaded.model.config
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0) or 1024)
    intermediate = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
    layers, heads = _layer_head_counts(loaded)
    element_bytes = torch.finfo(loaded.model.get_input_embeddings().weight.dtype).bits // 8
    device = torch.device(loaded.device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = CPU_MEMORY_BUDGET_BYTES
        with contextlib.suppress(ValueError, OSError, AttributeError):
            budget = min(budget, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    return _MemoryModel(int(budget), layers, hidden, intermediate, heads, element_bytes)


def _gradient_batch(
    loaded: LoadedModel, items: list[_Item], method: str, options: dict[str, Any], chunk: int, step_group: int
) -> _BatchScores:
    """Saliency, input x gradient or integrated gradients for one left-padded batch.

    `chunk` targets share a backward call; `step_group` integration steps share a forward pass.
    """
    import torch
    from transformers import DynamicCache

    model = loaded.model
    body = model.base_model
    cache_kw = _cache_kwarg(body)
    layout = _layout(loaded, items)
    n_rows = len(items)
    end = layout.width - 1
    head = _HeadGradient(loaded, logprob=options.get("attributed_fn") == "logprob")
    bounds = _segment_bounds(layout, _segment_length(layout, chunk))
    first_target = min(layout.starts) - 1
    integrated = method == "integrated_gradients"
    scores = _empty_scores(items)
    probabilities: list[list[float]] = [[0.0] * n for n in layout.n_out]
    forward_s = backward_s = 0.0

    with torch.no_grad():
        inputs = model.get_input_embeddings()(layout.ids[:, :end]).detach()
    baseline = None
    alphas, step_sizes, groups = [1.0], [1.0], [[0]]
    if integrated:
        alphas, step_sizes = _gauss_legendre(int(options["n_steps"]))
        with torch.no_grad():
            baseline = model.get_input_embeddings()(_baseline_ids(loaded, layout.ids[:, :end])).detach()
        groups = [list(range(i, min(i + step_group, len(alphas)))) for i in range(0, len(alphas), step_group)]
        started = time.perf_counter()
        _fill_probabilities(loaded, layout, inputs, head, probabilities)
        forward_s += time.perf_counter() - started
    # Several integration passes must be summed before the norm: keep the weighted sum per target position.
    accumulated = None
    if len(groups) > 1:
        shape = (end - first_target, n_rows, end, inputs.shape[-1])
        accumulated = torch.zeros(shape, dtype=torch.float32, device=inputs.device)

    for group in groups:
        replicas = len(group)
        rows_input = inputs
        if baseline is not None:
            rows_input = torch.cat([baseline + alphas[a] * (inputs - baseline) for a in group], dim=0)
        mask = layout.mask[:, :end].repeat(replicas, 1)
        positions = layout.positions[:, :end].repeat(replicas, 1)
        weights = torch.tensor([step_sizes[a] for a in group], dtype=torch.float32, device=inputs.device)
        cache = DynamicCache(config=model.config)
        leaves: list[Any] = []
        for seg_start, seg_end in itertools.pairwise(bounds):
            started = time.perf_counter()
            leaf = rows_input[:, seg_start:seg_end].detach().requires_grad_(True)
            leaves.append(leaf)
            hidden = body(
                inputs_embeds=leaf,
                attention_mask=mask[:, :seg_end],
                position_ids=positions[:, seg_start:seg_end],
                use_cache=True,
                **{cache_kw: cache},
            ).last_hidden_state
            forward_s += time.perf_counter() - started

            started = time.perf_counter()
            targets = [q for q in range(seg_start, seg_end) if layout.targets_at(q)]
            for first in range(0, len(targets), chunk):
                slots = targets[first : first + chunk]
                # One gradient per leaf (segment) so far: [slots, replicas * B, segment length, d].
                per_segment = _segment_vjp(
                    layout, head, hidden, leaves, slots, seg_start, replicas, probabilities, not integrated
                )
                if integrated:
                    per_segment = [_integrate(grad, weights, n_rows) for grad in per_segment]
                if accumulated is not None:
                    rows = slice(slots[0] - first_target, slots[-1] + 1 - first_target)
                    for (start, stop), grad in zip(itertools.pairwise(bounds), per_segment, strict=False):
                        accumulated[rows, :, start:stop] += grad
                else:
                    _write_scores(layout, method, per_segment, bounds, slots, inputs, baseline, scores)
                del per_segment
            backward_s += time.perf_counter() - started
        del leaves, cache, hidden

    if accumulated is not None:
        started = time.perf_counter()
        slots = [q for q in range(end) if layout.targets_at(q)]
        weighted = [accumulated[slots[0] - first_target :]]
        _write_scores(layout, method, weighted, [0, end], slots, inputs, baseline, scores)
        backward_s += time.perf_counter() - started
    return _BatchScores(scores, probabilities, forward_s, backward_s)


def _segment_vjp(
    layout: _Layout,
    head: _HeadGradient,
    hidden: Any,
    leaves: list[Any],
    slots: list[int],
    seg_start: int,
    replicas: int,
    probabilities: list[list[float]],
    record_probabilities: bool,
) -> list[Any]:
    """One batched VJP for every target whose logit lies in this segment: per leaf, [K slots, rows, length, d].

    Slot j carries, in each row, the target (if any) read at position slots[j]; rows are
    independent, so one slot serves every prompt of the batch at once.
    """
    import torch

    n_rows = len(layout.n_out)
    slot_index, row_index, offsets, token_ids, owners = [], [], [], [], []
    for j, position in enumerate(slots):
        for row, k, token in layout.targets_at(position):
            for replica in range(replicas):
                slot_index.append(j)
                row_index.append(replica * n_rows + row)
                offsets.append(position - seg_start)
                token_ids.append(token)
                owners.append((row, k, replica))
    device = hidden.device
    rows_t = torch.tensor(row_index, device=device)
    offsets_t = torch.tensor(offsets, device=device)
    with torch.no_grad():
        cotangent_rows, p_y = head(hidden.detach()[rows_t, offsets_t], torch.tensor(token_ids, device=device))
    if record_probabilities:
        for (row, k, _replica), value in zip(owners, p_y.tolist(), strict=True):
            probabilities[row][k] = float(value)
    cotangents = torch.zeros((len(slots), *hidden.shape), dtype=hidden.dtype, device=device)
    cotangents[torch.tensor(slot_index, device=device), rows_t, offsets_t] = cotangent_rows
    # The legacy vmap behind is_grads_batched loops over slots for silu_backward and _softmax_backward_data;
    # torch.vmap over autograd.grad has batching rules for both, but measured no faster here (A/B on SmolLM2,
    # 2 CPU cores: 22.9 s vs 22.3 s for the same batch), so the documented API stays.
    grads = torch.autograd.grad(hidden, leaves, grad_outputs=cotangents, is_grads_batched=True, retain_graph=True)
    return list(grads)


def _integrate(grad: Any, step_sizes: Any, n_rows: int) -> Any:
    """Captum's IG sum: gradients [K, steps * B, ...] weighted by their step sizes and summed -> [K, B, ...]."""
    shaped = grad.float().reshape(grad.shape[0], -1, n_rows, *grad.shape[2:])
    return (shaped * step_sizes.view(1, -1, *([1] * (shaped.dim() - 2)))).sum(dim=1)


def _fill_probabilities(
    loaded: LoadedModel, layout: _Layout, inputs: Any, head: _HeadGradient, probabilities: list[list[float]]
) -> None:
    """p(output token | prefix) on the real input, for methods whose gradient passes never see it (IG)."""
    import torch

    end = layout.width - 1
    with torch.no_grad():
        hidden = loaded.model.base_model(
            inputs_embeds=inputs, attention_mask=layout.mask[:, :end], position_ids=layout.positions[:, :end]
        ).last_hidden_state
        _probabilities_from_hidden(layout, hidden, head.weight, head.bias, probabilities)


def _probabilities_from_hidden(
    layout: _Layout, hidden: Any, weight: Any, bias: Any, probabilities: list[list[float]]
) -> None:
    import torch

    picks = [
        (row, k, position, token)
        for position in range(layout.width - 1)
        for row, k, token in layout.targets_at(position)
    ]
    for start in range(0, len(picks), LM_HEAD_ROWS):
        part = picks[start : start + LM_HEAD_ROWS]
        rows = torch.tensor([p[0] for p in part], device=hidden.device)
        positions = torch.tensor([p[2] for p in part], device=hidden.device)
        tokens = torch.tensor([p[3] for p in part], device=hidden.device)
        logits = hidden[rows, positions] @ weight.T
        if bias is not None:
            logits = logits + bias
        p_y = torch.softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
        for (row, k, _position, _token), value in zip(part, p_y.tolist(), strict=True):
            probabilities[row][k] = float(value)


def _write_scores(
    layout: _Layout,
    method: str,
    per_segment: list[Any],
    bounds: list[int],
    slots: list[int],
    inputs: Any,
    baseline: Any,
    scores: list[np.ndarray],
) -> None:
    """Reduce gradients (per segment, [K, B, length, d]) to Inseq's per-token scores (L2 norm over d)
    and write each target's row."""
    norms = []
    for (start, stop), grad in zip(itertools.pairwise(bounds), per_segment, strict=False):
        if method == "input_x_gradient":
            attribution = grad * inputs[:, start:stop]
        elif method == "integrated_gradients":
            attribution = grad * (inputs[:, start:stop] - baseline[:, start:stop]).float()
        else:
            attribution = grad
        norms.append(attribution.float().norm(dim=-1))
    import torch

    table = torch.cat(norms, dim=-1).cpu().numpy()  # [K, B, positions]
    for j, position in enumerate(slots):
        for row, k, _token in layout.targets_at(position):
            pad = layout.pads[row]
            scores[row][k, : position + 1 - pad] = table[j, row, pad : position + 1]


# --------------------------------------------------------------------------- attention


def _attention_batch(loaded: LoadedModel, items: list[_Item], options: dict[str, Any]) -> _BatchScores:
    import torch

    model = loaded.model
    n_layers, n_heads = _layer_head_counts(loaded)
    layers = _resolve_indices("layers", options.get("layers"), n_layers)
    heads = _resolve_indices("heads", options.get("heads"), n_heads)
    layout = _layout(loaded, items)
    end = layout.width - 1
    scores = _empty_scores(items)
    probabilities: list[list[float]] = [[0.0] * n for n in layout.n_out]
    started = time.perf_counter()
    # Attention weights exist only under eager attention.
    with torch.no_grad(), attention_implementation(model, "eager"):
        output = model.base_model(
            input_ids=layout.ids[:, :end],
            attention_mask=layout.mask[:, :end],
            position_ids=layout.positions[:, :end],
            output_attentions=True,
        )
        if not output.attentions:
            raise MethodOptionError(f"model {loaded.model_id} returned no attention weights; use --engine inseq")
        head_index = torch.tensor(heads, device=layout.ids.device)
        # Inseq averages over layers, then heads; with equal counts that is one mean over both.
        weights = torch.stack([output.attentions[layer].index_select(1, head_index) for layer in layers], dim=1)
        mean = weights.float().mean(dim=(1, 2)).cpu().numpy()  # [B, query, key]
        head = model.get_output_embeddings()
        bias = getattr(head, "bias", None)
        _probabilities_from_hidden(layout, output.last_hidden_state, head.weight, bias, probabilities)
    forward_s = time.perf_counter() - started
    for position in range(end):
        for row, k, _token in layout.targets_at(position):
            pad = layout.pads[row]
            scores[row][k, : position + 1 - pad] = mean[row, position, pad : position + 1]
    return _BatchScores(scores, probabilities, forward_s, 0.0)


# --------------------------------------------------------------------------- helpers


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
