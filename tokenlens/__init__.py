"""TokenLens: attribute every generated token of a language model to the input tokens that drove it.

The seed project's API is importable from here::

    from tokenlens import ModelManager, TokenAnalyzer, InseqTokenAnalyzer, TokenAnalysisStorage, visualize

Names are imported lazily so that `import tokenlens` (and the CLI) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "ModelManager": "tokenlens.seed_api",
    "TokenAnalyzer": "tokenlens.seed_api",
    "InseqTokenAnalyzer": "tokenlens.seed_api",
    "TokenAnalysisStorage": "tokenlens.seed_api",
    "visualize": "tokenlens.heatmap",
    "AnalysisResult": "tokenlens.schema",
    "AnalysisMetadata": "tokenlens.schema",
    "load_model": "tokenlens.models",
    "TokenLensError": "tokenlens.errors",
    "open_run": "tokenlens.run_dataset",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tokenlens' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
