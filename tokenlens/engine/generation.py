"""Greedy generation for a batch of prompts: left-padded, with the KV cache, stopping at EOS.

This is the generation phase of the native engine. It produces what Hugging
Face's `model.generate(do_sample=False)` (and so Inseq) produces for each
prompt on its own: the new token ids, the EOS token included when the model
emits one. Plain greedy decoding runs in our own KV-cache loop (no logits
processors to pay for); anything else (sampling, beams, penalties, or a model
whose generation config asks for them) is handed to `model.generate`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from tokenlens.engine.attention import attention_implementation, memory_efficient_attention
from tokenlens.engine.types import PromptInput
from tokenlens.models import LoadedModel, input_device

#: generation_params keys our own greedy loop honours; anything else goes to `model.generate`.
GREEDY_LOOP_PARAMS = frozenset(
    {"max_new_tokens", "do_sample", "num_beams", "use_cache", "eos_token_id", "pad_token_id"}
)

#: On a GPU, decoding steps between two checks that every row has finished (steps_between_finish_checks).
GPU_FINISH_CHECK_STEPS = 8

#: Generation-config fields that change greedy decoding when set (`model.generate` applies them).
_PROCESSOR_FIELDS = (
    "repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "min_length",
    "min_new_tokens",
    "sequence_bias",
    "encoder_repetition_penalty",
    "renormalize_logits",
)
_NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "renormalize_logits": (None, False),
}


def eos_token_ids(loaded: LoadedModel) -> set[int]:
    """The token ids that end a generation, as `model.generate` reads them."""
    for source in (getattr(loaded.model, "generation_config", None), loaded.model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is not None:
            return {int(v) for v in value} if isinstance(value, list | tuple) else {int(value)}
    eos = loaded.tokenizer.eos_token_id
    return {int(eos)} if eos is not None else set()


def pad_token_id(loaded: LoadedModel) -> int:
    """The id used to left-pad a batch (its positions are masked, so any valid id works)."""
    for value in (loaded.tokenizer.pad_token_id, loaded.tokenizer.eos_token_id, loaded.model.config.pad_token_id):
        if value is not None:
            return int(value)
    return 0


def needs_hf_generate(loaded: LoadedModel, generation_params: dict[str, Any]) -> bool:
    """True when plain greedy decoding would not reproduce what `model.generate` does."""
    if set(generation_params) - GREEDY_LOOP_PARAMS:
        return True
    if generation_params.get("do_sample") or int(generation_params.get("num_beams") or 1) > 1:
        return True
    config = getattr(loaded.model, "generation_config", None)
    if config is None:
        return False
    for name in _PROCESSOR_FIELDS:
        value = getattr(config, name, None)
        if value not in _NEUTRAL_VALUES.get(name, (None,)) and value != []:
            return True
    return False


def generate_greedy(
    loaded: LoadedModel,
    prompts: Sequence[PromptInput],
    generation_params: dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Generate each prompt's continuation (up to its `max_new_tokens`, EOS included) in left-padded batches.

    `batch_size` (default: all prompts at once) bounds how many prompts share a
    forward pass. Prompts are batched in length order to keep padding small; the
    result is in the order given.
    """
    import torch

    params = dict(generation_params or {})
    if not prompts:
        return []
    size = max(1, batch_size or len(prompts))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
    results: list[list[int]] = [[] for _ in prompts]
    use_hf = needs_hf_generate(loaded, params)
    # Decoding needs attention's output only: SDPA gives it about 10% faster on CPU (same tokens up to float
    # rounding) than the eager attention models load with (engine/attention.py).
    fast = memory_efficient_attention(loaded.model)
    with torch.inference_mode(), attention_implementation(loaded.model, fast):
        for start in range(0, len(order), size):
            indices = order[start : start + size]
            batch = [prompts[i] for i in indices]
            outputs = _generate_hf(loaded, batch, params) if use_hf else _generate_loop(loaded, batch, params)
            for index, output in zip(indices, outputs, strict=True):
                results[index] = output
    return results


