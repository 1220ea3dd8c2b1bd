"""The native engine on tiny random models: shapes, exact zeros, probabilities, batching, chunking, forced
targets, out-of-memory retries, context-length failures, and its gradients against a plain per-prefix loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tokenlens.engine import gradient_pass, native
from tokenlens.engine.generation import generate_greedy
from tokenlens.engine.layout import MAX_SEGMENTS, Item, build_layout
from tokenlens.engine.methods import NATIVE_METHODS, GradientMethod
from tokenlens.engine.native import attribute_native
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptFailure, PromptInput
from tokenlens.errors import MethodOptionError
from tokenlens.models import LoadedModel, load_model

METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "attention")
TEXTS = (
    "The quick brown fox jumps over the lazy dog",
    "Hello there",
    "A much longer prompt, so that the batch needs real left padding to line up",
)


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), device="cpu")


def make_prompt(
    loaded: LoadedModel,
    text: str,
    max_new_tokens: int = 5,
    target: list[int] | None = None,
    prompt_id: str | None = None,
) -> PromptInput:
    ids = loaded.tokenizer(text).input_ids
    return PromptInput(
        prompt_id or f"p{abs(hash(text)) % 10_000}",
        text,
        ids,
        [False] * len(ids),
        max_new_tokens,
        target_ids=target,
        model_text=text,
    )


def options(method: str, **given: Any) -> dict[str, Any]:
    if method == "integrated_gradients":
        given.setdefault("n_steps", 4)
    return validate_options(method, given)


def ok(result: AttributionOutput | PromptFailure) -> AttributionOutput:
    assert isinstance(result, AttributionOutput), result
    return result


# --------------------------------------------------------------------------- an independent reference


def reference_rows(
    loaded: LoadedModel,
    input_ids: list[int],
    output_ids: list[int],
    method: str,
    n_steps: int = 4,
    logprob: bool = False,
) -> np.ndarray:
    """What Inseq computes, step by step: a fresh forward + backward over each target's prefix."""
    model = loaded.model
    embed = model.get_input_embeddings()
    full = list(input_ids) + list(output_ids)
    n_in, n_out = len(input_ids), len(output_ids)
    rows = np.zeros((n_out, n_in + n_out))
    for k in range(n_out):
        prefix = torch.tensor([full[: n_in + k]])
        target = full[n_in + k]
        x = embed(prefix).detach()
        if method == "attention":
            with torch.no_grad():
                attentions = model(input_ids=prefix, output_attentions=True).attentions
            rows[k, : n_in + k] = torch.stack(attentions).mean(dim=(0, 2))[0, -1].numpy()
            continue
        if method == "integrated_gradients":
            from captum.attr._utils.approximation_methods import approximation_parameters

            step_fn, alpha_fn = approximation_parameters("gausslegendre")
            unk = loaded.tokenizer.unk_token_id
            base_ids = torch.where(prefix.eq(model.config.eos_token_id), prefix, torch.full_like(prefix, unk))
            base = embed(base_ids).detach()
            total = torch.zeros_like(x)
            for alpha, step in zip(alpha_fn(n_steps), step_fn(n_steps), strict=True):
                point = (base + alpha * (x - base)).requires_grad_(True)
                p = model(inputs_embeds=point).logits[0, -1].softmax(-1)[target]
                total += step * torch.autograd.grad(p, point)[0]
            attribution = total * (x - base)
        else:
            point = x.clone().requires_grad_(True)
            probs = model(inputs_embeds=point).logits[0, -1].softmax(-1)
            score = probs[target].log() if logprob else probs[target]
            grad = torch.autograd.grad(score, point)[0]
            attribution = grad * x if method == "input_x_gradient" else grad
        rows[k, : n_in + k] = attribution[0].norm(dim=-1).detach().numpy()
    return rows


