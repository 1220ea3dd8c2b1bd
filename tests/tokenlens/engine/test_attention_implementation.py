"""The native gradient passes run memory-efficient attention (SDPA); the `attention` method and Inseq keep eager
attention, whose weights are their output (issue 14, item 3).

Exactness under SDPA is what tests/tokenlens/engine/test_native_engine.py and test_exactness.py check (against
per-step autograd and Inseq, both eager); here: that SDPA really runs, where, that its graph keeps no O(L^2)
tensor per head, and that the memory model plans with that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.fixtures.models import saved_graph_bytes
from tokenlens.engine import attention as attention_module
from tokenlens.engine.inseq_engine import attribute_inseq
from tokenlens.engine.memory import MemoryModel, memory_model
from tokenlens.engine.native import attribute_native
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptFailure, PromptInput
from tokenlens.models import LoadedModel, load_model

GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
TEXT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir), device="cpu")


def forced_prompt(loaded: LoadedModel, n_out: int = 4) -> PromptInput:
    ids = loaded.tokenizer(TEXT).input_ids
    return PromptInput("p", TEXT, ids, [False] * len(ids), n_out, target_ids=ids[1 : 1 + n_out], model_text=TEXT)


def options(method: str) -> dict[str, Any]:
    return validate_options(method, {"n_steps": 4} if method == "integrated_gradients" else {})


def ok(result: AttributionOutput | PromptFailure) -> AttributionOutput:
    assert isinstance(result, AttributionOutput), result
    return result


@pytest.fixture
def sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Every call of torch's scaled_dot_product_attention: whether its query was part of an autograd graph."""
    calls: list[bool] = []
    real: Callable[..., Any] = torch.nn.functional.scaled_dot_product_attention

    def spy(query: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(bool(query.requires_grad))
        return real(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    yield calls


@pytest.fixture
def implementations_seen(tiny_llama: LoadedModel) -> Iterator[list[str]]:
    """The attention implementation each attention module of tiny_llama ran under."""
    seen: list[str] = []
    modules = [layer.self_attn for layer in tiny_llama.model.model.layers]
    hooks = [
        m.register_forward_pre_hook(lambda module, args: seen.append(module.config._attn_implementation))
        for m in modules
    ]
    yield seen
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_passes_run_sdpa_and_leave_eager_behind(
    tiny_llama: LoadedModel, method: str, sdpa_calls: list[bool], implementations_seen: list[str]
) -> None:
    assert tiny_llama.model.config._attn_implementation == "eager"
    result = ok(attribute_native(tiny_llama, [forced_prompt(tiny_llama)], method, options(method))[0])
    assert set(implementations_seen) == {"sdpa"}
    assert any(sdpa_calls), "no scaled_dot_product_attention call inside an autograd graph"
    assert result.attention_implementation == "sdpa"
    assert tiny_llama.model.config._attn_implementation == "eager"  # restored for Inseq and `attention`


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_sdpa_gives_the_eager_numbers(tiny_llama: LoadedModel, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = forced_prompt(tiny_llama, n_out=6)
    fast = ok(attribute_native(tiny_llama, [prompt], method, options(method))[0])
    monkeypatch.setattr(attention_module, "memory_efficient_attention", lambda model: None)
    eager = ok(attribute_native(tiny_llama, [prompt], method, options(method))[0])
    assert eager.attention_implementation == "eager"
    scale = float(np.abs(eager.scores).max())
    assert scale > 0
    assert float(np.abs(fast.scores - eager.scores).max()) <= 1e-5 * scale
    assert np.allclose(fast.token_probabilities, eager.token_probabilities, rtol=1e-5)


def test_the_attention_method_keeps_eager_weights(
    tiny_llama: LoadedModel, sdpa_calls: list[bool], implementations_seen: list[str]
) -> None:
    result = ok(attribute_native(tiny_llama, [forced_prompt(tiny_llama)], "attention", options("attention"))[0])
    assert set(implementations_seen) == {"eager"} and not sdpa_calls
    assert result.attention_implementation == "eager"
    # Attention weights: each output token's row over the positions it sees sums to one.
    n_in = len(result.input_ids)
    for i in range(len(result.output_ids)):
        assert result.scores[i, : n_in + i].sum() == pytest.approx(1.0, abs=1e-5)


def test_inseq_keeps_eager_weights(tiny_llama: LoadedModel, implementations_seen: list[str]) -> None:
    result = attribute_inseq(tiny_llama, [forced_prompt(tiny_llama)], "attention", options("attention"))[0]
    assert isinstance(result, AttributionOutput), result
    assert implementations_seen and set(implementations_seen) == {"eager"}
    assert result.attention_implementation == "eager"
    assert float(np.abs(result.scores).sum()) > 0


def test_sdpa_graph_keeps_no_attention_matrix_and_the_memory_model_knows() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    length, heads, layers = 256, 8, 2
    eager_attention: dict[str, Any] = {"attn_implementation": "eager"}  # as tokenlens.models loads models
    config = LlamaConfig(
        vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=4, **eager_attention,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.eval()  # type: ignore[no-untyped-call]
    model.requires_grad_(False)
    eager = saved_graph_bytes(model, length)
    with attention_module.attention_implementation(model, attention_module.memory_efficient_attention(model)):
        sdpa, sdpa_half = saved_graph_bytes(model, length), saved_graph_bytes(model, length // 2)
    per_head_matrices = layers * heads * length * length * 4  # float32 probabilities, one L x L per head
    assert eager - sdpa >= 0.9 * per_head_matrices  # what SDPA does not keep (it keeps a mask and log-sum-exps)
    assert sdpa <= 2.2 * sdpa_half  # linear in the length: nothing O(L^2) per head instead

    shape = dict(budget_bytes=2**30, layers=layers, hidden=64, intermediate=128, heads=heads, element_bytes=4)
    planned_sdpa = length * MemoryModel(**shape, saves_attention_weights=False).graph_bytes(length)
    planned_eager = length * MemoryModel(**shape, saves_attention_weights=True).graph_bytes(length)
    assert sdpa <= planned_sdpa <= 4 * sdpa  # on the safe side, and not by the eager attention term
    assert eager <= planned_eager
    assert planned_eager - planned_sdpa >= per_head_matrices


def test_memory_model_plans_sdpa_for_the_loaded_model(tiny_llama: LoadedModel) -> None:
    planned = memory_model(tiny_llama)
    assert planned.saves_attention_weights is False  # loaded eager, but the gradient passes run SDPA
    assert planned.graph_bytes(1024) < planned.graph_bytes(1024) + 2 * planned.heads * 1024 * planned.layers
    eager_plan = MemoryModel(**{**planned.__dict__, "saves_attention_weights": True})
    assert planned.rows_that_fit(1024) > eager_plan.rows_that_fit(1024)
