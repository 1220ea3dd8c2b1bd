"""deploy/Dockerfile: a CUDA runtime base, torch for CUDA before the project, a non-root user, and an entry point
that is the real `tokenlens` console script."""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.deploy.deploy_files import (
    DEPLOY,
    DOCKERFILE,
    REPO,
    Instruction,
    compose_config,
    compose_workers,
    dockerfile_instructions,
    exec_form,
    option_value,
)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile_instructions(DOCKERFILE)


def _final(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    last_stage = instructions[-1].stage
    return [i for i in instructions if i.stage == last_stage and i.keyword == keyword]


def _build_args(instructions: list[Instruction]) -> dict[str, str]:
    values = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, value = instruction.arguments.split("=", 1)
            values[name] = value.strip('"')
    return values


def test_entrypoint_is_the_tokenlens_console_script(instructions: list[Instruction]) -> None:
    (entrypoint,) = _final(instructions, "ENTRYPOINT")
    assert exec_form(entrypoint.arguments) == ["tokenlens"]
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    scripts = re.search(r"^\[project\.scripts\]\n(.*?)(?:^\[|\Z)", pyproject, flags=re.M | re.S)
    assert scripts and re.search(r'^tokenlens = "tokenlens\.cli:main"$', scripts.group(1), flags=re.M)
    (installed,) = entry_points(group="console_scripts", name="tokenlens")
    assert installed.value == "tokenlens.cli:main"
    module_name, attribute = installed.value.split(":")
    assert callable(getattr(importlib.import_module(module_name), attribute))
    # The console script pip writes for that entry runs.
    script = Path(sys.executable).parent / "tokenlens"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "version" in result.stdout.lower()


def test_the_venv_holding_the_script_is_on_path(instructions: list[Instruction]) -> None:
    (venv,) = [shlex.split(i.arguments)[-1] for i in instructions if i.keyword == "RUN" and "-m venv" in i.arguments]
    final_env = " ".join(i.arguments for i in _final(instructions, "ENV"))
    assert re.search(rf"PATH={re.escape(venv)}/bin:\$PATH", final_env)
    assert any(
        i.keyword == "COPY" and f"--from=build {venv} {venv}" in i.arguments for i in _final(instructions, "COPY")
    )


def test_base_is_a_cuda_runtime_image(instructions: list[Instruction]) -> None:
    image = _build_args(instructions)["CUDA_IMAGE"]
    assert image.startswith("nvidia/cuda:") and "runtime" in image
    (final_from,) = _final(instructions, "FROM")
    assert final_from.arguments == "${CUDA_IMAGE}"


def test_torch_for_cuda_is_installed_before_the_project(instructions: list[Instruction]) -> None:
    runs = [i.arguments for i in instructions if i.keyword == "RUN"]
    torch_step = next(n for n, run in enumerate(runs) if "TORCH_SPEC" in run)
    project_step = next(n for n, run in enumerate(runs) if re.search(r"pip install \.(\s|$)", run))
    assert torch_step < project_step
    assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_step]
    index = _build_args(instructions)["TORCH_INDEX_URL"]
    cuda = re.search(r"cuda:(\d+)\.(\d+)", _build_args(instructions)["CUDA_IMAGE"])
    assert cuda and index.endswith(f"/cu{cuda.group(1)}{cuda.group(2)}"), "torch's CUDA build matches the base image"


def test_runs_as_a_numeric_non_root_user(instructions: list[Instruction]) -> None:
    (user,) = _final(instructions, "USER")
    uid, _, gid = user.arguments.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert any(f"--uid {uid}" in i.arguments for i in _final(instructions, "RUN"))


def test_copied_sources_exist(instructions: list[Instruction]) -> None:
    for instruction in instructions:
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from"):
            continue
        source = instruction.arguments.split()[0]
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    # The web stage runs `npm ci`, which needs the lock file.
    assert (REPO / "ui" / "web" / "package.json").is_file()
    assert (REPO / "ui" / "web" / "package-lock.json").is_file()


def test_ports_and_results_dir_match_compose(instructions: list[Instruction]) -> None:
    exposed = {port for i in _final(instructions, "EXPOSE") for port in i.arguments.split()}
    config = compose_config()
    worker_ports = {option_value(service["command"], "--metrics-port") for service in compose_workers(config).values()}
    ui_port = option_value(config["services"]["ui"]["command"], "--port")
    assert worker_ports | {ui_port} <= exposed
    final_env = " ".join(i.arguments for i in _final(instructions, "ENV"))
    results = re.search(r"TOKENLENS_RESULTS=(\S+)", final_env)
    assert results and any(
        f"chown -R 10001:10001 /cache {results.group(1).rsplit('/', 1)[0]}" in i.arguments
        for i in _final(instructions, "RUN")
    )


def _ignored(patterns: list[str], path: str) -> bool:
    """The last matching .dockerignore pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        candidates = [pattern, pattern + "/*", pattern + "/**"] if not pattern.startswith("**") else [pattern]
        if any(fnmatch.fnmatch(path, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def test_build_context_leaves_out_secrets_and_local_clutter() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "deploy/.env", "results/runs/x.json", "ui/web/node_modules/a.js"):
        assert _ignored(patterns, path), f"{path} would be sent to the Docker build"
    for path in ("pyproject.toml", "tokenlens/cli.py", "ui/web/package.json", "deploy/.env.example", "README.md"):
        assert not _ignored(patterns, path), f"{path} is needed by the build"
