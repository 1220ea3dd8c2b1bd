"""Agreement of two runs on the same prompts: per prompt, how alike two attribution matrices rank their sources.

For each output token both runs generated alike (row i depends on the outputs before it), the row's sources
(all n_in + i earlier tokens) are compared by Spearman's rank correlation of |score| (ties share their mean
rank) and by the overlap of their top-k sources; a prompt's figures are the means over its rows. Results with
different input tokens (another tokenizer or chat template) are not compared token by token, and say so.
`tokenlens.run_views.RunViewCache.agreement` reads the files and caches the per-prompt figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Top-k of the agreement view's overlap; a row with fewer sources uses them all.
AGREEMENT_TOP_K = 5
#: Bins of the agreement distribution over [-1, 1].
AGREEMENT_BINS = 20
#: The prompts listed as "where they disagree most".
DISAGREEMENT_LINKS = 20


@dataclass(frozen=True)
class PromptMatrix:
    """A decoded result's tokens and raw matrix (for agreement, which compares matrices cell by cell)."""

    input_tokens: tuple[str, ...]
    output_tokens: tuple[str, ...]
    matrix: np.ndarray


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks (what Spearman's rho needs)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    sizes = np.diff(np.append(first, len(values)))
    mean_rank = first + (sizes + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = mean_rank[group]
    return ranks


def spearman(first: np.ndarray, second: np.ndarray) -> float | None:
    """Spearman's rank correlation; None when either side is constant (it is undefined)."""
    a, b = average_ranks(first), average_ranks(second)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else None


def top_k_overlap(first: np.ndarray, second: np.ndarray, k: int) -> float:
    """|top-k of first ∩ top-k of second| / k (ties broken by position)."""
    k = min(k, len(first))
    top_first = set(np.argsort(-first, kind="mergesort")[:k].tolist())
    top_second = set(np.argsort(-second, kind="mergesort")[:k].tolist())
    return len(top_first & top_second) / k


@dataclass(frozen=True)
class PromptAgreement:
    """How two results of one prompt agree; `reason` says why nothing could be compared (then rho is None)."""

    prompt_id: str
    rows: int
    spearman: float | None
    top_k_overlap: float | None
    reason: str | None = None


def compare_prompts(prompt_id: str, first: PromptMatrix, second: PromptMatrix, k: int) -> PromptAgreement:
    """Mean per-row Spearman of |scores| and mean top-k overlap over the rows both results can compare.

    Rows are comparable while both generated the same tokens (row i depends on the outputs before it); a row's
    sources are all n_in + i columns before it. Results with different input tokens (another tokenizer) are not
    compared token by token.
    """
    if first.input_tokens != second.input_tokens:
        return PromptAgreement(prompt_id, 0, None, None, "different input tokens (another tokenizer or template)")
    same = 0
    for a, b in zip(first.output_tokens, second.output_tokens, strict=False):
        if a != b:
            break
        same += 1
    n_in = len(first.input_tokens)
    rhos, overlaps = [], []
    for i in range(same):
        width = n_in + i
        if width < 2:
            continue
        a, b = np.abs(first.matrix[i, :width]), np.abs(second.matrix[i, :width])
        rho = spearman(a, b)
        if rho is None:
            continue
        rhos.append(rho)
        overlaps.append(top_k_overlap(a, b, k))
    if not rhos:
        reason = "no output token generated alike" if same == 0 else "no comparable row (constant scores)"
        return PromptAgreement(prompt_id, 0, None, None, reason)
    return PromptAgreement(prompt_id, len(rhos), float(np.mean(rhos)), float(np.mean(overlaps)))


def agreement_view(
    run_id: str, other_run_id: str, agreements: list[PromptAgreement], only_first: int, only_second: int
) -> dict[str, Any]:
    """The distribution of per-prompt agreement, and the prompts where the runs disagree most."""
    compared = [a for a in agreements if a.spearman is not None]
    skipped = [a for a in agreements if a.spearman is None]
    rhos = np.array([a.spearman for a in compared], dtype=np.float64)
    overlaps = np.array([a.top_k_overlap for a in compared], dtype=np.float64)
    edges = np.linspace(-1.0, 1.0, AGREEMENT_BINS + 1)
    counts = np.histogram(np.clip(rhos, -1.0, 1.0), bins=edges)[0] if len(rhos) else np.zeros(AGREEMENT_BINS)
    worst = sorted(compared, key=lambda a: (a.spearman, a.prompt_id))[:DISAGREEMENT_LINKS]
    reasons: dict[str, int] = {}
    for item in skipped:
        reasons[str(item.reason)] = reasons.get(str(item.reason), 0) + 1
    return {
        "run_id": run_id,
        "other_run_id": other_run_id,
        "top_k": AGREEMENT_TOP_K,
        "compared": len(compared),
        "not_compared": reasons,
        "only_in_run": only_first,
        "only_in_other": only_second,
        "spearman": {
            "mean": float(rhos.mean()) if len(rhos) else None,
            "median": float(np.median(rhos)) if len(rhos) else None,
        },
        "top_k_overlap": {"mean": float(overlaps.mean()) if len(overlaps) else None},
        "histogram": [
            {"low": float(edges[k]), "high": float(edges[k + 1]), "count": int(counts[k])}
            for k in range(AGREEMENT_BINS)
        ],
        "disagree_most": [
            {"prompt_id": a.prompt_id, "spearman": a.spearman, "top_k_overlap": a.top_k_overlap, "rows": a.rows}
            for a in worst
        ],
    }
