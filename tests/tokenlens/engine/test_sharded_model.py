"""A model sharded with accelerate's device map gives the unsharded model's numbers (issue 14, item 4).

No GPU here, so the device map tokenlens.models plans for two GPUs (`plan_device_map`, balanced, whole layers)
is dispatched with every part on the CPU: accelerate's AlignDevicesHook path is installed on every part, as on
GPUs, and the engine runs through it (inputs to the embedding's device, the head gradient on the head weight's
device, hidden states and caches moved between layers). Tied and untied embeddings, Llama and GPT-2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fixtures.models import _save_tiny
from tokenlens.engine.generation import generate_greedy
from tokenlens.engine.memory import budget_bytes, device_budget_bytes, memory_model
from tokenlens.engine.native import attribute_native
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptFailure, PromptInput
from tokenlens.errors import ModelLoadError
from tokenlens.models import LoadedModel, load_model, plan_device_map, shard_model

METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "attention")
TEXTS = ("The quick brown fox jumps over the lazy dog", "Hello there, my friend")


def _save_tiny_tied(model_dir: Path, arch: str, tied: bool) -> Path:
    """A tiny random model of 4 layers, tied or untied embeddings. Its MLPs are wide so that, as in a real model,
    the layers outweigh the embedding (SmolLM2's 49k-token vocabulary) and a balanced map splits the layers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base = _save_tiny(model_dir / "base", arch)
    config = AutoConfig.from_pretrained(base)
    config.tie_word_embeddings = tied
    if arch == "gpt2":
        config.n_layer, config.n_inner = 4, 8192
    else:
        config.num_hidden_layers, config.intermediate_size = 4, 8192
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    target = model_dir / "model"
    model.save_pretrained(target)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target


CASES = [("llama", True), ("llama", False), ("gpt2", True)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{arch}-{'tied' if tied else 'untied'}" for arch, tied in CASES])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, LoadedModel]:
    """(unsharded, sharded) copies of one tiny random model."""
    arch, tied = request.param
    directory = _save_tiny_tied(tmp_path_factory.mktemp(f"shard-{arch}-{tied}"), arch, tied)
    plain = load_model(str(directory), device="cpu")
    sharded = load_model(str(directory), device="cpu")
    weights = sum(p.numel() * p.element_size() for p in sharded.model.parameters())
    plan = plan_device_map(sharded.model, {0: 2 * weights, 1: 2 * weights}, "tiny")  # room to spare on both
    assert set(plan.values()) == {0, 1}, plan  # balanced: really split over the two GPUs it was given
    if tied:
        assert sharded.model.get_output_embeddings().weight is sharded.model.get_input_embeddings().weight
        final_norm = "model.norm" if arch == "llama" else "transformer.ln_f"
        assert plan["lm_head"] == 0 != plan[final_norm]  # the head computes on GPU 0, the last hidden state on 1
    sharded.model = shard_model(sharded.model, {name: "cpu" for name in plan})
    return plain, sharded


def _prompts(loaded: LoadedModel, forced: bool) -> list[PromptInput]:
    prompts = []
    for i, text in enumerate(TEXTS):
        ids = loaded.tokenizer(text).input_ids
        target = ids[1:6] if forced else None
        prompts.append(PromptInput(f"p{i}", text, ids, [False] * len(ids), 5, target_ids=target, model_text=text))
    return prompts


def _ok(result: AttributionOutput | PromptFailure) -> AttributionOutput:
    assert isinstance(result, AttributionOutput), result
    return result


def test_hooks_are_installed_on_every_part(pair: tuple[LoadedModel, LoadedModel]) -> None:
    _, sharded = pair
    model = sharded.model
    parts = [model.get_input_embeddings(), model.get_output_embeddings(), *model.base_model.children()]
    assert all(hasattr(part, "_hf_hook") for part in parts if not hasattr(part, "__len__"))
    assert any(hasattr(layer, "_hf_hook") for part in parts if hasattr(part, "__len__") for layer in part)
    plain_weight = pair[0].model.get_output_embeddings().weight
    tied = plain_weight is pair[0].model.get_input_embeddings().weight
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied


@pytest.mark.parametrize("method", METHODS)
def test_every_native_method_gives_the_unsharded_numbers(pair: tuple[LoadedModel, LoadedModel], method: str) -> None:
    plain, sharded = pair
    options = validate_options(method, {"n_steps": 4} if method == "integrated_gradients" else {})
    for forced in (True, False) if method == "saliency" else (True,):  # generated continuations: saliency only
        expected = [_ok(r) for r in attribute_native(plain, _prompts(plain, forced), method, options)]
        actual = [_ok(r) for r in attribute_native(sharded, _prompts(sharded, forced), method, options)]
        for mine, reference in zip(actual, expected, strict=True):
            assert mine.output_ids == reference.output_ids
            scale = float(np.abs(reference.scores).max())
            assert scale > 0
            assert float(np.abs(mine.scores - reference.scores).max()) <= 1e-5 * scale
            assert np.allclose(mine.token_probabilities, reference.token_probabilities, rtol=1e-5, atol=1e-9)


def test_generation_gives_the_unsharded_tokens(pair: tuple[LoadedModel, LoadedModel]) -> None:
    plain, sharded = pair
    prompts = _prompts(plain, forced=False)
    expected = generate_greedy(plain, prompts)
    assert generate_greedy(sharded, prompts) == expected
    assert all(len(tokens) == 5 for tokens in expected)
    hf = generate_greedy(sharded, prompts, {"repetition_penalty": 1.3})  # through model.generate
    assert hf == generate_greedy(plain, prompts, {"repetition_penalty": 1.3})


def test_a_model_too_big_for_the_gpus_is_refused_before_loading(pair: tuple[LoadedModel, LoadedModel]) -> None:
    plain, _ = pair
    with pytest.raises(ModelLoadError) as caught:
        plan_device_map(plain.model, {0: 1000, 1: 1000}, "big/model")
    message = str(caught.value)
    assert "model big/model does not fit on cuda:0,1" in message and "list more GPUs" in message


def test_the_budget_is_the_tightest_device_for_its_share_of_layers(monkeypatch: pytest.MonkeyPatch, pair: Any) -> None:
    from tokenlens.engine import memory

    _, sharded = pair
    assert budget_bytes(sharded.model) == device_budget_bytes("cpu")  # every layer on the CPU here
    assert memory_model(sharded).budget_bytes == device_budget_bytes("cpu")
    gib = 2**30
    free = {"cuda:0": 8 * gib, "cuda:1": 30 * gib}
    monkeypatch.setattr(memory, "device_budget_bytes", lambda device: free[device])
    monkeypatch.setattr(memory, "layer_devices", lambda model: ["cuda:0"] * 8 + ["cuda:1"] * 24)
    # cuda:0 holds a quarter of the layers in 8 GiB (32 GiB for all), cuda:1 three quarters in 30 (40 for all).
    assert memory.budget_bytes(sharded.model) == 32 * gib
    monkeypatch.setattr(memory, "layer_devices", lambda model: ["cuda:0"] * 16 + ["cuda:1"] * 16)
    assert memory.budget_bytes(sharded.model) == 16 * gib


def test_weights_may_take_ninety_percent_of_each_gpus_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tokenlens.models import gpu_weight_memory

    free = {0: 10 * 2**30, 1: 20 * 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (free[index], 80 * 2**30))
    assert gpu_weight_memory([0, 1]) == {0: 9 * 2**30, 1: 18 * 2**30}
