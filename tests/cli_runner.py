"""Run the real `tokenlens` command line in this process and capture what it prints (fast: no new interpreter)."""

from __future__ import annotations

import pytest

from tokenlens.cli import main


def run_tokenlens(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `tokenlens ARGS`."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
