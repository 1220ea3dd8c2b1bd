"""How exact the native engine is: float32 engine and plain float32 autograd against a float64 reference.

    .venv/bin/python bench/bench_precision.py        # SmolLM2-135M-Instruct on CPU, a few minutes

The reference is the same model copied to float64, one autograd pass per output token
(tokenlens/engine/reference.py); "float32 autograd" is that same per-step pass on the float32 model, which
is what Inseq computes. For every method and attributed function the table gives the largest difference of
one raw score (a row's entry) from the float64 one, over all output tokens and over the confident ones
(p > 0.999), where the textbook head gradient W_y - p^T W cancels. Prompts are chosen to produce confident
tokens. Writes the "Precision" section of bench/results.md and bench/precision_results.json.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from report_sections import publish, run_meta  # bench/ is on sys.path when this file runs

ROOT = Path(__file__).resolve().parent.parent
SECTION = "precision"
CONFIDENT = 0.999
#: Plain (no chat template: each is already in SmolLM2's chat format or a plain continuation), new tokens.
PROMPTS = (
    ("<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n<|im_start|>assistant\n", 6),
    ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,", 6),
)
#: (method, attributed function, options): each gradient method with Inseq's default function, and saliency
#: with the seed's (log p) too.
CASES = (
    ("saliency", "probability", {}),
    ("saliency", "logprob", {}),
    ("input_x_gradient", "probability", {}),
    ("integrated_gradients", "probability", {"n_steps": 8}),
)


@dataclass
class PrecisionRow:
    method: str
    attributed_fn: str
    rows: int
    confident_rows: int
    ours_max: float
    autograd_max: float
    ours_confident_max: float
    autograd_confident_max: float
    seconds: float


def measure(n_steps_cap: int | None) -> list[PrecisionRow]:
    from tokenlens.engine.native import attribute_native
    from tokenlens.engine.reference import per_step_scores
    from tokenlens.engine.registry import validate_options
    from tokenlens.engine.types import AttributionOutput, PromptInput
    from tokenlens.models import load_model

    loaded = load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    exact_model = copy.deepcopy(loaded.model).double()
    rows = []
    for method, attributed_fn, extra in CASES:
        given = {"attributed_fn": attributed_fn, **extra}
        if n_steps_cap is not None and "n_steps" in given:
            given["n_steps"] = min(int(given["n_steps"]), n_steps_cap)
        options = validate_options(method, given)
        started = time.perf_counter()
        ours_errors, plain_errors, probabilities = [], [], []
        for text, new_tokens in PROMPTS:
            ids = loaded.tokenizer(text).input_ids
            prompt = PromptInput("p", text, ids, [False] * len(ids), new_tokens, model_text=text)
            ours = attribute_native(loaded, [prompt], method, options)[0]
            assert isinstance(ours, AttributionOutput), ours
            exact = per_step_scores(loaded, exact_model, ids, ours.output_ids, method, options)
            plain = per_step_scores(loaded, loaded.model, ids, ours.output_ids, method, options)
            ours_errors += list(np.abs(ours.scores - exact).max(axis=1))
            plain_errors += list(np.abs(plain - exact).max(axis=1))
            probabilities += ours.token_probabilities
        confident = np.array(probabilities) > CONFIDENT
        ours_all, plain_all = np.array(ours_errors), np.array(plain_errors)
        rows.append(
            PrecisionRow(
                method=method,
                attributed_fn=attributed_fn,
                rows=len(probabilities),
                confident_rows=int(confident.sum()),
                ours_max=float(ours_all.max()),
                autograd_max=float(plain_all.max()),
                ours_confident_max=float(ours_all[confident].max()) if confident.any() else float("nan"),
                autograd_confident_max=float(plain_all[confident].max()) if confident.any() else float("nan"),
                seconds=time.perf_counter() - started,
            )
        )
        print(rows[-1], flush=True)
    return rows


def markdown(rows: list[PrecisionRow], meta: dict[str, str]) -> str:
    lines = [
        "## Precision: float32 engine vs float32 autograd, against float64",
        "",
        "Largest difference of one raw score from the float64 per-step reference (the same model in float64, "
        "one autograd pass per output token), over all output tokens and over those with p > 0.999. "
        '"float32 autograd" is that per-step pass on the float32 model: what Inseq computes. '
        f"SmolLM2-135M-Instruct, {len(PROMPTS)} prompts chosen for confident tokens. "
        f"{meta['date']}, {meta['machine']}.",
        "",
        "| method | attributed fn | tokens (p > 0.999) | engine, all | autograd, all | engine, p > 0.999 | "
        "autograd, p > 0.999 | engine closer by |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = row.autograd_confident_max / row.ours_confident_max if row.ours_confident_max > 0 else float("inf")
        lines.append(
            f"| {row.method} | {row.attributed_fn} | {row.rows} ({row.confident_rows}) | {row.ours_max:.1e} | "
            f"{row.autograd_max:.1e} | {row.ours_confident_max:.1e} | {row.autograd_confident_max:.1e} | "
            f"{ratio:.0f}x |"
        )
    lines += ["", f"Command: `.venv/bin/python bench/bench_precision.py{meta['args']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-n-steps", type=int, default=None, help="cap integrated gradients' steps (faster)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    rows = measure(args.max_n_steps)
    meta = run_meta(f" --max-n-steps {args.max_n_steps}" if args.max_n_steps else "")
    payload = {"meta": meta, "confident_above": CONFIDENT, "rows": [asdict(row) for row in rows]}
    publish(args.out_dir, SECTION, markdown(rows, meta), "precision_results.json", payload)


if __name__ == "__main__":
    main()
