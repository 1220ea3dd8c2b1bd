"""docs/architecture.md stays true: the files it names exist, the prompt's path is six files whose functions
exist where it says, and its import table states exactly the rules tools/check_imports.py enforces."""

from __future__ import annotations

import re

from tools.check_imports import FORBIDDEN, REPO

DOC = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
ROOMS = set(FORBIDDEN)


def _table(heading: str) -> list[list[str]]:
    section = DOC.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_every_path_the_doc_names_exists() -> None:
    named = set(re.findall(r"`((?:[\w.-]+/)+[\w.-]*)`", DOC))
    assert "producer/submit.py" in named and "tests/integration/" in named
    missing = sorted(path for path in named if not (REPO / path.split(" ")[0]).exists())
    assert missing == []


def test_the_prompt_takes_six_files_and_each_does_what_the_doc_says() -> None:
    rows = _table("## One prompt")
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    for _number, file_cell, what in rows:
        path = file_cell.strip("`")
        source = (REPO / path).read_text(encoding="utf-8")
        # The first name the row calls (`name(` or `Class.method`) is defined in that file.
        called = re.findall(r"`(?:\w+\.)?(\w+)(?:\(|`)", what)
        defined = [name for name in called if re.search(rf"^\s*(?:def|class) {name}\b", source, re.MULTILINE)]
        assert defined, f"{path}: none of {called} is defined there"


def test_the_import_table_states_the_enforced_rules() -> None:
    for room_cell, _job, allowed_cell in _table("## The rooms"):
        room = room_cell.strip("`").rstrip("/")
        allowed = set(re.findall(r"`(\w+)`", allowed_cell))
        assert allowed == ROOMS - FORBIDDEN[room] - {room}, room