def assert_close_relative(actual: np.ndarray, expected: np.ndarray, tolerance: float = 1e-4) -> None:
    """Max abs difference at most `tolerance` x the largest value (tiny random models have tiny scores)."""
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert scale > 0
    assert float(np.abs(actual - expected).max()) <= tolerance * scale


# --------------------------------------------------------------------------- shapes and contract


@pytest.mark.parametrize("method", METHODS)
def test_shapes_zero_triangle_and_probabilities(tiny_llama: LoadedModel, method: str) -> None:
    prompt = make_prompt(tiny_llama, TEXTS[0], max_new_tokens=6)
    result = ok(attribute_native(tiny_llama, [prompt], method, options(method))[0])
    n_in, n_out = len(result.input_ids), len(result.output_ids)
    assert result.input_ids == prompt.input_ids
    assert 1 <= n_out <= 6
    assert result.scores.shape == (n_out, n_in + n_out)
    assert np.isfinite(result.scores).all()
    for i in range(n_out):
        assert (result.scores[i, n_in + i :] == 0).all()
        assert (result.scores[i, : n_in + i] != 0).any()
    assert result.engine == "native"
    assert set(result.timings_s) >= {"generation", "forward", "total"}
    assert len(result.token_probabilities) == n_out
    # p(output token | prefix), checked against one plain forward pass over the whole sequence.
    with torch.no_grad():
        logits = tiny_llama.model(input_ids=torch.tensor([result.input_ids + result.output_ids])).logits[0]
    expected = [float(logits[n_in + i - 1].softmax(-1)[token]) for i, token in enumerate(result.output_ids)]
    np.testing.assert_allclose(result.token_probabilities, expected, rtol=1e-4)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients", "attention"])
def test_matches_a_plain_per_prefix_loop(tiny_llama: LoadedModel, method: str) -> None:
    prompt = make_prompt(tiny_llama, TEXTS[0], target=tiny_llama.tokenizer(" and then it ran away").input_ids)
    opts = options(method, attributed_fn="probability") if method != "attention" else options(method)
    result = ok(attribute_native(tiny_llama, [prompt], method, opts)[0])
    expected = reference_rows(tiny_llama, prompt.input_ids, prompt.target_ids or [], method)
    assert_close_relative(result.scores, expected)


def test_saliency_logprob_is_probability_over_p(tiny_gpt2: LoadedModel) -> None:
    prompt = make_prompt(tiny_gpt2, TEXTS[0], max_new_tokens=5)
    by_p = ok(attribute_native(tiny_gpt2, [prompt], "saliency", options("saliency", attributed_fn="probability"))[0])
    by_log = ok(attribute_native(tiny_gpt2, [prompt], "saliency", options("saliency"))[0])
    assert by_log.method_params["attributed_fn"] == "logprob"
    assert by_log.output_ids == by_p.output_ids
    probabilities = np.array(by_p.token_probabilities)[:, None]
    assert_close_relative(by_log.scores, by_p.scores / probabilities)
    expected = reference_rows(tiny_gpt2, prompt.input_ids, by_p.output_ids, "saliency", logprob=True)
    assert_close_relative(by_log.scores, expected)


def test_missing_options_get_the_registry_defaults(tiny_gpt2: LoadedModel) -> None:
    result = ok(attribute_native(tiny_gpt2, [make_prompt(tiny_gpt2, TEXTS[1])], "saliency", {})[0])
    assert result.method_params == {"attributed_fn": "logprob", "target_chunk": 16}


def test_attention_layer_and_head_selection(tiny_llama: LoadedModel) -> None:
    prompt = make_prompt(tiny_llama, TEXTS[1], max_new_tokens=4)
    result = ok(attribute_native(tiny_llama, [prompt], "attention", options("attention", layers=[1], heads=[0, 3]))[0])
    ids = torch.tensor([result.input_ids + result.output_ids])
    with torch.no_grad():
        attentions = tiny_llama.model(input_ids=ids, output_attentions=True).attentions
    chosen = attentions[1][0, [0, 3]].mean(dim=0).numpy()  # [query, key]
    n_in = len(result.input_ids)
    for i in range(len(result.output_ids)):
        query = n_in + i - 1
        np.testing.assert_allclose(result.scores[i, : n_in + i], chosen[query, : query + 1], atol=1e-6)
    with pytest.raises(MethodOptionError, match="layers"):
        attribute_native(tiny_llama, [prompt], "attention", options("attention", layers=[7]))


