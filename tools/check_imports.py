"""Check the import rules between the project's rooms (run by `make lint`).

Each top-level folder is a room with one job (docs/architecture.md). The core stands
alone: nothing in `tokenlens/` or `storage_backends/` imports `producer`, `worker` or
`ui`; `storage_backends` imports nothing of ours; `producer` and `worker` never import
each other (they meet only through the Redis messages `tokenlens/queue.py` defines).
Every import statement counts, also ones inside functions or under TYPE_CHECKING;
module names in strings (the CLI's lazy command table) do not.

    python tools/check_imports.py          # exit 1 and one line per broken rule
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: room -> the rooms of ours it must never import.
FORBIDDEN: Mapping[str, frozenset[str]] = {
    "storage_backends": frozenset({"tokenlens", "producer", "worker", "ui"}),
    "tokenlens": frozenset({"producer", "worker", "ui"}),
    "producer": frozenset({"worker", "ui"}),
    "worker": frozenset({"producer", "ui"}),
    "ui": frozenset({"producer", "worker"}),
}


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    imported: str
    room: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.room}/ must not import {self.imported} (see docs/architecture.md)"


def imported_modules(tree: ast.AST, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in `tree`, a module named `module`."""
    package_parts = module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield node.lineno, name


def check_file(path: Path, root: Path) -> list[Violation]:
    relative = path.relative_to(root)
    room = relative.parts[0]
    forbidden = FORBIDDEN.get(room)
    if not forbidden:
        return []
    module = ".".join(relative.with_suffix("").parts)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        Violation(relative, line, name, room)
        for line, name in imported_modules(tree, module)
        if name.split(".")[0] in forbidden
    ]


def check(root: Path = REPO) -> list[Violation]:
    violations: list[Violation] = []
    for room in sorted(FORBIDDEN):
        for path in sorted((root / room).rglob("*.py")):
            if "node_modules" not in path.parts:
                violations += check_file(path, root)
    return violations


def main() -> int:
    violations = check()
    for violation in violations:
        print(violation, file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