def _left_pad(loaded: LoadedModel, sequences: Sequence[Sequence[int]]) -> tuple[Any, Any]:
    import torch

    width = max(len(seq) for seq in sequences)
    pad = pad_token_id(loaded)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    device = input_device(loaded.model)
    return ids.to(device), mask.to(device)


def _trim(new_tokens: list[int], limit: int, eos: set[int]) -> list[int]:
    """Cut a continuation at its own limit and just after its first EOS."""
    out: list[int] = []
    for token in new_tokens[:limit]:
        out.append(token)
        if token in eos:
            break
    return out


def _cache_kwarg(model: Any) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; pass whichever this model's forward takes."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _generate_loop(loaded: LoadedModel, batch: Sequence[PromptInput], params: dict[str, Any]) -> list[list[int]]:
    """Greedy decoding with the KV cache; each row stops at EOS or at its own max_new_tokens."""
    import torch
    from transformers import DynamicCache

    model = loaded.model
    eos = set(eos_token_ids(loaded))
    if params.get("eos_token_id") is not None:
        value = params["eos_token_id"]
        eos = {int(v) for v in value} if isinstance(value, list | tuple) else {int(value)}
    limits = [max(0, int(prompt.max_new_tokens)) for prompt in batch]
    steps = max(limits)
    if steps == 0:
        return [[] for _ in batch]
    ids, mask = _left_pad(loaded, [prompt.input_ids for prompt in batch])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    forward_kwargs: dict[str, Any] = {_cache_kwarg(model): cache, "use_cache": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        forward_kwargs["logits_to_keep"] = 1
    new_tokens: list[Any] = []  # per step, the batch's tokens [B], on the device until the loop ends
    finished = torch.zeros(len(batch), dtype=torch.bool, device=ids.device)
    limit_tensor = torch.tensor(limits, device=ids.device)
    eos_tensor = torch.tensor(sorted(eos), device=ids.device) if eos else None
    pad = pad_token_id(loaded)
    check_every = steps_between_finish_checks(ids.device)
    step_input, step_positions = ids, positions
    for step in range(steps):
        logits = model(input_ids=step_input, attention_mask=mask, position_ids=step_positions, **forward_kwargs).logits
        next_tokens = logits[:, -1, :].argmax(dim=-1)
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad), next_tokens)
        new_tokens.append(next_tokens)
        if eos_tensor is not None:
            finished |= torch.isin(next_tokens, eos_tensor)
        finished |= limit_tensor <= step + 1
        if (step + 1) % check_every == 0 and bool(finished.all()):  # the loop's one wait for the device
            break
        step_input = next_tokens.unsqueeze(-1)
        step_positions = step_positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    # A finished row was fed (and recorded) padding since; _trim cuts it at its EOS or its own limit.
    generated = torch.stack(new_tokens, dim=1).tolist()
    return [_trim(tokens, limit, eos) for tokens, limit in zip(generated, limits, strict=True)]


def steps_between_finish_checks(device: Any) -> int:
    """Decoding steps between two checks that every row has finished. Each check waits for the device, which
    on a GPU stalls the queue of the next step's kernels; on a CPU it costs nothing and a step past the end
    costs a whole forward pass."""
    return 1 if device.type == "cpu" else GPU_FINISH_CHECK_STEPS


def _generate_hf(loaded: LoadedModel, batch: Sequence[PromptInput], params: dict[str, Any]) -> list[list[int]]:
    """`model.generate` with everything the caller asked for, on a left-padded batch."""
    limits = [max(0, int(prompt.max_new_tokens)) for prompt in batch]
    if max(limits) == 0:
        return [[] for _ in batch]
    ids, mask = _left_pad(loaded, [prompt.input_ids for prompt in batch])
    kwargs = {"do_sample": False, **params, "max_new_tokens": max(limits)}
    kwargs.setdefault("pad_token_id", pad_token_id(loaded))
    sequences = loaded.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    new_tokens = sequences[:, ids.shape[1] :].tolist()
    eos = eos_token_ids(loaded)
    return [_trim(tokens, limit, eos) for tokens, limit in zip(new_tokens, limits, strict=True)]
