"""Every error TokenLens raises on purpose, under one base, each with a message a user can act on."""

from __future__ import annotations

from collections.abc import Iterable


class TokenLensError(Exception):
    """Base of all TokenLens errors. The CLI prints the message and exits non-zero."""


class ConfigError(TokenLensError):
    """A configuration value (an environment variable or a flag) that can't be used; the message names it."""


class UnsafeIdError(TokenLensError, ValueError):
    """A run or prompt id that could not be used as a file name (and so could escape its run's folder)."""


class PromptSetError(TokenLensError):
    """A prompt set that can't be read. The message names the file and line."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        location = f"{path}:{line}" if line is not None else path
        super().__init__(f"{location}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class UnknownMethodError(TokenLensError):
    """An attribution method name no engine knows; the message lists the valid ones."""

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        choices = ", ".join(sorted(valid))
        super().__init__(f"unknown attribution method {name!r}; choose one of: {choices}")
        self.name = name


class MethodOptionError(TokenLensError):
    """Method options that don't fit the method."""


class ModelLoadError(TokenLensError):
    """A model that can't be found, downloaded or loaded."""


class UnknownModelAliasError(ModelLoadError):
    """A short model name that is not a known alias."""


class PromptTooLongError(TokenLensError):
    """A prompt (plus its generation) that exceeds the model's context window."""


class ResultValidationError(TokenLensError):
    """An attribution result that breaks the TokenLens JSON contract."""


class RunNotFoundError(TokenLensError):
    """A run id with no run.json under the results URL."""


class RunUnreadableError(TokenLensError):
    """A run whose run.json exists but can't be read (corrupt, or written by something else)."""
