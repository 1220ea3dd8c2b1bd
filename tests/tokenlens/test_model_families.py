"""Model families the native engine attributes exactly, and the ones it refuses.

Each family is a tiny random model built from its own config class, saved and loaded back through
`load_model` (so a multimodal wrapper goes through `text_only_model`), then attributed with the engine's
public entry point and compared with a per-step autograd loop over the model's full forward pass: every
logit transform the model applies is in that reference, so a transform the engine missed would show.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel

from tokenlens.engine.native import attribute_native
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptInput
from tokenlens.errors import MethodOptionError, TokenLensError
from tokenlens.models import LoadedModel, check_closed_form_head, head_transform, load_model, text_config
from tokenlens.pipeline import run_engine

SMALL: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
LLAMA_LIKE: dict[str, Any] = {**SMALL, "num_key_value_heads": 2, "max_position_embeddings": 128}


def _llama(vocab: int) -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **LLAMA_LIKE))


def _qwen2(vocab: int) -> PreTrainedModel:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **LLAMA_LIKE))


def _mistral(vocab: int) -> PreTrainedModel:
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(vocab_size=vocab, **LLAMA_LIKE))


def _gemma2(vocab: int) -> PreTrainedModel:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # attn_logit_softcapping (50) stays on: it acts inside attention, where the backward pass differentiates it.
    config = Gemma2Config(vocab_size=vocab, head_dim=8, final_logit_softcapping=None, **LLAMA_LIKE)
    assert config.attn_logit_softcapping
    return Gemma2ForCausalLM(config)


def _gemma3_text(vocab: int) -> PreTrainedModel:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=vocab, head_dim=8, **LLAMA_LIKE))


def _gemma3_multimodal_config(vocab: int) -> Any:
    from transformers import Gemma3Config

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {"vocab_size": vocab, "head_dim": 8, **LLAMA_LIKE}
    return Gemma3Config(
        text_config=text, vision_config={**vision, "image_size": 28, "patch_size": 14}, mm_tokens_per_image=4
    )


def _gemma3_multimodal(vocab: int) -> PreTrainedModel:
    from transformers import Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration(_gemma3_multimodal_config(vocab))


def _phi3(vocab: int) -> PreTrainedModel:
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2, **LLAMA_LIKE))


def _gpt2(vocab: int) -> PreTrainedModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=4))


def _granite_inner_multipliers(vocab: int) -> PreTrainedModel:
    from transformers import GraniteConfig, GraniteForCausalLM

    # Embedding, residual and attention multipliers act inside the model: attributed exactly, not refused.
    config = GraniteConfig(
        vocab_size=vocab,
        embedding_multiplier=2.0,
        residual_multiplier=0.5,
        attention_multiplier=0.3,
        logits_scaling=1.0,
        **LLAMA_LIKE,
    )
    return GraniteForCausalLM(config)


FAMILIES: dict[str, Callable[[int], PreTrainedModel]] = {
    "llama": _llama,
    "qwen2": _qwen2,
    "mistral": _mistral,
    "gemma2": _gemma2,
    "gemma3-text": _gemma3_text,
    "gemma3-multimodal": _gemma3_multimodal,
    "phi3": _phi3,
    "gpt2": _gpt2,
    "granite-inner-multipliers": _granite_inner_multipliers,
}
PROMPT_IDS = [5, 17, 3, 42, 8, 11, 29]
TARGET_IDS = [7, 19, 4, 23]


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_llama_dir: Path) -> Path:
    return tiny_llama_dir


@pytest.fixture(scope="module")
def loaded_families(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    """Each family saved and loaded once per module (both methods use it)."""
    root = tmp_path_factory.mktemp("families")
    return {
        name: load_model(str(saved_family(name, root / name, tokenizer_dir)), device="cpu", dtype="float32")
        for name in FAMILIES
    }


def saved_family(name: str, folder: Path, tokenizer_dir: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = FAMILIES[name](len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def per_step_rows(loaded: LoadedModel, method: str) -> np.ndarray:
    """One forward and one autograd backward per target, through the model's own forward (logits included)."""
    model, embed = loaded.model, loaded.model.get_input_embeddings()
    full = PROMPT_IDS + TARGET_IDS
    n_in = len(PROMPT_IDS)
    rows = np.zeros((len(TARGET_IDS), len(full)))
    for k, target in enumerate(TARGET_IDS):
        x = embed(torch.tensor([full[: n_in + k]])).detach().requires_grad_(True)
        p = model(inputs_embeds=x).logits[0, -1].float().softmax(-1)[target]
        (grad,) = torch.autograd.grad(p, x)
        attribution = grad * x if method == "input_x_gradient" else grad
        rows[k, : n_in + k] = attribution[0].norm(dim=-1).detach().double().numpy()
    return rows


