"""Heat maps of results: `visualize(result, storage=...)` draws one as a PNG in storage and inline in Jupyter.

Named heatmap, not visualize, so that importing this module never shadows the `tokenlens.visualize` function.
"""

from __future__ import annotations

import io
from typing import Any

from tokenlens.schema import AnalysisResult


def heatmap_png(
    result: AnalysisResult, *, normalized: bool = True, hide_template: bool = True, dpi: int = 110
) -> bytes:
    """Render the association matrix (rows: output tokens; columns: sources) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    data = result.data
    matrix = np.asarray(data.normalized_association if normalized else data.association_matrix, dtype=float)
    sources = list(data.input_tokens) + list(data.output_tokens)
    keep = [j for j, tok in enumerate(sources) if not (hide_template and tok.is_template)] or list(range(len(sources)))
    rows = [i for i, tok in enumerate(data.output_tokens) if not (hide_template and tok.is_template)] or list(
        range(len(data.output_tokens))
    )
    shown = matrix[np.ix_(rows, keep)] if matrix.size else np.zeros((1, 1))
    width = min(max(4.0, 0.28 * len(keep) + 2.5), 40.0)
    height = min(max(3.0, 0.28 * len(rows) + 2.0), 40.0)
    figure, axes = plt.subplots(figsize=(width, height), dpi=dpi)
    # cividis: perceptually uniform and colour-blind safe.
    image = axes.imshow(np.abs(shown), cmap="cividis", aspect="auto", interpolation="nearest")
    axes.set_xticks(range(len(keep)))
    axes.set_xticklabels([repr(sources[j].clean_token)[1:-1] for j in keep], rotation=90, fontsize=7)
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([repr(data.output_tokens[i].clean_token)[1:-1] for i in rows], fontsize=7)
    n_in_kept = sum(1 for j in keep if j < len(data.input_tokens))
    axes.axvline(n_in_kept - 0.5, color="white", linewidth=1.0)
    meta = result.metadata
    axes.set_title(f"{meta.attribution_method} · {meta.llm_id}\n{meta.prompt[:80]}", fontsize=9)
    axes.set_xlabel("source tokens (input | earlier output)")
    axes.set_ylabel("output tokens")
    figure.colorbar(image, ax=axes, fraction=0.03, label="|normalized score|" if normalized else "|score|")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def visualize(result: AnalysisResult | list[AnalysisResult], storage: Any = None, *, show: bool = True) -> list[str]:
    """Draw each result's heat map; store it as runs/<run_id>/plots/<prompt_id>.png when `storage` is given.

    In Jupyter the image is also displayed inline. Returns the storage keys written.
    """
    results = result if isinstance(result, list) else [result]
    keys = []
    for item in results:
        png = heatmap_png(item)
        if storage is not None:
            name = f"plots/{item.metadata.prompt_id or 'result'}.png"
            keys.append(storage.save_bytes(name, png, run_id=item.metadata.run_id))
        if show:
            _display_inline(png)
    return keys


def _display_inline(png: bytes) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    if get_ipython() is not None:
        display(Image(data=png))
