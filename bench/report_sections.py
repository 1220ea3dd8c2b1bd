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


def run_meta(args: str) -> dict[str, str]:
    """When and where a benchmark ran, and the arguments it ran with, for its report."""
    import platform
    from datetime import datetime

    return {
        "args": args,
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
    }


def publish(out_dir: Path, name: str, text: str, json_name: str, payload: dict[str, object]) -> None:
    """Write a benchmark's section of results.md and its JSON file, and print the section."""
    import json

    replace_section(out_dir / "results.md", name, text)
    (out_dir / json_name).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(text)