# --------------------------------------------------------------------------- batching, chunking, forced targets


@pytest.mark.parametrize("method", METHODS)
def test_batching_equals_one_by_one(tiny_llama: LoadedModel, method: str) -> None:
    prompts = [make_prompt(tiny_llama, text, max_new_tokens=4 + i, prompt_id=f"b{i}") for i, text in enumerate(TEXTS)]
    together = attribute_native(tiny_llama, prompts, method, options(method), batch_size=len(prompts))
    alone = [attribute_native(tiny_llama, [prompt], method, options(method))[0] for prompt in prompts]
    for joint, single, prompt in zip(together, alone, prompts, strict=True):
        joint, single = ok(joint), ok(single)
        assert joint.prompt_id == prompt.prompt_id
        assert joint.output_ids == single.output_ids
        assert_close_relative(joint.scores, single.scores, 1e-4)
        np.testing.assert_allclose(joint.token_probabilities, single.token_probabilities, rtol=1e-4)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_chunking_equals_no_chunking(tiny_gpt2: LoadedModel, method: str) -> None:
    prompts = [make_prompt(tiny_gpt2, text, max_new_tokens=7, prompt_id=f"c{i}") for i, text in enumerate(TEXTS)]
    whole = attribute_native(tiny_gpt2, prompts, method, options(method, target_chunk=64))
    chunked = attribute_native(tiny_gpt2, prompts, method, options(method, target_chunk=1))
    for a, b in zip(whole, chunked, strict=True):
        a, b = ok(a), ok(b)
        assert b.method_params["target_chunk"] == 1
        assert_close_relative(b.scores, a.scores, 1e-5)


def test_long_continuations_split_segments_into_several_backward_calls(tiny_llama: LoadedModel) -> None:
    target = tiny_llama.tokenizer(" ".join(["and then the fox ran far away"] * 12)).input_ids
    assert len(target) > 8 * MAX_SEGMENTS  # so segments are longer than a chunk of 3
    prompt = make_prompt(tiny_llama, TEXTS[1], target=target)
    layout = build_layout(tiny_llama, [Item(0, prompt, target)])
    assert len(layout.segment_bounds(layout.segment_length(3))) - 1 <= MAX_SEGMENTS + 1
    whole = ok(attribute_native(tiny_llama, [prompt], "saliency", options("saliency", target_chunk=64))[0])
    pieces = ok(attribute_native(tiny_llama, [prompt], "saliency", options("saliency", target_chunk=3))[0])
    assert pieces.method_params["target_chunk"] == 3
    assert_close_relative(pieces.scores, whole.scores, 1e-5)


def test_integration_steps_split_across_passes_equal_one_pass(tiny_gpt2: LoadedModel) -> None:
    prompt = make_prompt(tiny_gpt2, TEXTS[0], max_new_tokens=4)
    opts = options("integrated_gradients", n_steps=6)
    one_pass = ok(attribute_native(tiny_gpt2, [prompt], "integrated_gradients", opts)[0])
    method = NATIVE_METHODS["integrated_gradients"]
    assert isinstance(method, GradientMethod)
    layout_items = [Item(0, prompt, one_pass.output_ids)]
    split = gradient_pass.gradient_batch(tiny_gpt2, layout_items, method, opts, chunk=2, step_group=4)
    assert_close_relative(split.scores[0], one_pass.scores, 1e-5)


