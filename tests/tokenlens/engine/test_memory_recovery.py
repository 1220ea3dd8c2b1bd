"""Out-of-memory recovery of the native engine with real out-of-memory errors (issue 14, item 2).

A forward hook on a decoder layer of a tiny random Llama raises `torch.OutOfMemoryError` from inside the
engine's own forward pass when it carries more rows than a chosen limit, as a GPU would when the rows' graph
does not fit. The engine must free the failed attempt before retrying, split the rows rather than shrink the
backward calls, never run a forward again at a size that failed, and give the unsplit result. A prompt the
memory model says can never fit fails on the first try, with the bytes, without running anything.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tokenlens.engine import generation, native
from tokenlens.engine.memory import MemoryModel, memory_model
from tokenlens.engine.methods import NATIVE_METHODS
from tokenlens.engine.native import attribute_native
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptFailure, PromptInput
from tokenlens.models import LoadedModel, load_model

GIB = 2**30


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir), device="cpu")


def forced(prompt_id: str, n_in: int, n_out: int) -> PromptInput:
    """A prompt of n_in tokens with a forced target of n_out tokens (no generation: every forward is a pass)."""
    ids = [100 + (7 * i) % 400 for i in range(n_in)]
    target = [300 + (11 * i) % 400 for i in range(n_out)]
    return PromptInput(prompt_id, "", ids, [False] * n_in, n_out, target_ids=target)


def ok(result: AttributionOutput | PromptFailure) -> AttributionOutput:
    assert isinstance(result, AttributionOutput), result
    return result


class RowLimit:
    """Raises a real out-of-memory error in the last decoder layer's forward when a graph-building pass carries
    more than `max_rows` rows; counts graph-building forwards by their row count and keeps a weak reference to
    a tensor of every failed attempt's graph."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.forwards: Counter[int] = Counter()
        self.failed_graphs: list[weakref.ref[torch.Tensor]] = []

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if not torch.is_grad_enabled():  # generation and the plain pass for p(y) build no graph
            return
        rows = int(hidden.shape[0])
        self.forwards[rows] += 1
        if rows > self.max_rows:
            self.failed_graphs.append(weakref.ref(hidden))  # made by the layers below, in this attempt
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {rows} rows, at most {self.max_rows})")


@pytest.fixture
def row_limit(tiny_llama: LoadedModel) -> Iterator[RowLimit]:
    limit = RowLimit(max_rows=10**9)
    handle = tiny_llama.model.model.layers[-1].register_forward_pre_hook(limit, with_kwargs=True)
    yield limit
    handle.remove()


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch, row_limit: RowLimit) -> list[tuple[int, int, int]]:
    """(prompts, target chunk, integration steps per pass) of every attempt; at the start of each one, every
    earlier failed attempt's graph must already be freed."""
    real = native._attribute_batch
    seen: list[tuple[int, int, int]] = []

    def attempt(
        loaded: LoadedModel, items: list[Any], method: Any, options: dict[str, Any], chunk: int, step_group: int
    ) -> Any:
        alive = [ref for ref in row_limit.failed_graphs if ref() is not None]
        assert not alive, "a failed attempt's graph is still alive when the next attempt starts"
        seen.append((len(items), chunk, step_group))
        return real(loaded, items, method, options, chunk, step_group)

    monkeypatch.setattr(native, "_attribute_batch", attempt)
    return seen


def test_forward_out_of_memory_splits_the_batch_frees_the_graph_and_never_repeats_that_size(
    tiny_llama: LoadedModel, row_limit: RowLimit, attempts: list[tuple[int, int, int]]
) -> None:
    prompts = [forced("a", 12, 6), forced("b", 9, 6), forced("c", 14, 6)]
    opts = validate_options("saliency", {"target_chunk": 8})
    expected = attribute_native(tiny_llama, prompts, "saliency", opts, batch_size=3)
    assert row_limit.forwards[3] > 0 and not row_limit.failed_graphs  # unlimited: one batch of three rows

    attempts.clear()
    row_limit.forwards.clear()
    row_limit.max_rows = 1
    results = attribute_native(tiny_llama, prompts, "saliency", opts, batch_size=3)
    # The three-row forward ran out once; the batch was split (1 + 2, then 1 + 1), never retried with smaller
    # target chunks at three or two rows.
    assert row_limit.forwards[3] == 1 and row_limit.forwards[2] == 1
    assert [size for size, _chunk, _group in attempts] == [3, 1, 2, 1, 1]
    assert len(row_limit.failed_graphs) == 2
    assert all(ref() is None for ref in row_limit.failed_graphs)
    for got, want in zip(results, expected, strict=True):
        got, want = ok(got), ok(want)
        assert got.method_params["target_chunk"] == want.method_params["target_chunk"]  # not halved: useless
        assert torch.allclose(torch.from_numpy(got.scores), torch.from_numpy(want.scores), rtol=1e-5, atol=1e-9)
        assert got.token_probabilities == pytest.approx(want.token_probabilities, rel=1e-6)


