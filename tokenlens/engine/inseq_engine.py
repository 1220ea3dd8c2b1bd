"""Run any Inseq method and convert its output to TokenLens layout.

Inseq attributes one generated token at a time; its step-wise scores are
reduced to one score per source token with Inseq's own default aggregators
(L2 norm over the embedding for gradient methods, mean over layers and heads
for attention) but *without* the L1 normalisation `aggregate()` applies by
default (`normalize=False`), so `association_matrix` holds the same raw scores
the native engine stores, one to one. They are laid out as TokenLens rows (one
per output token; NaN where a source is not visible becomes 0). Inseq's native
output is kept as JSON so it can be stored beside the TokenLens file and
loaded back; converting it gives the same matrix.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from tokenlens.engine.attention import current_attention
from tokenlens.engine.types import AttributionOutput, PromptFailure, PromptInput
from tokenlens.errors import MethodOptionError
from tokenlens.models import LoadedModel

#: Generation options besides max_new_tokens (allow-listed by `tokenlens.batch`), or None for greedy defaults.
Generation = dict[str, Any] | None

#: Our option names that Inseq takes as attribution keyword arguments, per method family.
_PASSTHROUGH_OPTIONS = ("n_steps",)
#: Our attributed functions by Inseq 0.7.1's step-function names ("probability" is Inseq's default; "logprob"
#: is its probability function with logprob=True).
_INSEQ_STEP_FUNCTIONS = {"logit": "logit", "contrast_prob": "contrast_prob", "contrast_logit": "contrast_logits"}


@contextlib.contextmanager
def distinct_pad_token(loaded: LoadedModel) -> Iterator[None]:
    """Let Inseq see every token.

    Inseq 0.7.1 drops every token equal to its pad token from its output token lists and truncates
    the matrix to match. Many chat models (SmolLM2 among them) pad with their EOS token, which their
    chat template uses inside the prompt, so Inseq's output would lose and misalign those tokens.
    While Inseq runs, the pad token points at UNK instead; that changes nothing Inseq computes, and
    everything is put back afterwards.
    """
    tokenizer, config = loaded.tokenizer, loaded.model.config
    harmful = tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id
    usable = tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id
    if not (harmful and usable):
        yield
        return
    saved = (tokenizer.pad_token, tokenizer.padding_side, tokenizer.truncation_side, config.pad_token_id)
    tokenizer.pad_token = tokenizer.unk_token
    config.pad_token_id = None
    try:
        yield
    finally:
        tokenizer.pad_token, tokenizer.padding_side, tokenizer.truncation_side, config.pad_token_id = saved


def _inseq_model(loaded: LoadedModel, method: str) -> Any:
    """Inseq's wrapper around the already-loaded model, one per method, kept on the LoadedModel.

    Call it inside `distinct_pad_token`: the wrapper reads the pad token when it is made.
    """
    import inseq

    cache: dict[str, Any] = loaded.info.setdefault("inseq_models", {})
    if method not in cache:
        cache[method] = inseq.load_model(loaded.model, method, tokenizer=loaded.tokenizer)
    return cache[method]


def _attribute_kwargs(method: str, options: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {name: options[name] for name in _PASSTHROUGH_OPTIONS if options.get(name) is not None}
    if options.get("attributed_fn") == "logprob":
        # Inseq's probability step function takes logprob=True for log p.
        kwargs["logprob"] = True
    step_function = _INSEQ_STEP_FUNCTIONS.get(str(options.get("attributed_fn")))
    if step_function is not None:
        kwargs["attributed_fn"] = step_function
    # Inseq 0.7.1's attention returns every layer and head; `layers`/`heads` are
    # applied when converting (select_layers_and_heads), not passed to Inseq.
    return kwargs


@contextlib.contextmanager
def nltk_data_already_installed(method: str) -> Iterator[None]:
    """Keep ReAGent from reaching for the network.

    Inseq's ReAGent calls `nltk.download(...)` every time it builds its POS-tag sampler, and NLTK asks its online
    index even when the data is installed: on an offline worker that is an error or a long wait. The registry only
    lets `reagent` run where the tagger data is already installed (`registry.refusal_reason`), so while it runs
    that call is answered locally; a missing resource still fails loudly in `nltk.pos_tag`.
    """
    if method != "reagent":
        yield
        return
    import nltk

    def installed_only(*_args: Any, **_kwargs: Any) -> bool:
        return True

    saved = nltk.download
    nltk.download = installed_only
    try:
        yield
    finally:
        nltk.download = saved


def _contrast_kwargs(loaded: LoadedModel, prompt: PromptInput, options: dict[str, Any]) -> dict[str, Any]:
    """Inseq's contrastive step functions take the whole contrast sequence (prompt + contrast continuation)."""
    if not str(options.get("attributed_fn")).startswith("contrast_") or prompt.contrast_ids is None:
        return {}
    return {"contrast_targets": prompt.model_text + loaded.tokenizer.decode(prompt.contrast_ids)}


