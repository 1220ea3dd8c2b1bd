"""The in-process run loop behind `tokenlens run`: a run's batches through the shared pipeline, no Redis.

The same `process_batch` the workers call does the work; this loop only cuts the
prompts into batches (`tokenlens.spec.build_batches`), shows progress, and gives a
failed prompt another try until it has had `max_attempts`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from storage_backends import Storage
from tokenlens.batch import PromptRecord
from tokenlens.models import LoadedModel
from tokenlens.pipeline import BatchReport, engine_batch_size_for, process_batch
from tokenlens.spec import RunSpec, build_batches


def run_embedded(
    loaded: LoadedModel,
    spec: RunSpec,
    records: Sequence[PromptRecord],
    *,
    storage: Storage,
    max_attempts: int,
    progress: bool = True,
) -> BatchReport:
    """Attribute `records` in this process and store the results; a failing prompt is retried up to `max_attempts`.

    `spec.batch_size` prompts go to the engine at once (default: the engine's own batch size); retries run alone.
    """
    from tqdm import tqdm

    size = spec.batch_size or engine_batch_size_for(spec.resolved_engine, loaded.device)
    total = BatchReport()
    started = time.perf_counter()
    attempts: dict[str, int] = {}
    with tqdm(total=len(records), unit="prompt", desc="attributing", disable=not progress, file=sys.stderr) as bar:

        def settle(_prompt_id: str, outcome: str) -> None:
            if outcome != "retry":
                bar.update(1)

        pending = list(records)
        round_size = size
        while pending:
            for record in pending:
                attempts[record.id] = attempts.get(record.id, 0) + 1
            retry_ids: set[str] = set()
            for task in build_batches(spec, pending, round_size):
                report = process_batch(
                    loaded, task, storage=storage, attempts=attempts, max_attempts=max_attempts,
                    engine_batch_size=round_size, on_prompt_finished=settle,
                )  # fmt: skip
                retry_ids.update(report.retry)
                report.retry = []  # retried below; only the final outcome counts
                total.merge(report)
            pending = [r for r in pending if r.id in retry_ids]
            # A prompt tried before runs alone, as on workers: its failure is then its own, and one that
            # fails the same way every time is recorded at once (tokenlens.pipeline.DETERMINISTIC_ERRORS).
            round_size = 1
    for prompt_id in total.done + total.skipped:
        total.reasons.pop(prompt_id, None)
    total.timings_s["total"] = time.perf_counter() - started
    return total
