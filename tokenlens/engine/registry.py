"""The one registry of attribution methods, their options, and which engines run them.

Native methods (TokenLens's own exact, batched gradient engine) are the default
for their names; every Inseq method is available through the Inseq engine.
An unknown name or an option that doesn't fit raises an error that lists what
would have worked.
"""

from __future__ import annotations

import os
import sys
import zipfile
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

#: Inseq methods TokenLens lists but does not run, and why. `tokenlens methods` shows them apart with the reason,
#: and asking for one is refused with it (tests/tokenlens/engine/test_inseq_every_method.py runs all the others).
REFUSED_INSEQ_METHODS: dict[str, str] = {
    "dummy": "Inseq's pipeline check computes no scores at all; a result would be an empty matrix posing as one",
    "layer_deeplift": (
        "Inseq 0.7.1's layer DeepLIFT returns all-zero scores with the installed transformers and Captum (SmolLM2 "
        "included), which would be stored as if no token mattered; use deeplift"
    ),
    "layer_integrated_gradients": (
        "Inseq 0.7.1's layer integrated gradients returns all-zero scores with the installed transformers and Captum "
        "(SmolLM2 included), which would be stored as if no token mattered; use integrated_gradients"
    ),
    "value_zeroing": (
        "Inseq 0.7.1's value zeroing cannot hook the installed transformers' models: it expects each decoder "
        "layer to return a tuple (Llama's now returns a tensor: TypeError) and finds no value assignment in GPT-2's "
        "attention; use attention or occlusion"
    ),
}

#: Where ReAGent's English POS tagger data lives inside an NLTK data directory.
NLTK_TAGGER_RESOURCE = "taggers/averaged_perceptron_tagger_eng/"

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
    """Every method TokenLens knows, runnable or not (see `refusal_reason`)."""
    return [METHODS[name] for name in sorted(METHODS)]


def refusal_reason(name: str) -> str | None:
    """Why `name` can't run in this environment (one line that says the fix where there is one), or None."""
    if name in REFUSED_INSEQ_METHODS:
        return REFUSED_INSEQ_METHODS[name]
    if name == "reagent":
        return _reagent_refusal()
    return None


def runnable_methods() -> list[MethodSpec]:
    """The methods that run here: what `tokenlens methods` lists as runnable."""
    return [spec for spec in list_methods() if refusal_reason(spec.name) is None]


def _reagent_refusal() -> str | None:
    # Inseq's ReAGent POS-tags the whole vocabulary with NLTK's perceptron tagger, whose data NLTK downloads at
    # run time. Workers are offline, so the data must already be on the machine; we never download it.
    import importlib.util

    if importlib.util.find_spec("nltk") is None:
        return "needs nltk: pip install nltk"
    if not _nltk_has_tagger_data():
        return (
            "needs NLTK's English POS tagger data, which TokenLens does not download: install it once with "
            "`python -m nltk.downloader averaged_perceptron_tagger_eng` (or point NLTK_DATA at a copy)"
        )
    return None


def nltk_data_roots() -> list[str] | None:
    """The directories `nltk.data.path` starts with, worked out without importing NLTK (1.7 s): the NLTK_DATA
    entries, ~/nltk_data, then the interpreter's and the system's; None where that can't be told for sure
    (Windows, a zip file named as a root), so that NLTK itself is asked."""
    if os.name == "nt":
        return None
    roots = [os.path.expanduser(entry) for entry in os.environ.get("NLTK_DATA", "").split(os.pathsep) if entry]
    if "APPENGINE_RUNTIME" not in os.environ and os.path.expanduser("~/") != "~/":
        roots.append(os.path.expanduser("~/nltk_data"))
    roots += [os.path.join(sys.prefix, *parts, "nltk_data") for parts in ((), ("share",), ("lib",))]
    roots += ["/usr/share/nltk_data", "/usr/local/share/nltk_data", "/usr/lib/nltk_data", "/usr/local/lib/nltk_data"]
    return None if any(root.endswith(".zip") for root in roots) else roots


def _nltk_has_tagger_data() -> bool:
    """Whether NLTK finds ReAGent's tagger data: a folder or a zip of it under a data root. Asks NLTK itself where
    it is loaded already (a program may have changed `nltk.data.path`) or where the roots can't be told."""
    roots = None if "nltk.data" in sys.modules else nltk_data_roots()
    if roots is None:
        import nltk.data

        try:
            nltk.data.find(NLTK_TAGGER_RESOURCE)
        except LookupError:
            return False
        return True
    folder = NLTK_TAGGER_RESOURCE.rstrip("/")
    return any(os.path.isdir(os.path.join(root, folder)) or _zip_holds_folder(root, folder) for root in roots)


def _zip_holds_folder(root: str, folder: str) -> bool:
    """NLTK's other layout: taggers/averaged_perceptron_tagger_eng.zip holding averaged_perceptron_tagger_eng/."""
    archive = os.path.join(root, folder + ".zip")
    if not os.path.isfile(archive):
        return False
    inner = folder.rsplit("/", 1)[-1] + "/"
    try:
        with zipfile.ZipFile(archive) as opened:
            return any(name.startswith(inner) for name in opened.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(name, METHODS) from None


def resolve_engine(method: str, engine: str = "auto") -> str:
    """The engine that runs `method`: native where one exists, unless Inseq is forced."""
    spec = get_method(method)
    refused = refusal_reason(method)
    if refused is not None:
        raise MethodOptionError(f"method {method!r} can't run here: {refused}")
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