def attribute_inseq(
    loaded: LoadedModel, prompts: list[PromptInput], method: str, options: dict[str, Any], generation: Generation = None
) -> list[AttributionOutput | PromptFailure]:
    """Attribute each prompt with Inseq's `method`; a failing prompt doesn't stop the others."""
    with distinct_pad_token(loaded), nltk_data_already_installed(method):
        return _attribute_each(loaded, prompts, method, options, generation)


def _attribute_each(
    loaded: LoadedModel,
    prompts: list[PromptInput],
    method: str,
    options: dict[str, Any],
    generation_params: dict[str, Any] | None,
) -> list[AttributionOutput | PromptFailure]:
    model = _inseq_model(loaded, method)
    outputs: list[AttributionOutput | PromptFailure] = []
    for prompt in prompts:
        started = time.perf_counter()
        generation_args = {"do_sample": False, **(generation_params or {}), "max_new_tokens": prompt.max_new_tokens}
        generated_texts = None
        if prompt.target_ids is not None:
            # Decoder-only models take the full text (prompt + forced continuation) as the target.
            target_text = loaded.tokenizer.decode(prompt.target_ids)
            generated_texts = prompt.model_text + target_text
        try:
            # Inseq prints rich progress panels; a batch job's log is no place for them.
            with contextlib.redirect_stdout(io.StringIO()):
                result = model.attribute(
                    prompt.model_text,
                    generated_texts=generated_texts,
                    show_progress=False,
                    generation_args=generation_args if generated_texts is None else {},
                    **_attribute_kwargs(method, options),
                    **_contrast_kwargs(loaded, prompt, options),
                )
        except Exception as exc:  # one prompt's failure is reported, the batch goes on
            outputs.append(PromptFailure(prompt.prompt_id, type(exc).__name__, str(exc)))
            continue
        elapsed = time.perf_counter() - started
        try:
            converted = inseq_output_to_attribution(result, prompt.prompt_id, options)
        except MethodOptionError as exc:  # the same options would fail again: no retry
            outputs.append(PromptFailure(prompt.prompt_id, type(exc).__name__, str(exc), permanent=True))
            continue
        if any(token < 0 for token in converted.output_ids):
            # Inseq shows a contrasted step as one "contrast → target" token with id -1.
            if prompt.target_ids is None or len(prompt.target_ids) != len(converted.output_ids):
                message = "Inseq's contrastive attribution hides the generated tokens; give this prompt a `target`"
                outputs.append(PromptFailure(prompt.prompt_id, "ContrastTargetError", message, permanent=True))
                continue
            converted.output_ids = list(prompt.target_ids)
        converted.token_probabilities = output_token_probabilities(loaded, converted.input_ids, converted.output_ids)
        converted.timings_s = {"attribution": elapsed, "total": time.perf_counter() - started}
        converted.attention_implementation = current_attention(loaded.model)  # eager: Inseq needs the weights
        converted.inseq_native_json = native_json(result)
        outputs.append(converted)
    return outputs


