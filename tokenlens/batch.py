"""The units of work: one prompt record, and the JSON batch task that carries a few of them.

The same `BatchTask` is the Celery task message (JSON only: ids, texts and
settings, never tensors or credentials) and what `tokenlens run` hands to the
pipeline in-process.

Anyone who can write to the broker can forge a batch, so a batch is data checked
at the door: every field has a type and a bound, unknown fields are refused at
every level, and generation options come from an allow-list of plain values
(`GENERATION_OPTIONS`). Nothing a batch carries can name code to run or a file to
load: options such as `custom_generate`, `trust_remote_code` or a logits processor
are simply not in the list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tokenlens import defaults
from tokenlens.errors import TokenLensError, UnsafeIdError
from tokenlens.result_codec import FORMAT_CHOICES

#: Prompt and run ids become file names in storage: keep them boring.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SAFE_ID_HELP = "1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"

#: The longest generation a batch may ask for (a long-context model's whole window).
MAX_NEW_TOKENS_LIMIT = 131_072
#: The most prompts one queued batch may carry (`tokenlens submit --batch-size`).
MAX_BATCH_PROMPTS = 10_000
#: The longest prompt or target text, in characters (a model's context is far shorter).
MAX_TEXT_CHARS = 1_000_000
#: The longest model name, method name or results URL.
MAX_NAME_CHARS = 4096


def is_safe_id(value: str) -> bool:
    return bool(SAFE_ID.match(value)) and ".." not in value


def check_safe_id(label: str, value: str) -> str:
    """`value` if it is a safe id, else `UnsafeIdError` naming it as a `label` ("run id", "prompt id")."""
    if not is_safe_id(value):
        raise UnsafeIdError(f"{label} {value!r} is not a safe file name ({SAFE_ID_HELP})")
    return value


class GenerationOptionError(TokenLensError):
    """A generation option that is not on the allow-list, or whose value is out of bounds."""


@dataclass(frozen=True)
class GenerationOption:
    """One allowed generation option: its type and the closed or open bounds of its value."""

    kind: type
    help: str
    minimum: float | None = None
    maximum: float | None = None
    #: The minimum itself is not allowed (temperature 0 would divide by zero).
    exclusive_minimum: bool = False

    def check(self, name: str, value: Any) -> Any:
        """`value` if it has this option's type and bounds, else `GenerationOptionError` naming it."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise GenerationOptionError(f"generation option {name} takes true or false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GenerationOptionError(f"generation option {name} takes a number ({self.help}), got {value!r}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise GenerationOptionError(f"generation option {name} takes a whole number, got {value!r}")
            value = int(value)
        elif not math.isfinite(value):
            raise GenerationOptionError(f"generation option {name} must be a finite number, got {value!r}")
        low_ok = self.minimum is None or (value > self.minimum if self.exclusive_minimum else value >= self.minimum)
        high_ok = self.maximum is None or value <= self.maximum
        if not (low_ok and high_ok):
            raise GenerationOptionError(f"generation option {name}={value!r} is out of range ({self.help})")
        return float(value) if self.kind is float else value


#: The generation options a run may set, each a plain value with bounds. Anything else is refused.
GENERATION_OPTIONS: Mapping[str, GenerationOption] = {
    "max_new_tokens": GenerationOption(int, f"1 to {MAX_NEW_TOKENS_LIMIT}", 1, MAX_NEW_TOKENS_LIMIT),
    "min_new_tokens": GenerationOption(int, f"0 to {MAX_NEW_TOKENS_LIMIT}", 0, MAX_NEW_TOKENS_LIMIT),
    "do_sample": GenerationOption(bool, "true or false"),
    "temperature": GenerationOption(float, "above 0, at most 100", 0.0, 100.0, exclusive_minimum=True),
    "top_p": GenerationOption(float, "above 0, at most 1", 0.0, 1.0, exclusive_minimum=True),
    "top_k": GenerationOption(int, "0 to 100000", 0, 100_000),
    "typical_p": GenerationOption(float, "above 0, at most 1", 0.0, 1.0, exclusive_minimum=True),
    "repetition_penalty": GenerationOption(float, "above 0, at most 100", 0.0, 100.0, exclusive_minimum=True),
    "no_repeat_ngram_size": GenerationOption(int, "0 to 1024", 0, 1024),
    "num_beams": GenerationOption(int, "1 to 64", 1, 64),
    "length_penalty": GenerationOption(float, "-100 to 100", -100.0, 100.0),
}


def validate_generation_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` checked against `GENERATION_OPTIONS` (None values dropped); `GenerationOptionError` otherwise."""
    if not isinstance(params, Mapping):
        raise GenerationOptionError(f"generation options must be a mapping of name to value, got {params!r}")
    checked: dict[str, Any] = {}
    for name, value in params.items():
        option = GENERATION_OPTIONS.get(name) if isinstance(name, str) else None
        if option is None:
            raise GenerationOptionError(
                f"generation option {name!r} is not allowed; allowed: {', '.join(sorted(GENERATION_OPTIONS))}"
            )
        if value is not None:
            checked[name] = option.check(name, value)
    return checked


#: A method option's value as a message may carry it: a plain scalar or a list of integers, nothing nested.
MethodOptionValue = Union[bool, int, float, str, list[int], None]  # noqa: UP007 (pydantic needs the runtime union)


class PromptRecord(BaseModel):
    """One prompt of a prompt set."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str
    prompt: str = Field(max_length=MAX_TEXT_CHARS)
    #: A forced continuation to attribute instead of generating one.
    target: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    #: Overrides the run's max_new_tokens for this prompt.
    max_new_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    #: The alternative continuation a contrastive attributed function (contrast_prob, contrast_logit)
    #: differentiates, token by token against the output ("why Paris rather than Lyon").
    contrast_target: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_safe_id("prompt id", value)


class BatchTask(BaseModel):
    """A batch of prompts to attribute with one model and one method, and where to write them.

    The method, engine and method options are checked against the registry where the batch
    runs (`tokenlens.pipeline`), so a batch for a method this worker doesn't know becomes an
    error record with that reason rather than a dropped message.
    """

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    run_id: str
    results_url: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    model: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    method: str = Field(min_length=1, max_length=128)
    engine: str = Field(default=defaults.ENGINE, max_length=32)
    method_params: dict[str, MethodOptionValue] = Field(default_factory=dict, max_length=64)
    max_new_tokens: int = Field(default=defaults.MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    generation_params: dict[str, Any] = Field(default_factory=dict)
    chat_template: bool = defaults.CHAT_TEMPLATE
    #: How results are written: "auto", "json" or "compact" (`tokenlens.result_codec`).
    result_format: str = Field(default=defaults.RESULT_FORMAT, max_length=16)
    prompts: list[PromptRecord] = Field(min_length=1, max_length=MAX_BATCH_PROMPTS)

    @field_validator("result_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMAT_CHOICES:
            raise ValueError(f"result_format {value!r} is not one of {', '.join(FORMAT_CHOICES)}")
        return value

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str) -> str:
        return check_safe_id("run id", value)

    @field_validator("generation_params")
    @classmethod
    def _allowed_generation_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            return validate_generation_params(value)
        except GenerationOptionError as exc:
            raise ValueError(str(exc)) from None


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """A pydantic error as one line: the first few problems, each with where it is (``prompts.0.id: ...``)."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "message"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