def test_forced_target_is_attributed_as_given(tiny_llama: LoadedModel) -> None:
    target = tiny_llama.tokenizer(" over the hills and far away").input_ids
    prompt = make_prompt(tiny_llama, TEXTS[1], max_new_tokens=2, target=target)
    result = ok(attribute_native(tiny_llama, [prompt], "input_x_gradient", options("input_x_gradient"))[0])
    assert result.output_ids == target
    assert result.scores.shape == (len(target), len(prompt.input_ids) + len(target))
    assert result.timings_s["generation"] == 0.0


# --------------------------------------------------------------------------- failures and retries


def test_context_overflow_fails_that_prompt_only(tiny_llama: LoadedModel) -> None:
    context = tiny_llama.context_length
    assert context is not None
    too_long = PromptInput("long", "x", [42] * (context - 3), [False] * (context - 3), 10)
    fine = make_prompt(tiny_llama, TEXTS[1], max_new_tokens=3, prompt_id="fine")
    results = attribute_native(tiny_llama, [too_long, fine], "saliency", options("saliency"))
    failure = results[0]
    assert isinstance(failure, PromptFailure)
    assert failure.prompt_id == "long" and failure.permanent
    assert failure.error_type == "PromptTooLongError"
    assert str(context) in failure.message
    assert ok(results[1]).prompt_id == "fine"


