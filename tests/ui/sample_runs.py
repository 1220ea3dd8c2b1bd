"""Synthetic but schema-valid runs for UI tests and UI development, written with the real RunStore.

The matrices are small pseudo-random numbers with one clearly strongest source per output token, so a test
can say which input a row points at. Run as a script to fill a directory for trying the UI by hand:

    .venv/bin/python -m tests.ui.sample_runs ./ui-sample-results --big 600
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

from storage_backends import Storage, open_storage
from tokenlens.batch import PromptRecord
from tokenlens.results import RunStore
from tokenlens.schema import (
    AnalysisData,
    AnalysisMetadata,
    AnalysisResult,
    ErrorRecord,
    RunManifest,
    TokenInfo,
    normalize_rows,
)

TEMPLATE_HEAD = ["<|im_start|>", "user", "\n"]
TEMPLATE_TAIL = ["<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]


@dataclass(frozen=True)
class SamplePrompt:
    prompt_id: str
    prompt: str


def _token(text: str, token_id: int, is_template: bool = False, probability: float | None = None) -> TokenInfo:
    return TokenInfo(
        token=text.replace(" ", "Ġ"),
        token_id=token_id,
        clean_token=text,
        is_template=is_template,
        probability=probability,
    )


def make_result(
    run_id: str,
    prompt_id: str,
    prompt: str,
    *,
    model: str = "sample-model",
    method: str = "saliency",
    n_out: int = 6,
    seed: int = 0,
    signed: bool = False,
) -> AnalysisResult:
    """A valid TokenLens result for `prompt`: template + prompt words as inputs, `n_out` made-up outputs.

    Output token i's strongest source is the prompt word at index (i % number of words), with raw score
    ``10 + i``; every other allowed cell is below 5 in absolute value.
    """
    rng = random.Random(f"{seed}:{run_id}:{prompt_id}")
    words = [(" " if k else "") + w for k, w in enumerate(prompt.split())] or [""]
    inputs = [_token(t, 1000 + k, is_template=True) for k, t in enumerate(TEMPLATE_HEAD)]
    inputs += [_token(w, 2000 + k) for k, w in enumerate(words)]
    inputs += [_token(t, 3000 + k, is_template=True) for k, t in enumerate(TEMPLATE_TAIL)]
    outputs = [_token(f" out{k}", 4000 + k, probability=round(rng.uniform(0.05, 0.99), 4)) for k in range(n_out)]
    n_in = len(inputs)
    raw: list[list[float]] = []
    for i in range(n_out):
        row = []
        for j in range(n_in + n_out):
            if j >= n_in + i:
                row.append(0.0)
                continue
            value = rng.uniform(0.0, 4.0)
            if signed and rng.random() < 0.3:
                value = -value
            row.append(round(value, 5))
        strongest = len(TEMPLATE_HEAD) + (i % len(words))
        row[strongest] = 10.0 + i
        raw.append(row)
    return AnalysisResult(
        metadata=AnalysisMetadata(
            llm_id=model,
            prompt=prompt,
            attribution_method=method,
            generation_params={"max_new_tokens": n_out},
            run_id=run_id,
            prompt_id=prompt_id,
            engine="native",
            timings_s={"generation": 0.1, "attribution": 0.2},
        ),
        data=AnalysisData(
            input_tokens=inputs,
            output_tokens=outputs,
            association_matrix=raw,
            normalized_association=normalize_rows(raw),
        ),
    )


def strongest_input(result: AnalysisResult, row: int) -> int:
    """The input column with the largest absolute normalized score in output row `row`."""
    values = result.data.normalized_association[row][: len(result.data.input_tokens)]
    return max(range(len(values)), key=lambda j: abs(values[j]))


def write_run(
    storage: Storage,
    run_id: str,
    prompts: list[SamplePrompt],
    *,
    model: str = "sample-model",
    method: str = "saliency",
    done: int | None = None,
    failed: set[str] | frozenset[str] = frozenset(),
    created_at: str = "2026-11-27T12:00:00Z",
    n_out: int = 6,
    with_inseq: bool = False,
) -> RunStore:
    """A run whose first `done` prompts (default: all not in `failed`) have results; `failed` have errors."""
    store = RunStore(storage, run_id)
    store.write_prompts([PromptRecord(id=p.prompt_id, prompt=p.prompt) for p in prompts])
    store.write_manifest(
        RunManifest(
            run_id=run_id,
            model=model,
            method=method,
            engine="native",
            prompt_count=len(prompts),
            prompt_ids=[p.prompt_id for p in prompts],
            created_at=created_at,
            source="prompts.jsonl",
        )
    )
    candidates = [p for p in prompts if p.prompt_id not in failed]
    for sample in candidates[: len(candidates) if done is None else done]:
        result = make_result(run_id, sample.prompt_id, sample.prompt, model=model, method=method, n_out=n_out)
        store.write_result(result)
        if with_inseq:
            store.write_inseq(sample.prompt_id, '{"sequence_attributions": [], "step_scores": []}')
    for sample in prompts:
        if sample.prompt_id in failed:
            store.write_error(
                ErrorRecord(
                    run_id=run_id,
                    prompt_id=sample.prompt_id,
                    prompt=sample.prompt,
                    error_type="PromptTooLongError",
                    message=f"prompt {sample.prompt_id} is longer than the model's context window",
                    attempts=3,
                )
            )
    return store


def write_legacy_manifest(store: RunStore, manifest: RunManifest) -> None:
    """run.json as runs written before the prompt id list moved to prompts.jsonl kept it: with `prompt_ids`."""
    store.storage.put(store.manifest_key(), manifest.model_dump_json(indent=2).encode())


def write_big_result(storage: Storage, run_id: str, n_words: int, n_out: int) -> AnalysisResult:
    """A one-prompt run with a long prompt, for checking that the UI stays usable at 500+ tokens."""
    prompt = " ".join(f"word{k}" for k in range(n_words))
    store = RunStore(storage, run_id)
    store.write_prompts([PromptRecord(id="long", prompt=prompt)])
    store.write_manifest(RunManifest(run_id=run_id, model="sample-model", method="saliency", prompt_count=1))
    result = make_result(run_id, "long", prompt, n_out=n_out, signed=True)
    store.write_result(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_url")
    parser.add_argument("--big", type=int, default=0, help="also write a run with this many input words")
    args = parser.parse_args()
    storage = open_storage(args.results_url)
    prompts = [
        SamplePrompt("p1", "The quick brown fox jumps over the lazy dog"),
        SamplePrompt("p2", "Paris is the capital of"),
        SamplePrompt("p3", "Water boils at one hundred degrees"),
        SamplePrompt("p4", "This prompt is far too long for the model"),
    ]
    write_run(storage, "demo-saliency", prompts, failed={"p4"}, created_at="2026-11-27T12:00:00Z")
    write_run(storage, "demo-ixg", prompts, method="input_x_gradient", created_at="2026-11-27T12:05:00Z")
    write_run(storage, "demo-live", prompts, done=1, created_at="2026-11-27T12:10:00Z")
    if args.big:
        write_big_result(storage, "demo-big", args.big, n_out=max(args.big // 4, 8))
    print(f"sample runs written to {storage.url}")


if __name__ == "__main__":
    main()
