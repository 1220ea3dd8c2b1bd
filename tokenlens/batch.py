"""The units of work: one prompt record, and the JSON batch task that carries a few of them.

The same `BatchTask` is the Celery task message (JSON only: ids, texts and
settings, never tensors or credentials) and what `tokenlens run` hands to the
pipeline in-process.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokenlens import defaults
from tokenlens.errors import UnsafeIdError
from tokenlens.result_codec import FORMAT_CHOICES

#: Prompt and run ids become file names in storage: keep them boring.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SAFE_ID_HELP = "1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"


def is_safe_id(value: str) -> bool:
    return bool(SAFE_ID.match(value)) and ".." not in value


def check_safe_id(label: str, value: str) -> str:
    """`value` if it is a safe id, else `UnsafeIdError` naming it as a `label` ("run id", "prompt id")."""
    if not is_safe_id(value):
        raise UnsafeIdError(f"{label} {value!r} is not a safe file name ({SAFE_ID_HELP})")
    return value


class PromptRecord(BaseModel):
    """One prompt of a prompt set."""

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str
    #: A forced continuation to attribute instead of generating one.
    target: str | None = None
    #: Overrides the run's max_new_tokens for this prompt.
    max_new_tokens: int | None = None

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_safe_id("prompt id", value)


class BatchTask(BaseModel):
    """A batch of prompts to attribute with one model and one method, and where to write them."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    run_id: str
    results_url: str
    model: str
    method: str
    engine: str = defaults.ENGINE
    method_params: dict[str, Any] = Field(default_factory=dict)
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    generation_params: dict[str, Any] = Field(default_factory=dict)
    chat_template: bool = defaults.CHAT_TEMPLATE
    #: How results are written: "auto", "json" or "compact" (`tokenlens.result_codec`).
    result_format: str = defaults.RESULT_FORMAT
    prompts: list[PromptRecord]

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
