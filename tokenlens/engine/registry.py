"""The one registry of attribution methods, their options, and which engines run them.

Native methods (TokenLens's own exact, batched gradient engine) are the default
for their names; every Inseq method is available through the Inseq engine.
An unknown name or an option that doesn't fit raises an error that lists what
would have worked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenlens.engine.methods import NATIVE_METHODS
from tokenlens.engine.options import N_STEPS, MethodSpec, option_table
from tokenlens.errors import MethodOptionError, UnknownMethodError

ENGINES = ("auto", "native", "inseq")

#: Inseq 0.7.1's `inseq.list_feature_attribution_methods()`, kept here so that
#: validating a method name never imports Inseq (seconds of start-up).
#: tests/tokenlens/engine/test_registry.py checks this list against the installed Inseq.
INSEQ_METHODS: tuple[str, ...] = (
    "attention",
    "deeplift",
    "discretized_integrated_gradients",
    "dummy",
    "gradient_shap",
    "input_x_gradient",
    "integrated_gradients",
    "layer_deeplift",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "lime",
    "occlusion",
    "reagent",
    "saliency",
    "sequential_integrated_gradients",
    "value_zeroing",
)

#: The native methods' entries come with their objects (engine/methods.py), so a new one is added there.
_NATIVE: dict[str, MethodSpec] = {name: method.spec for name, method in NATIVE_METHODS.items()}

_INSEQ_SUMMARIES = {
    "deeplift": "DeepLIFT on input embeddings (Inseq)",
    "discretized_integrated_gradients": "integrated gradients along discrete token paths (Inseq)",
    "dummy": "Inseq's dummy method: no attribution, for pipeline checks",
    "gradient_shap": "GradientSHAP on input embeddings (Inseq)",
    "layer_deeplift": "DeepLIFT on a layer's activations (Inseq)",
    "layer_gradient_x_activation": "gradient x activation at a layer (Inseq)",
    "layer_integrated_gradients": "integrated gradients on a layer's activations (Inseq)",
    "lime": "LIME perturbation surrogate (Inseq)",
    "occlusion": "occlusion of each source token (Inseq)",
    "reagent": "ReAGent token replacement (Inseq)",
    "sequential_integrated_gradients": "sequential integrated gradients (Inseq)",
    "value_zeroing": "value zeroing of attention (Inseq)",
}

_INSEQ_ONLY: dict[str, MethodSpec] = {
    name: MethodSpec(
        name,
        _INSEQ_SUMMARIES.get(name, f"{name} (Inseq)"),
        ("inseq",),
        option_table(N_STEPS) if "integrated" in name else {},
    )
    for name in INSEQ_METHODS
    if name not in _NATIVE
}

METHODS: dict[str, MethodSpec] = {**_NATIVE, **_INSEQ_ONLY}


def list_methods() -> list[MethodSpec]:
    return [METHODS[name] for name in sorted(METHODS)]


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(name, METHODS) from None


def resolve_engine(method: str, engine: str = "auto") -> str:
    """The engine that runs `method`: native where one exists, unless Inseq is forced."""
    spec = get_method(method)
    if engine not in ENGINES:
        raise MethodOptionError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if engine == "auto":
        return "native" if spec.has_native else "inseq"
    if engine not in spec.engines:
        raise MethodOptionError(f"method {method!r} has no {engine} engine; it runs on: {', '.join(spec.engines)}")
    return engine


def validate_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check `options` against the method and return them with defaults filled in.

    Options set to None are treated as not given.
    """
    spec = get_method(method)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        allowed = ", ".join(sorted(spec.options)) or "none"
        raise MethodOptionError(
            f"option(s) {', '.join(unknown)} do not apply to method {method!r}; its options are: {allowed}"
        )
    resolved: dict[str, Any] = {}
    for name, option in spec.options.items():
        resolved[name] = option.coerce(method, given[name]) if name in given else option.default
    return resolved
