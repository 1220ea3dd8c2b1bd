"""The method registry: every Inseq method is listed, errors say what would have worked."""

from __future__ import annotations

import pytest

from tokenlens.engine.registry import (
    INSEQ_METHODS,
    get_method,
    list_methods,
    resolve_engine,
    validate_options,
)
from tokenlens.errors import MethodOptionError, UnknownMethodError


def test_static_inseq_list_matches_installed_inseq() -> None:
    import inseq

    assert set(INSEQ_METHODS) == set(inseq.list_feature_attribution_methods())


def test_every_inseq_method_is_registered_and_natives_default_to_native() -> None:
    names = {spec.name for spec in list_methods()}
    assert set(INSEQ_METHODS) <= names
    for native in ("saliency", "input_x_gradient", "integrated_gradients", "attention"):
        assert resolve_engine(native) == "native"
        assert resolve_engine(native, "inseq") == "inseq"
    assert resolve_engine("lime") == "inseq"


def test_unknown_method_lists_valid_ones() -> None:
    with pytest.raises(UnknownMethodError) as caught:
        get_method("salency")
    message = str(caught.value)
    assert "'salency'" in message and "saliency" in message and "integrated_gradients" in message


def test_native_engine_refused_for_inseq_only_method() -> None:
    with pytest.raises(MethodOptionError, match="no native engine"):
        resolve_engine("lime", "native")


def test_options_defaults_and_validation() -> None:
    assert validate_options("integrated_gradients", {})["n_steps"] == 50
    assert validate_options("integrated_gradients", {"n_steps": "8"})["n_steps"] == 8
    assert validate_options("attention", {"layers": "0,2"})["layers"] == [0, 2]
    assert validate_options("saliency", {})["attributed_fn"] == "logprob"
    with pytest.raises(MethodOptionError, match="n_steps do not apply to method 'saliency'"):
        validate_options("saliency", {"n_steps": 8})
    with pytest.raises(MethodOptionError, match="at least 1"):
        validate_options("integrated_gradients", {"n_steps": 0})
    assert validate_options("saliency", {"attributed_fn": "contrast_logit"})["attributed_fn"] == "contrast_logit"
    with pytest.raises(MethodOptionError, match="must be one of probability, logprob, logit, contrast_prob"):
        validate_options("saliency", {"attributed_fn": "entropy"})