def test_forward_out_of_memory_of_one_prompt_halves_the_integration_steps_per_pass(
    tiny_llama: LoadedModel, row_limit: RowLimit, attempts: list[tuple[int, int, int]]
) -> None:
    prompt = forced("ig", 10, 5)
    opts = validate_options("integrated_gradients", {"n_steps": 4})
    expected = ok(attribute_native(tiny_llama, [prompt], "integrated_gradients", opts)[0])
    assert [group for _size, _chunk, group in attempts] == [4]  # all four steps in one pass when nothing fails

    attempts.clear()
    row_limit.forwards.clear()
    row_limit.max_rows = 2
    result = ok(attribute_native(tiny_llama, [prompt], "integrated_gradients", opts)[0])
    assert row_limit.forwards[4] == 1  # the four-row forward ran once, not once per halved target chunk
    assert [group for _size, _chunk, group in attempts] == [4, 2]
    assert attempts[0][1] == attempts[1][1]  # the target chunk was left alone
    assert torch.allclose(torch.from_numpy(result.scores), torch.from_numpy(expected.scores), rtol=1e-5, atol=1e-9)


def test_forward_that_cannot_fit_even_one_row_fails_that_prompt_only(
    tiny_llama: LoadedModel, row_limit: RowLimit, attempts: list[tuple[int, int, int]]
) -> None:
    row_limit.max_rows = 0
    results = attribute_native(tiny_llama, [forced("x", 8, 3)], "saliency", validate_options("saliency", {}))
    failure = results[0]
    assert isinstance(failure, PromptFailure)
    assert failure.error_type == "OutOfMemoryError" and not failure.permanent  # another device may fit it
    assert "smallest pieces" in failure.message and "simulated: 1 rows" in failure.message
    assert len(attempts) == 1 and row_limit.forwards[1] == 1


def with_capacity(monkeypatch: pytest.MonkeyPatch, loaded: LoadedModel, capacity_bytes: int) -> MemoryModel:
    model = dataclasses.replace(memory_model(loaded), capacity_bytes=capacity_bytes)
    monkeypatch.setattr(native, "memory_model", lambda _loaded: model)
    return model


def test_a_prompt_that_can_never_fit_is_an_error_record_on_the_first_try_with_the_bytes(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch, attempts: list[tuple[int, int, int]]
) -> None:
    method = NATIVE_METHODS["integrated_gradients"]
    opts = validate_options("integrated_gradients", {"n_steps": 4})
    small, large = forced("small", 10, 4), forced("large", 60, 30)
    real = memory_model(tiny_llama)
    small_needs = method.alone_bytes(real, 14, 4, opts)
    large_needs = method.alone_bytes(real, 90, 30, opts)
    assert small_needs < large_needs
    memory = with_capacity(monkeypatch, tiny_llama, (small_needs + large_needs) // 2)

    results = attribute_native(tiny_llama, [large, small], "integrated_gradients", opts)
    failure = results[0]
    assert isinstance(failure, PromptFailure)
    assert failure.error_type == "OutOfMemoryError" and failure.permanent  # retrying can't help
    assert f"needs ~{large_needs / GIB:.1f} GiB" in failure.message
    assert f"can give it {memory.capacity_bytes / GIB:.1f} GiB" in failure.message
    assert "--max-new-tokens" in failure.message and "shorter prompt" in failure.message
    assert ok(results[1]).prompt_id == "small"
    assert attempts == [(1, attempts[0][1], 4)]  # only the small prompt ran, once


def test_a_generated_prompt_is_checked_before_and_after_generating(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch, attempts: list[tuple[int, int, int]]
) -> None:
    method = NATIVE_METHODS["saliency"]
    opts = validate_options("saliency", {})
    prompt = dataclasses.replace(forced("gen", 30, 1), target_ids=None, max_new_tokens=40)
    real = memory_model(tiny_llama)
    generated = []

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        generated.append(1)
        return [[5] * 40]  # a continuation of 40 tokens, whatever the tiny model would say

    monkeypatch.setattr(native, "generate_greedy", counting_generate)
    # Not even one new token fits: refused before generating.
    with_capacity(monkeypatch, tiny_llama, method.alone_bytes(real, 31, 1, opts) - 1)
    failure = attribute_native(tiny_llama, [prompt], "saliency", opts)[0]
    assert isinstance(failure, PromptFailure) and failure.permanent and not generated
    assert "(30 + 1 tokens)" in failure.message
    # One new token fits, the 40 generated don't: refused after generating, before any attribution pass.
    with_capacity(monkeypatch, tiny_llama, method.alone_bytes(real, 70, 40, opts) - 1)
    failure = attribute_native(tiny_llama, [prompt], "saliency", opts)[0]
    assert isinstance(failure, PromptFailure) and failure.permanent and generated == [1]
    assert "(30 + 40 tokens)" in failure.message
    assert attempts == []


def test_generation_out_of_memory_frees_the_batch_and_splits_it(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = [dataclasses.replace(forced(f"g{i}", 6 + i, 1), target_ids=None, max_new_tokens=3) for i in range(3)]
    expected = [ok(r).output_ids for r in attribute_native(tiny_llama, prompts, "saliency", {}, batch_size=3)]
    real = generation.generate_greedy
    batches: list[int] = []
    failed: list[weakref.ref[torch.Tensor]] = []

    def generate(loaded: LoadedModel, batch: list[PromptInput], params: dict[str, Any]) -> Any:
        assert all(ref() is None for ref in failed), "the failed generation's tensors outlived it"
        batches.append(len(batch))
        if len(batch) > 1:
            held = torch.zeros(len(batch), 1000)
            failed.append(weakref.ref(held))
            raise torch.OutOfMemoryError("CUDA out of memory (simulated generation)")
        return real(loaded, batch, params)

    monkeypatch.setattr(native, "generate_greedy", generate)
    results = attribute_native(tiny_llama, prompts, "saliency", {}, batch_size=3)
    assert batches == [3, 1, 2, 1, 1]
    assert [ok(r).output_ids for r in results] == expected
