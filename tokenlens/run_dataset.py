"""A run as a dataset in Python: ``tokenlens.open_run(url)``.

::

    run = tokenlens.open_run("./results", "my-run")   # or open_run("s3://bucket/prefix/runs/my-run")
    run.prompts()                 # one dict per prompt: text, generated text, status, timings, error
    for result in run.results():  # AnalysisResult, one at a time (either result format)
        ...
    frame = run.to_pandas(level="word")   # the export's attributions table as a pandas DataFrame
    run.export("out/", level="token")     # what `tokenlens export` writes

The tables are those of `tokenlens.export` (same columns, same rows), so numbers agree between the
command, the Python API and anything that reads the Parquet files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from storage_backends import Storage, open_storage
from tokenlens.errors import RunNotFoundError
from tokenlens.export import (
    ColumnBuffer,
    ExportReport,
    ResultView,
    TokenColumns,
    attribution_columns,
    export_run,
    prompt_row,
)
from tokenlens.result_codec import ResultFormatError
from tokenlens.results import RunStore, list_run_ids
from tokenlens.schema import AnalysisResult, RunManifest
from tokenlens.words import check_level


class RunDataset:
    """One run's results under a results URL, read lazily."""

    def __init__(self, storage: Storage, run_id: str) -> None:
        self.storage = storage
        self.store = RunStore(storage, run_id)
        self.run_id = run_id
        self.manifest: RunManifest = self.store.read_manifest()

    def __repr__(self) -> str:
        return f"RunDataset({self.storage.url!r}, {self.run_id!r}, {self.manifest.prompt_count} prompts)"

    def prompt_ids(self) -> list[str]:
        """The run's prompt ids in order (those with a result but not in the prompt set last)."""
        known = self.store.prompt_ids(self.manifest)
        stored = self.store.ids("results") | self.store.ids("errors")
        return known + sorted(stored - set(known))

    def results(self, *, skip_unreadable: bool = False) -> Iterator[AnalysisResult]:
        """Every stored result, one at a time; an unreadable file raises `ResultFormatError` (or is skipped)."""
        have = self.store.ids("results")
        for prompt_id in self.prompt_ids():
            if prompt_id not in have:
                continue
            try:
                yield self.store.read_result(prompt_id)
            except ResultFormatError:
                if not skip_unreadable:
                    raise

    def prompts(self) -> list[dict[str, Any]]:
        """One row per prompt, as in the export's prompts table."""
        have, failed = self.store.ids("results"), self.store.ids("errors")
        texts = {pid: record.prompt for pid, record in self.store.read_prompts().items()}
        rows = []
        for prompt_id in self.prompt_ids():
            view = error = None
            if prompt_id in have:
                view = ResultView.of_result(self.store.read_result(prompt_id))
            elif prompt_id in failed:
                error = self.store.read_error(prompt_id).model_dump()
            rows.append(prompt_row(self.run_id, prompt_id, texts.get(prompt_id), view, error))
        return rows

    def to_arrow(self, level: str = "token") -> Any:
        """The attributions table (`tokenlens.export`) at `level` as one pyarrow Table, in memory."""
        check_level(level)
        buffer = ColumnBuffer()
        for result in self.results():
            columns = attribution_columns(ResultView.of_result(result), level, self.run_id)
            buffer.add(columns, len(columns["score"]))
        if not buffer.chunks:  # no results: the table's columns, without rows
            no_tokens = TokenColumns.of_tokens([])
            buffer.add(attribution_columns(ResultView("", {}, no_tokens, no_tokens, np.zeros((0, 0))), level, ""), 0)
        return buffer.table()

    def to_pandas(self, level: str = "token") -> Any:
        """The attributions table at `level` as a pandas DataFrame (string columns as plain strings)."""
        table = self.to_arrow(level)
        import pyarrow as pa

        plain = pa.schema(
            [pa.field(f.name, pa.string()) if pa.types.is_dictionary(f.type) else f for f in table.schema]
        )
        return table.cast(plain).to_pandas()

    def export(self, dest: str, *, export_format: str = "parquet", level: str = "token") -> ExportReport:
        """Write the run's tables under `dest`, as `tokenlens export` does."""
        return export_run(self.storage.url, self.run_id, dest, export_format=export_format, level=level)


def open_run(url: str, run_id: str | None = None) -> RunDataset:
    """A run under a results URL: `run_id` given, or the URL ends in ``runs/<run_id>``, or it holds one run."""
    if run_id is None:
        parts = url.rstrip("/").rsplit("/", 2)
        if len(parts) == 3 and parts[1] == "runs":
            url, run_id = parts[0] or "/", parts[2]
    storage = open_storage(url)
    if run_id is None:
        runs = sorted(list_run_ids(storage))
        if len(runs) != 1:
            listed = ", ".join(runs[:10]) or "none"
            raise RunNotFoundError(
                f"{url} holds {len(runs)} runs ({listed}); pass the run id: open_run({url!r}, 'RUN_ID')"
            )
        run_id = runs[0]
    return RunDataset(storage, run_id)
