"""Model loading: the bundled alias, its safetensors cache, and clear errors for what can't load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenlens.errors import ModelLoadError, UnknownModelAliasError
from tokenlens.models import cache_dir, check_model_spec, load_model


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


def test_tiny_local_directory_loads(tiny_gpt2_dir: Path) -> None:
    loaded = load_model(str(tiny_gpt2_dir), device="cpu")
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
