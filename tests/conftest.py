"""Shared test set-up. Fixture modules live in tests/fixtures/ and are all loaded here."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach the Hugging Face hub: no machine here has network access.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if not path.name.startswith("_")
)