def native_rows(loaded: LoadedModel, method: str) -> np.ndarray:
    prompt = PromptInput(
        "p1", "ids", PROMPT_IDS, [False] * len(PROMPT_IDS), len(TARGET_IDS), target_ids=TARGET_IDS, model_text="ids"
    )
    options = validate_options(method, {"attributed_fn": "probability"})  # d p, as the reference
    (result,) = attribute_native(loaded, [prompt], method, options)
    assert isinstance(result, AttributionOutput), result
    return np.asarray(result.scores, dtype=np.float64)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_family_is_exact_against_per_step_autograd(
    family: str, method: str, loaded_families: dict[str, LoadedModel]
) -> None:
    loaded = loaded_families[family]
    assert text_config(loaded.model.config).num_hidden_layers == 2  # the language model's config, even if wrapped
    expected = per_step_rows(loaded, method)
    actual = native_rows(loaded, method)
    scale = float(np.abs(expected).max())
    assert scale > 0
    assert float(np.abs(actual - expected).max()) <= 1e-4 * scale


def test_multimodal_wrapper_becomes_its_language_model_with_the_same_logits(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    from transformers import Gemma3ForConditionalGeneration

    folder = saved_family("gemma3-multimodal", tmp_path / "g3", tokenizer_dir)
    wrapper = Gemma3ForConditionalGeneration.from_pretrained(folder)
    wrapper.eval()  # type: ignore[no-untyped-call]
    assert not hasattr(wrapper.config, "num_hidden_layers")  # the bug: every gradient method read it
    loaded = load_model(str(folder), device="cpu")
    assert type(loaded.model).__name__ == "Gemma3ForCausalLM"
    assert loaded.context_length == 128
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=ids).logits, wrapper(input_ids=ids).logits, atol=1e-5)


def refusal(config: PretrainedConfig) -> str:
    with pytest.raises(TokenLensError) as caught:
        check_closed_form_head(config, "some/model", "saliency")
    return str(caught.value)


def test_logit_transforms_are_refused_naming_the_field() -> None:
    from transformers import CohereConfig, FalconH1Config, Gemma2Config, GraniteConfig, LlamaConfig

    assert "final_logit_softcapping=30.0" in refusal(Gemma2Config())
    assert "logit_scale=0.0625" in refusal(CohereConfig())
    assert "logits_scaling=4.0" in refusal(GraniteConfig(logits_scaling=4.0))
    assert "lm_head_multiplier=0.5" in refusal(FalconH1Config(lm_head_multiplier=0.5))
    # MiniCPM scales the last hidden state by hidden_size / dim_model_base: neutral only when they are equal.
    extra: dict[str, Any] = {"dim_model_base": 256}
    assert "dim_model_base=256" in refusal(LlamaConfig(hidden_size=1024, **extra))
    assert head_transform(LlamaConfig(hidden_size=256, **extra)) is None
    # A field no list knows yet, named like a logit multiplier, is refused too; the message says what to do.
    extra = {"output_logits_multiplier": 2.0}
    message = refusal(LlamaConfig(**extra))
    assert "output_logits_multiplier=2.0" in message and "--engine inseq" in message
    # The wrapper's text config is where Gemma-3 keeps its soft cap.
    from transformers import Gemma3Config

    assert "final_logit_softcapping=30.0" in refusal(Gemma3Config(text_config={"final_logit_softcapping": 30.0}))


def test_neutral_settings_and_inside_layer_fields_are_not_refused() -> None:
    from transformers import FalconH1Config, Gemma2Config, GraniteConfig, LlamaConfig, Qwen2MoeConfig

    for config in (
        LlamaConfig(),
        Gemma2Config(final_logit_softcapping=None),  # attn_logit_softcapping=50 acts inside attention
        GraniteConfig(residual_multiplier=0.2, embedding_multiplier=12.0, logits_scaling=1.0),
        FalconH1Config(),  # every multiplier 1.0
        Qwen2MoeConfig(output_router_logits=True),
    ):
        assert head_transform(config) is None, type(config).__name__


def test_a_refused_model_fails_every_prompt_for_good_without_running(tokenizer_dir: Path) -> None:
    from transformers import GraniteConfig, GraniteForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = GraniteForCausalLM(GraniteConfig(vocab_size=len(tokenizer), logits_scaling=8.0, **LLAMA_LIKE))
    model.eval()  # type: ignore[no-untyped-call]
    loaded = LoadedModel("tiny-granite", model, tokenizer, "cpu", "float32")
    prompt = PromptInput("p1", "x", PROMPT_IDS, [False] * len(PROMPT_IDS), 3, target_ids=TARGET_IDS, model_text="x")
    options: dict[str, Any] = validate_options("saliency", {})
    (failure,) = run_engine(loaded, [prompt], "saliency", "native", options, {})
    assert not isinstance(failure, AttributionOutput)
    assert failure.permanent and failure.error_type == "UnsupportedModelError"
    assert "logits_scaling=8.0" in failure.message
    # The engine's own entry point refuses it too, naming the field (the same list).
    with pytest.raises(MethodOptionError, match=r"logits_scaling=8\.0"):
        attribute_native(loaded, [prompt], "saliency", options)
    # Attention weights don't go through the head gradient: that method still runs on the same model.
    (attended,) = run_engine(loaded, [prompt], "attention", "native", validate_options("attention", {}), {})
    assert isinstance(attended, AttributionOutput)
