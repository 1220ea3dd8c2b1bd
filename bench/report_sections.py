"""bench/results.md is shared by several benchmarks: each owns one marked section and rewrites only that.

A section is the text between ``<!-- section:NAME -->`` and ``<!-- /section:NAME -->``. Text outside any
section (the engine benchmark's report) belongs to bench_engine.py, which keeps the sections when it rewrites.
"""

from __future__ import annotations

import re
from pathlib import Path


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- section:{re.escape(name)} -->\n.*?<!-- /section:{re.escape(name)} -->\n?", re.DOTALL)


def replace_section(path: Path, name: str, text: str) -> None:
    """Put `text` into section `name` of `path`: replaced where it is, else appended."""
    block = f"<!-- section:{name} -->\n{text.rstrip()}\n<!-- /section:{name} -->\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = _pattern(name)
    new = pattern.sub(lambda _match: block, old, count=1) if pattern.search(old) else f"{old.rstrip()}\n\n{block}"
    path.write_text(new.lstrip("\n"), encoding="utf-8")


ANY_SECTION = re.compile(r"<!-- section:([\w.-]+) -->\n.*?<!-- /section:\1 -->\n?", re.DOTALL)


def sections(text: str) -> str:
    """Every marked section in `text`, in order (what a rewrite of the rest must keep)."""
    return "".join(match.group(0) for match in ANY_SECTION.finditer(text))
