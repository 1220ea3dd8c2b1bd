"""What a method's options are: their types, defaults and checks, and the options several methods share.

Kept apart from the registry so that a native method (engine/methods.py) can declare its own options next to
its behaviour, and the registry (engine/registry.py) can collect them without an import cycle. Importing this
module never imports torch or Inseq.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenlens.errors import MethodOptionError

#: What a gradient method differentiates for output token y (Inseq's step functions of the same names):
#: p(y), log p(y), the logit of y, the probability or the logit of a per-prompt contrast token instead.
ATTRIBUTED_FNS = ("probability", "logprob")
#: The attributed functions that need a `contrast_target` for every prompt.
CONTRASTIVE_FNS = ("contrast_prob", "contrast_logit")


@dataclass(frozen=True)
class OptionSpec:
    """One method option: its type, default and what it means."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None

    def coerce(self, method: str, value: Any) -> Any:
        if self.kind is list:
            if isinstance(value, str):
                value = [int(v) for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
                raise MethodOptionError(f"option {self.name} of {method} takes a list of integers, got {value!r}")
        elif self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise MethodOptionError(f"option {self.name} of {method} takes an integer, got {value!r}") from None
            if value < 1:
                raise MethodOptionError(f"option {self.name} of {method} must be at least 1, got {value}")
        elif self.kind is str and not isinstance(value, str):
            raise MethodOptionError(f"option {self.name} of {method} takes a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise MethodOptionError(
                f"option {self.name} of {method} must be one of {', '.join(map(str, self.choices))}, got {value!r}"
            )
        return value


@dataclass(frozen=True)
class MethodSpec:
    """A method name, what it does, its options, and which engines run it."""

    name: str
    summary: str
    engines: tuple[str, ...]
    options: Mapping[str, OptionSpec] = field(default_factory=dict)

    @property
    def has_native(self) -> bool:
        return "native" in self.engines


def option_table(*specs: OptionSpec) -> dict[str, OptionSpec]:
    return {spec.name: spec for spec in specs}


_ATTRIBUTED_FN_HELP = (
    "what is differentiated for each output token: its probability (Inseq's default), log-probability or logit, "
    "or the probability or logit of the prompt's contrast_target token instead"
)
ATTRIBUTED_FN = OptionSpec("attributed_fn", str, "probability", _ATTRIBUTED_FN_HELP, ATTRIBUTED_FNS)
SALIENCY_ATTRIBUTED_FN = OptionSpec(
    "attributed_fn",
    str,
    "logprob",
    f"{_ATTRIBUTED_FN_HELP}; saliency defaults to log p (the seed's), whose normalized rows equal p's",
    ATTRIBUTED_FNS,
)
N_STEPS = OptionSpec("n_steps", int, 50, "integration steps from the baseline to the input")
LAYERS = OptionSpec("layers", list, None, "attention layers to use (default: all, averaged as Inseq does)")
HEADS = OptionSpec("heads", list, None, "attention heads to use (default: all, averaged as Inseq does)")
TARGET_CHUNK = OptionSpec(
    "target_chunk", int, 16, "output tokens per backward pass; halved automatically on out-of-memory"
)