def output_token_probabilities(loaded: LoadedModel, input_ids: list[int], output_ids: list[int]) -> list[float]:
    """p(output token i | all tokens before it), from one teacher-forced forward pass.

    Inseq's `probability` step score can't be asked of final-step methods
    (attention) and follows `logprob=True`, so we compute it ourselves.
    """
    import torch

    if not output_ids:
        return []
    ids = torch.tensor([input_ids + output_ids], device=loaded.model.device)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[0].float()
    n_in = len(input_ids)
    steps = logits[n_in - 1 : n_in - 1 + len(output_ids)].softmax(dim=-1)
    picked = steps.gather(-1, torch.tensor(output_ids, device=steps.device).unsqueeze(-1)).squeeze(-1)
    return [float(p) for p in picked.cpu()]


def native_json(result: Any) -> str:
    """Inseq's own `FeatureAttributionOutput.save` file, as text."""
    handle, path = tempfile.mkstemp(suffix=".json", prefix="inseq-")
    os.close(handle)
    try:
        result.save(path, overwrite=True)
        with open(path, encoding="utf-8") as file:
            return file.read()
    finally:
        os.unlink(path)


def _aggregate_to_matrix(tensor: Any) -> np.ndarray:
    """Reduce an aggregated attribution tensor to 2-D [sources, steps] (vector norm over extra dims)."""
    array = tensor.detach().to("cpu").float().numpy() if hasattr(tensor, "detach") else np.asarray(tensor, float)
    while array.ndim > 2:
        array = np.sqrt(np.nansum(array**2, axis=-1))
    return array


def select_layers_and_heads(raw: Any, layers: list[int] | None, heads: list[int] | None) -> Any:
    """Keep the chosen layers and heads of an attention tensor [sources, steps, layers, heads]."""
    n_layers, n_heads = raw.shape[2], raw.shape[3]
    for name, chosen, available in (("layer", layers, n_layers), ("head", heads, n_heads)):
        bad = [index for index in chosen or [] if not -available <= index < available]
        if bad:
            raise MethodOptionError(
                f"{name}(s) {bad} out of range: the model has {available} {name}s (0-{available - 1})"
            )
    if layers:
        raw = raw[:, :, list(layers)]
    if heads:
        raw = raw[:, :, :, list(heads)]
    return raw


def inseq_output_to_attribution(result: Any, prompt_id: str, options: dict[str, Any]) -> AttributionOutput:
    """Convert the first sequence of an Inseq `FeatureAttributionOutput` to an `AttributionOutput`."""
    sequence = result.sequence_attributions[0]
    input_ids = [int(token.id) for token in sequence.source]
    full_ids = [int(token.id) for token in sequence.target]
    start = int(sequence.attr_pos_start)
    output_ids = full_ids[start:]
    raw = sequence.target_attributions if sequence.target_attributions is not None else sequence.source_attributions
    if type(sequence).__name__.startswith("MultiDimensional") and not sequence._aggregator and raw is not None:
        # Inseq's save/load drops the dimension count and aggregators of multi-dimensional
        # outputs (attention: layers x heads); restore its default, a mean over each.
        sequence._num_dimensions = raw.ndim - 2
        sequence._aggregator = ["mean"] * sequence._num_dimensions
    if raw is not None and raw.ndim == 4 and (options.get("layers") or options.get("heads")):
        sequence.target_attributions = select_layers_and_heads(raw, options.get("layers"), options.get("heads"))
    # Inseq's default aggregators, minus its default L1 normalisation of each step: raw scores, as the native engine's.
    aggregated = sequence.aggregate(normalize=False)
    tensor = aggregated.target_attributions
    if tensor is None:
        tensor = aggregated.source_attributions
    matrix = _aggregate_to_matrix(tensor)  # [n_sources, n_out]
    n_in, n_out = len(input_ids), len(output_ids)
    scores = np.zeros((n_out, n_in + n_out), dtype=np.float64)
    n_sources = min(matrix.shape[0], n_in + n_out)
    for i in range(min(n_out, matrix.shape[1])):
        visible = min(n_in + i, n_sources)
        scores[i, :visible] = matrix[:visible, i]
    scores = np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
    return AttributionOutput(
        prompt_id=prompt_id,
        input_ids=input_ids,
        output_ids=output_ids,
        scores=scores,
        token_probabilities=[],
        engine="inseq",
        method_params=dict(options),
    )
