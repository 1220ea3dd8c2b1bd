"""Model loading: the bundled alias, its safetensors cache, and clear errors for what can't load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenlens import defaults
from tokenlens.errors import ModelLoadError, TokenLensError, UnknownModelAliasError
from tokenlens.models import (
    cache_dir,
    check_dtype_for_method,
    check_model_spec,
    load_model,
    resolve_dtype_name,
)
from tokenlens.pipeline import engine_batch_size_for


def test_unknown_alias_is_refused_before_loading() -> None:
    with pytest.raises(UnknownModelAliasError, match="smollm2-135m-instruct"):
        check_model_spec("smollm3-135m-instruct")


def test_hub_id_offline_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub can't be reached"):
        load_model("tokenlens-test/definitely-not-cached-model", device="cpu")


def test_encoder_decoder_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    with pytest.raises(ModelLoadError, match="encoder-decoder"):
        load_model(str(tmp_path), device="cpu")


def test_bad_device_and_dtype() -> None:
    with pytest.raises(ModelLoadError, match="unknown device"):
        load_model("smollm2-135m-instruct", device="tpu")
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model("smollm2-135m-instruct", device="cpu", dtype="float8")


def test_dtype_auto_is_bfloat16_on_cuda_and_float32_on_cpu() -> None:
    assert defaults.DTYPE == "auto"
    assert resolve_dtype_name("auto", "cuda") == resolve_dtype_name("auto", "cuda:1") == "bfloat16"
    assert resolve_dtype_name("auto", "cpu") == "float32"
    assert resolve_dtype_name("float16", "cuda") == "float16"  # asked for by name: kept (and checked per method)
    with pytest.raises(ModelLoadError, match="unknown dtype 'fp8'; use one of auto, float32"):
        resolve_dtype_name("fp8", "cpu")


def test_float16_is_refused_for_gradient_methods_only() -> None:
    for method in ("saliency", "input_x_gradient", "integrated_gradients", "gradient_shap"):
        with pytest.raises(TokenLensError, match="underflow"):
            check_dtype_for_method("float16", method)
    check_dtype_for_method("float16", "attention")  # attention weights: no gradient
    check_dtype_for_method("bfloat16", "saliency")


def test_gpu_batches_are_larger_than_cpu_batches() -> None:
    assert engine_batch_size_for("native", "cuda:0") == defaults.GPU_ENGINE_BATCH_SIZES["native"]
    assert engine_batch_size_for("native", "cuda:0") > engine_batch_size_for("native", "cpu") == 8
    assert engine_batch_size_for("inseq", "cuda") == 1  # Inseq attributes one prompt at a time anyway
    assert defaults.GPU_MAX_PADDING_RATIO > defaults.MAX_PADDING_RATIO


def test_tiny_local_directory_loads(tiny_gpt2_dir: Path) -> None:
    loaded = load_model(str(tiny_gpt2_dir), device="cpu")
    assert loaded.dtype == "float32"  # --dtype auto, resolved for the CPU
    assert loaded.info["model_type"] == "gpt2"
    assert loaded.context_length == 256
    assert loaded.tokenizer.pad_token_id is not None


@pytest.mark.slow
def test_smollm2_alias_loads_through_the_cache(smollm2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import torch

    # A fresh cache: the first load dequantises the GGUF and writes safetensors, the second reads them.
    monkeypatch.setenv("TOKENLENS_CACHE_DIR", str(tmp_path / "cache"))
    first = load_model("smollm2-135m-instruct", device="cpu")
    cached = list((tmp_path / "cache").glob("*/model.safetensors"))
    assert len(cached) == 1 and (cached[0].parent / "complete").is_file()
    second = load_model("smollm2-135m-instruct", device="cpu")
    assert second.load_time_s < first.load_time_s
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert first.model.config.model_type == "llama"
    assert smollm2.tokenizer.chat_template
    assert cache_dir() == tmp_path / "cache"