def test_out_of_memory_halves_chunk_then_batch(tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = [make_prompt(tiny_llama, text, max_new_tokens=5, prompt_id=f"m{i}") for i, text in enumerate(TEXTS)]
    expected = attribute_native(tiny_llama, prompts, "saliency", options("saliency", target_chunk=8), batch_size=3)
    real = native._attribute_batch
    calls: list[tuple[int, int]] = []

    def short_of_memory(
        loaded: LoadedModel, items: list[Any], method: Any, opts: dict[str, Any], chunk: int, step_group: int
    ) -> Any:
        calls.append((len(items), chunk))
        if chunk > 1 or len(items) > 1:  # only one prompt, one target at a time fits
            raise MemoryError("simulated")
        return real(loaded, items, method, opts, chunk, step_group)

    monkeypatch.setattr(native, "_attribute_batch", short_of_memory)
    results = attribute_native(tiny_llama, prompts, "saliency", options("saliency", target_chunk=8), batch_size=3)
    assert calls[:4] == [(3, 8), (3, 4), (3, 2), (3, 1)]
    assert {size for size, _ in calls[4:]} <= {1, 2}
    for got, want in zip(results, expected, strict=True):
        got, want = ok(got), ok(want)
        assert got.method_params["target_chunk"] == 1
        assert got.output_ids == want.output_ids
        assert_close_relative(got.scores, want.scores, 1e-5)


def test_out_of_memory_once_retries_with_half_the_chunk(
    tiny_gpt2: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = make_prompt(tiny_gpt2, TEXTS[0], max_new_tokens=4)
    real = native._attribute_batch
    raised: list[int] = []

    def fails_once(*args: Any) -> Any:
        if not raised:
            raised.append(args[4])
            raise MemoryError("simulated")
        return real(*args)

    monkeypatch.setattr(native, "_attribute_batch", fails_once)
    result = ok(attribute_native(tiny_gpt2, [prompt], "saliency", options("saliency", target_chunk=16))[0])
    assert raised == [16]
    assert result.method_params["target_chunk"] == 8


def test_out_of_memory_for_a_single_target_is_a_retryable_failure(
    tiny_gpt2: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never_fits(*args: Any) -> Any:
        raise MemoryError("simulated")

    monkeypatch.setattr(native, "_attribute_batch", never_fits)
    result = attribute_native(tiny_gpt2, [make_prompt(tiny_gpt2, TEXTS[1])], "saliency", options("saliency"))[0]
    assert isinstance(result, PromptFailure)
    assert result.error_type == "OutOfMemoryError" and not result.permanent


def test_other_errors_are_not_swallowed(tiny_gpt2: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise ValueError("a real bug")

    monkeypatch.setattr(native, "_attribute_batch", broken)
    with pytest.raises(ValueError, match="a real bug"):
        attribute_native(tiny_gpt2, [make_prompt(tiny_gpt2, TEXTS[1])], "saliency", options("saliency"))


def test_unknown_method_names_the_native_ones(tiny_gpt2: LoadedModel) -> None:
    with pytest.raises(MethodOptionError, match="integrated_gradients"):
        attribute_native(tiny_gpt2, [make_prompt(tiny_gpt2, TEXTS[1])], "occlusion", {})


def test_parameters_are_frozen_only_while_attributing(tiny_gpt2: LoadedModel) -> None:
    parameters = list(tiny_gpt2.model.parameters())
    parameters[0].requires_grad_(True)
    parameters[1].requires_grad_(False)
    seen: list[bool] = []
    real = gradient_pass.gradient_batch

    def spy(*args: Any) -> Any:
        seen.append(any(p.requires_grad for p in tiny_gpt2.model.parameters()))
        return real(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gradient_pass, "gradient_batch", spy)
        ok(attribute_native(tiny_gpt2, [make_prompt(tiny_gpt2, TEXTS[1])], "saliency", options("saliency"))[0])
    assert seen == [False]
    assert parameters[0].requires_grad and not parameters[1].requires_grad
    for parameter in parameters:
        parameter.requires_grad_(True)


# --------------------------------------------------------------------------- generation


def test_generate_greedy_equals_hf_generate_per_prompt(tiny_llama: LoadedModel) -> None:
    prompts = [make_prompt(tiny_llama, text, max_new_tokens=3 + 2 * i) for i, text in enumerate(TEXTS)]
    batched = generate_greedy(tiny_llama, prompts)
    for prompt, tokens in zip(prompts, batched, strict=True):
        ids = torch.tensor([prompt.input_ids])
        with torch.no_grad():
            reference = tiny_llama.model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=prompt.max_new_tokens
            )
        assert tokens == reference[0, ids.shape[1] :].tolist()


def test_generation_decodes_with_sdpa_and_restores_eager(tiny_llama: LoadedModel) -> None:
    model = tiny_llama.model
    assert model.config._attn_implementation == "eager"
    seen: list[str] = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(module.config._attn_implementation))
    try:
        generate_greedy(tiny_llama, [make_prompt(tiny_llama, TEXTS[0], max_new_tokens=2)])
    finally:
        hook.remove()
    assert seen and set(seen) == {"sdpa"}
    assert model.config._attn_implementation == "eager"  # Inseq and `attention` still get the weights


def test_generation_stops_at_eos_and_keeps_it(tiny_gpt2: LoadedModel) -> None:
    prompt = make_prompt(tiny_gpt2, TEXTS[0], max_new_tokens=6)
    free = generate_greedy(tiny_gpt2, [prompt])[0]
    assert len(free) == 6
    # Declare the model's second token to be EOS: generation must end there, EOS included.
    stopped = generate_greedy(tiny_gpt2, [prompt], {"eos_token_id": free[1]})[0]
    assert stopped == free[: free.index(free[1]) + 1]


def test_generation_params_beyond_greedy_go_to_hf_generate(tiny_gpt2: LoadedModel) -> None:
    prompt = make_prompt(tiny_gpt2, TEXTS[0], max_new_tokens=6)
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        reference = tiny_gpt2.model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6, repetition_penalty=50.0
        )
    got = generate_greedy(tiny_gpt2, [prompt], {"repetition_penalty": 50.0})[0]
    assert got == reference[0, ids.shape[1] :].tolist()
    # The tiny random GPT-2 repeats tokens greedily; a harsh penalty must change that.
    plain = generate_greedy(tiny_gpt2, [prompt])[0]
    assert len(set(plain)) < len(plain) and got != plain
