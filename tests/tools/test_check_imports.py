"""tools/check_imports.py: the rooms' import rules hold in this repository, and a broken rule is caught."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.check_imports import REPO, check


def write(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")


def test_the_repository_keeps_its_import_rules() -> None:
    assert check() == []
    proc = subprocess.run([sys.executable, "tools/check_imports.py"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_kind_of_broken_rule_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "tokenlens/core.py", "def lazy():\n    from producer.submit import submit_run\n")
    write(tmp_path, "tokenlens/typed.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ui.server\n")
    write(tmp_path, "storage_backends/s3.py", "from tokenlens.errors import TokenLensError\n")
    write(tmp_path, "worker/tasks.py", "import producer\n")
    write(tmp_path, "producer/cli.py", "from worker import app\n")
    write(tmp_path, "ui/http_api.py", "from ..producer import fetch\n")
    found = {(str(v.path), v.line, v.imported) for v in check(tmp_path)}
    assert found == {
        ("tokenlens/core.py", 2, "producer.submit"),
        ("tokenlens/typed.py", 3, "ui.server"),
        ("storage_backends/s3.py", 1, "tokenlens.errors"),
        ("worker/tasks.py", 1, "producer"),
        ("producer/cli.py", 1, "worker"),
        ("ui/http_api.py", 1, "producer"),
    }


def test_allowed_imports_and_command_names_in_strings_pass(tmp_path: Path) -> None:
    write(tmp_path, "tokenlens/cli.py", 'COMMANDS = {"submit": "producer.cli:submit_command"}\n')
    write(tmp_path, "producer/submit.py", "from tokenlens.spec import RunSpec\nimport storage_backends\n")
    write(tmp_path, "worker/tasks.py", "from tokenlens.queue import TASK_NAME\nfrom . import runtime\n")
    write(tmp_path, "ui/server.py", "from tokenlens.run_reader import RunReader\n")
    assert check(tmp_path) == []
