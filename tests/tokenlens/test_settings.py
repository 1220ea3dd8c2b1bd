"""Settings: TOKENLENS_* variables read in one place, defaults from tokenlens.defaults, bad values as one line."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenlens import defaults
from tokenlens.errors import ConfigError, TokenLensError
from tokenlens.settings import ENV_VARS, Settings

REPO = Path(__file__).resolve().parents[2]


def test_unset_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({"XDG_CACHE_HOME": "/cache"})
    assert settings.results_url == defaults.RESULTS_URL
    assert settings.broker_url == defaults.BROKER_URL
    assert settings.lease_timeout_s == defaults.LEASE_TIMEOUT_S
    assert settings.max_attempts == defaults.MAX_ATTEMPTS
    assert settings.batch_time_limit_s == defaults.BATCH_TIME_LIMIT_S
    assert settings.cache_dir == Path("/cache") / defaults.CACHE_SUBDIR
    assert (settings.worker_model, settings.worker_gpu, settings.metrics_port) == (None, None, None)
    assert settings.test_crash_prompt_ids == frozenset()


def test_every_variable_sets_its_field_and_flags_win() -> None:
    env = {
        "TOKENLENS_RESULTS": "s3://bucket/prefix",
        "TOKENLENS_BROKER_URL": "redis://queue:6379/1",
        "TOKENLENS_LEASE_TIMEOUT": "30",
        "TOKENLENS_MAX_ATTEMPTS": "5",
        "TOKENLENS_BATCH_TIME_LIMIT": "90.5",
        "TOKENLENS_CACHE_DIR": "/models",
        "TOKENLENS_MODEL": "org/model",
        "TOKENLENS_GPU": "1",
        "TOKENLENS_DEVICE": "cuda",
        "TOKENLENS_DTYPE": "bfloat16",
        "TOKENLENS_METRICS_PORT": "9801",
        "TOKENLENS_METRICS_HOST": "0.0.0.0",
        "TOKENLENS_QUEUE_KEY": "k" * 40 + "\n",
        "TOKENLENS_TEST_CRASH_PROMPT_IDS": "p1,,p2",
        "TOKENLENS_TEST_KILL_DURING_WRITE": "p3",
    }
    assert set(env) == set(ENV_VARS.values())
    settings = Settings.from_env(env, broker_url="redis://flag:6379/0", results_url=None)
    assert settings.results_url == "s3://bucket/prefix"
    assert settings.broker_url == "redis://flag:6379/0"  # the flag wins; None means "not given"
    assert (settings.lease_timeout_s, settings.max_attempts, settings.batch_time_limit_s) == (30, 5, 90.5)
    assert settings.cache_dir == Path("/models")
    assert (settings.worker_model, settings.worker_gpu, settings.worker_device, settings.worker_dtype) == (
        "org/model",
        (1,),
        "cuda",
        "bfloat16",
    )
    assert settings.metrics_port == 9801
    assert settings.metrics_host == "0.0.0.0"
    assert settings.queue_key == "k" * 40  # a key file's trailing newline is not part of the key
    assert "k" * 40 not in repr(settings)  # a secret never shows in a repr (logs, tracebacks)
    assert settings.test_crash_prompt_ids == frozenset({"p1", "p2"})
    assert settings.test_kill_during_write == "p3"
    assert Settings.from_env({"TOKENLENS_BATCH_TIME_LIMIT": "0"}).batch_time_limit_s == defaults.BATCH_TIME_LIMIT_S


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TOKENLENS_MAX_ATTEMPTS", "three", "a whole number at least 1"),
        ("TOKENLENS_MAX_ATTEMPTS", "0", "a whole number at least 1"),
        ("TOKENLENS_LEASE_TIMEOUT", "10m", "a whole number at least 1"),
        ("TOKENLENS_BATCH_TIME_LIMIT", "an hour", "a number of seconds"),
        ("TOKENLENS_BATCH_TIME_LIMIT", "nan", "a finite number of seconds"),
        ("TOKENLENS_GPU", "-1", "a whole number at least 0"),
        ("TOKENLENS_GPU", "0,0", "listed once"),
        ("TOKENLENS_GPU", "0,", "N or N,M,..."),
        ("TOKENLENS_METRICS_PORT", "70000", "a whole number from 1 to 65535"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert isinstance(caught.value, TokenLensError)
    assert f"{variable}={value!r}" in message and expected in message and "\n" not in message


def test_an_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="no field"):
        Settings.from_env({}, result_url="typo")


@pytest.mark.parametrize("command", [["status", "some-run"], ["runs"], ["worker", "--model", "m"]])
def test_the_cli_prints_a_bad_environment_value_as_one_line(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "TOKENLENS_MAX_ATTEMPTS": "lots", "TOKENLENS_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "tokenlens", *command], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: environment variable TOKENLENS_MAX_ATTEMPTS='lots' must be a whole number at least 1; "
                     "fix it or unset TOKENLENS_MAX_ATTEMPTS"]  # fmt: skip


def _reads_tokenlens_env(tree: ast.AST) -> list[int]:
    """Lines that read os.environ / os.getenv with a literal TOKENLENS_* name."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("TOKENLENS_"):
            parent_calls = [
                n
                for n in ast.walk(tree)
                if isinstance(n, ast.Call | ast.Subscript) and node in list(ast.walk(n)) and "environ" in ast.unparse(n)
            ]
            if parent_calls:
                lines.append(node.lineno)
    return lines


def test_settings_is_the_only_module_that_reads_tokenlens_variables() -> None:
    offenders = []
    for room in ("tokenlens", "producer", "worker", "ui", "storage_backends"):
        for path in sorted((REPO / room).rglob("*.py")):
            if path == REPO / "tokenlens" / "settings.py":
                continue
            lines = _reads_tokenlens_env(ast.parse(path.read_text(encoding="utf-8")))
            offenders += [f"{path.relative_to(REPO)}:{line}" for line in lines]
    assert offenders == [], f"read TOKENLENS_* through Settings.from_env() instead: {offenders}"
    # The check itself sees a read when there is one.
    assert _reads_tokenlens_env(ast.parse('import os\nos.environ.get("TOKENLENS_X")')) == [2]


def test_a_worker_may_pin_several_gpus() -> None:
    assert Settings.from_env({"TOKENLENS_GPU": "2, 3"}).worker_gpu == (2, 3)
