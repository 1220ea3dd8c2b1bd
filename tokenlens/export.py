"""A run as tables: `tokenlens export` and `tokenlens.open_run`, streaming, in bounded memory.

Two tables, each a folder of part files that DuckDB (``read_parquet('DEST/attributions/*.parquet')``),
pandas (``read_parquet('DEST/attributions')``) and Polars (``scan_parquet('DEST/attributions/*.parquet')``)
read directly:

``attributions/``: one row per (prompt, output position, source position) that the output can depend on
(every prompt source, and the generated sources before it): ``run_id``, ``prompt_id``, ``model``,
``method``, ``level``, ``output_position``, ``output_token``, ``output_clean_token``,
``output_is_template``, ``output_probability``, ``source_position`` (the matrix column: prompt sources
first, then generated ones), ``source_kind`` (``prompt`` / ``generated``), ``source_token``,
``source_clean_token``, ``source_is_template``, ``score`` (raw) and ``normalized_score`` (the row over its
largest absolute value). At the word or sentence level (`tokenlens.words`, sum aggregation) positions
number groups, tokens are the groups' texts and an output group's probability is the product of its
tokens' probabilities.

``prompts/``: one row per prompt of the run: ``prompt``, ``generated_text``, ``status`` (done / error /
pending), token counts, ``timings_s`` (JSON of seconds per phase), ``error_type`` and ``error_message``.

Results are read one at a time (either result format, through `tokenlens.result_codec`) and written in
row groups, so memory stays bounded by `ROWS_PER_GROUP`, whatever the run's size. The prompts are exported
in slices of `PROMPTS_PER_SLICE`, each into its own part files (``part-<slice>-<part>``, a new part every
`ROWS_PER_PART` rows), by one process or by ``jobs`` processes at once; an ``s3://`` destination receives
each finished part through storage_backends.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage_backends import Storage, open_storage
from tokenlens.errors import TokenLensError
from tokenlens.result_codec import (
    PACKED_ENCODING,
    ResultFormatError,
    load_document,
    unpack_matrix,
    upgrade_document,
)
from tokenlens.results import RunStore
from tokenlens.schema import AnalysisResult
from tokenlens.words import TokenGroup, TokenLike, check_level, group_tokens

EXPORT_FORMATS = ("parquet", "csv")
TABLES = ("attributions", "prompts")
#: Rows buffered before a row group is written: what bounds the export's memory.
ROWS_PER_GROUP = 1_000_000
#: Rows per part file; a part is uploaded whole to an object store.
ROWS_PER_PART = 8_000_000
#: Prompts per slice: each slice is exported (by one process) into part files of its own.
PROMPTS_PER_SLICE = 2_000


class ExportError(TokenLensError):
    """An export that can't be done (unknown format or level, missing pyarrow): the message says the fix."""


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise ExportError("export needs pyarrow; install it with `pip install pyarrow`") from None
    return pyarrow


# --- one result as rows --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultView:
    """What the export needs of one result, read without building the pydantic model (fast on big runs)."""

    prompt_id: str
    metadata: dict[str, Any]
    input_tokens: Sequence[TokenLike]
    output_tokens: Sequence[TokenLike]
    matrix: np.ndarray

    @classmethod
    def of(cls, raw: bytes, source: str) -> ResultView:
        document = load_document(raw, source)
        if document["metadata"].get("tokenlens_format"):
            # A current TokenLens file: its matrix is already in layout, so it is read as it is stored.
            data, metadata = document["data"], document["metadata"]
            if not isinstance(data.get("input_tokens"), list) or not isinstance(data.get("output_tokens"), list):
                raise ResultFormatError(f"{source}: data.input_tokens and data.output_tokens must be lists")
            stored = data.get("association_matrix")
            if isinstance(stored, dict) and stored.get("encoding") == PACKED_ENCODING:
                matrix = unpack_matrix(stored, source).astype(np.float64)
            else:
                try:
                    matrix = np.asarray(stored, dtype=np.float64)
                except (TypeError, ValueError):
                    raise ResultFormatError(f"{source}: data.association_matrix is not a matrix of numbers") from None
            if not np.isfinite(matrix).all():
                raise ResultFormatError(f"{source}: data.association_matrix holds NaN or Infinity")
        else:  # older revisions and seed files: brought to the current layout first
            document = upgrade_document(document, source)
            data, metadata = document["data"], document["metadata"]
            matrix = np.asarray(data["association_matrix"], dtype=np.float64)
        inputs = [_light_token(token, source, "input", index) for index, token in enumerate(data["input_tokens"])]
        outputs = [_light_token(token, source, "output", index) for index, token in enumerate(data["output_tokens"])]
        shape = (len(outputs), len(inputs) + len(outputs))
        if matrix.size == 0:
            matrix = np.zeros(shape)
        if matrix.shape != shape:
            raise ResultFormatError(f"{source}: association_matrix is {matrix.shape}, expected {shape}")
        return cls(str(metadata.get("prompt_id") or ""), metadata, inputs, outputs, matrix)

    @classmethod
    def of_result(cls, result: AnalysisResult) -> ResultView:
        data = result.data
        n_in, n_out = len(data.input_tokens), len(data.output_tokens)
        matrix = np.asarray(data.association_matrix, dtype=np.float64).reshape(n_out, n_in + n_out)
        metadata = result.metadata.model_dump(mode="json")
        return cls(str(result.metadata.prompt_id or ""), metadata, data.input_tokens, data.output_tokens, matrix)


@dataclass(frozen=True, slots=True)
class ExportToken:
    """What the export reads of a token entry (a pydantic model per token costs more than the rest of a row)."""

    token: str
    clean_token: str
    is_template: bool
    probability: float | None
    span: list[int] | None


def _light_token(token: Any, source: str, kind: str, index: int) -> ExportToken:
    """A token entry checked for what the export reads."""
    if not (
        isinstance(token, dict) and isinstance(token.get("token"), str) and isinstance(token.get("clean_token"), str)
    ):
        raise ResultFormatError(f"{source}: {kind} token {index} needs string fields token and clean_token")
    probability = token.get("probability")
    if probability is not None and (isinstance(probability, bool) or not isinstance(probability, int | float)):
        raise ResultFormatError(f"{source}: {kind} token {index} has a probability that is not a number")
    span = token.get("span")
    return ExportToken(
        token["token"], token["clean_token"], token.get("is_template") is True, probability,
        span if isinstance(span, list) else None,
    )  # fmt: skip


def _groups(view: ResultView, level: str) -> tuple[list[TokenGroup], list[TokenGroup]]:
    generated = view.metadata.get("generated_text")
    return (
        group_tokens(view.input_tokens, view.metadata.get("prompt"), level),
        group_tokens(view.output_tokens, generated if isinstance(generated, str) else None, level),
    )


def _sum_groups(matrix: np.ndarray, groups: list[tuple[int, ...]], axis: int) -> np.ndarray:
    # np.add.reduceat sums consecutive runs: groups are consecutive token ranges in order.
    if not groups:
        shape = list(matrix.shape)
        shape[axis] = 0
        return np.zeros(shape)
    return np.add.reduceat(matrix, [group[0] for group in groups], axis=axis)


@dataclass(frozen=True)
class DictColumn:
    """A string column as a dictionary and indices into it: a prompt's few tokens, not one string per row."""

    indices: np.ndarray
    values: list[str]


def _constant(value: str, count: int) -> DictColumn:
    return DictColumn(np.zeros(count, dtype=np.int32), [value])


def _picked(values: list[str], positions: np.ndarray) -> DictColumn:
    return DictColumn(positions.astype(np.int32), values)


def attribution_columns(view: ResultView, level: str, run_id: str) -> dict[str, Any]:
    """One result's rows of the attributions table, as columns (numpy arrays and `DictColumn`s)."""
    n_in = len(view.input_tokens)
    if level == "token":
        matrix = view.matrix
        source_texts = [(t.token, t.clean_token) for t in [*view.input_tokens, *view.output_tokens]]
        source_template = [t.is_template for t in [*view.input_tokens, *view.output_tokens]]
        output_texts = [(t.token, t.clean_token) for t in view.output_tokens]
        probabilities = [math.nan if t.probability is None else t.probability for t in view.output_tokens]
        n_prompt_sources = n_in
        reachable = np.arange(len(output_texts))[:, None] > np.arange(matrix.shape[1])[None, :] - n_in
    else:
        input_groups, output_groups = _groups(view, level)
        columns = [g.tokens for g in input_groups] + [tuple(n_in + i for i in g.tokens) for g in output_groups]
        matrix = _sum_groups(_sum_groups(view.matrix, columns, axis=1), [g.tokens for g in output_groups], axis=0)
        source_texts = [(g.text, g.text.strip() or g.text) for g in [*input_groups, *output_groups]]
        source_template = [g.is_template for g in [*input_groups, *output_groups]]
        output_texts = [(g.text, g.text.strip() or g.text) for g in output_groups]
        probabilities = [_group_probability(view.output_tokens, g) for g in output_groups]
        n_prompt_sources = len(input_groups)
        # A word can depend on earlier words and on itself (its later tokens on its earlier ones).
        reachable = np.arange(len(output_texts))[:, None] >= np.arange(matrix.shape[1])[None, :] - n_prompt_sources
    peaks = np.abs(matrix).max(axis=1, keepdims=True) if matrix.size else np.zeros((matrix.shape[0], 1))
    normalized = np.divide(matrix, peaks, out=np.zeros_like(matrix), where=peaks > 0)
    rows, cols = np.nonzero(reachable)
    count = len(rows)
    output_template = np.asarray([t.is_template for t in view.output_tokens], dtype=bool)
    if level != "token":
        output_template = np.asarray(source_template[n_prompt_sources:], dtype=bool)
    return {
        "run_id": _constant(run_id, count),
        "prompt_id": _constant(view.prompt_id, count),
        "model": _constant(str(view.metadata.get("llm_id", "")), count),
        "method": _constant(str(view.metadata.get("attribution_method", "")), count),
        "level": _constant(level, count),
        "output_position": rows.astype(np.int32),
        "output_token": _picked([text[0] for text in output_texts], rows),
        "output_clean_token": _picked([text[1] for text in output_texts], rows),
        "output_is_template": output_template[rows],
        "output_probability": np.asarray(probabilities, dtype=np.float32).reshape(-1)[rows],
        "source_position": cols.astype(np.int32),
        "source_kind": DictColumn((cols >= n_prompt_sources).astype(np.int32), ["prompt", "generated"]),
        "source_token": _picked([text[0] for text in source_texts], cols),
        "source_clean_token": _picked([text[1] for text in source_texts], cols),
        "source_is_template": np.asarray(source_template, dtype=bool).reshape(-1)[cols],
        "score": matrix[rows, cols].astype(np.float32),
        "normalized_score": normalized[rows, cols].astype(np.float32),
    }


def _group_probability(tokens: Sequence[TokenLike], group: TokenGroup) -> float:
    values = [tokens[i].probability for i in group.tokens]
    if any(value is None for value in values):
        return math.nan
    return float(np.prod([float(v) for v in values if v is not None]))


def prompt_row(
    run_id: str, prompt_id: str, prompt: str | None, view: ResultView | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    """One row of the prompts table."""
    metadata = view.metadata if view is not None else {}
    status = "done" if view is not None else ("error" if error is not None else "pending")
    return {
        "run_id": run_id,
        "prompt_id": prompt_id,
        "status": status,
        "prompt": metadata.get("prompt", prompt),
        "generated_text": metadata.get("generated_text")
        if view is None or metadata.get("generated_text") is not None
        else "".join(t.clean_token for t in view.output_tokens),
        "model": metadata.get("llm_id"),
        "method": metadata.get("attribution_method"),
        "engine": metadata.get("engine"),
        "device": metadata.get("device"),
        "n_input_tokens": len(view.input_tokens) if view is not None else None,
        "n_output_tokens": len(view.output_tokens) if view is not None else None,
        "timings_s": json.dumps(metadata.get("timings_s") or {}, sort_keys=True) if view is not None else None,
        "error_type": (error or {}).get("error_type"),
        "error_message": (error or {}).get("message"),
    }


# --- writing part files ----------------------------------------------------------------------------------------


class PartWriter:
    """Rows of one table in, part files out (Parquet row groups, or CSV), to a folder or an object store."""

    def __init__(self, storage: Storage, table: str, export_format: str, staging: Path, slice_index: int = 0) -> None:
        self.storage, self.table, self.format, self.staging = storage, table, export_format, staging
        self.slice_index = slice_index
        self.buffer: dict[str, list[Any]] = {}
        self.buffered_rows = 0
        self.part_rows = 0
        self.part_index = 0
        self.writer: Any = None
        self.path: Path | None = None
        self.keys: list[str] = []
        self.rows = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"export-{table}")
        self.pending: Future[None] | None = None

    def add(self, columns: dict[str, Any], count: int) -> None:
        for name, values in columns.items():
            self.buffer.setdefault(name, []).append(values)
        self.buffered_rows += count
        if self.buffered_rows >= ROWS_PER_GROUP:
            self.flush()

    def add_row(self, row: dict[str, Any]) -> None:
        self.add({name: [value] for name, value in row.items()}, 1)

    def _batch(self) -> Any:
        return columns_table(self.buffer, self.format)

    def flush(self) -> None:
        if not self.buffered_rows:
            return
        table = self._batch()
        self._wait()
        if self.writer is None:
            self._open(table.schema)
        # Written on a thread (pyarrow lets go of the GIL) while the next rows are read; one write at a time,
        # so at most two row groups are in memory.
        options = {"row_group_size": len(table)} if self.format == "parquet" else {}
        self.pending = self.executor.submit(self.writer.write_table, table, **options)
        self.rows += self.buffered_rows
        self.part_rows += self.buffered_rows
        self.buffer, self.buffered_rows = {}, 0
        if self.part_rows >= ROWS_PER_PART:
            self._close_part()

    def _open(self, schema: Any) -> None:
        self.path = self.staging / f"{self.table}-{self._name()}"
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            # zstd level 1, Parquet dictionaries only for the (dictionary-encoded) string columns: measured
            # fastest here (scores are random-looking floats, which dictionaries don't help).
            strings = [field.name for field in schema if pa.types.is_dictionary(field.type)]
            self.writer = pq.ParquetWriter(
                str(self.path), schema, compression="zstd", compression_level=1, use_dictionary=strings
            )
        else:
            import pyarrow.csv as pacsv

            self.writer = pacsv.CSVWriter(str(self.path), schema)

    def _name(self) -> str:
        return f"part-{self.slice_index:05d}-{self.part_index:03d}.{self.format}"

    def _wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def _close_part(self) -> None:
        self._wait()
        if self.writer is None or self.path is None:
            return
        self.writer.close()
        key = f"{self.table}/{self._name()}"
        self.storage.put(key, self.path.read_bytes())
        self.path.unlink()
        self.keys.append(key)
        self.writer, self.path, self.part_rows = None, None, 0
        self.part_index += 1

    def close(self) -> list[str]:
        try:
            self.flush()
            self._close_part()
        finally:
            self.executor.shutdown(wait=True)
        return self.keys


def columns_table(buffer: dict[str, list[Any]], export_format: str = "parquet") -> Any:
    """An Arrow table of buffered column chunks (numpy arrays, `DictColumn`s or lists of values)."""
    pa = _pyarrow()
    arrays = {}
    row_chunk: np.ndarray | None = None  # which chunk (prompt) each row comes from, computed once
    for name, chunks in buffer.items():
        first = chunks[0]
        if isinstance(first, DictColumn):
            if row_chunk is None:
                lengths = np.fromiter((len(c.indices) for c in chunks), dtype=np.int64, count=len(chunks))
                row_chunk = np.repeat(np.arange(len(chunks), dtype=np.int32), lengths)
            arrays[name] = _dictionary_array(chunks, row_chunk, export_format)
        elif isinstance(first, np.ndarray):
            arrays[name] = pa.array(np.concatenate(chunks))
        else:
            arrays[name] = pa.array([value for chunk in chunks for value in chunk])
    return pa.table(arrays)


def _dictionary_array(chunks: list[DictColumn], row_chunk: np.ndarray, export_format: str) -> Any:
    """Many prompts' dictionary columns as one Arrow dictionary array (each prompt's indices shifted)."""
    pa = _pyarrow()
    sizes = np.fromiter((len(chunk.values) for chunk in chunks), dtype=np.int32, count=len(chunks))
    if (sizes == 1).all():  # one value per prompt (its id, model, method): the row's prompt is the index
        indices = row_chunk
    else:
        offsets = np.concatenate([[0], np.cumsum(sizes[:-1])]).astype(np.int32)
        indices = np.concatenate([chunk.indices for chunk in chunks]) + offsets[row_chunk]
    dictionary = pa.array([value for chunk in chunks for value in chunk.values], type=pa.string())
    array = pa.DictionaryArray.from_arrays(pa.array(indices, type=pa.int32()), dictionary)
    # CSV has no dictionaries; Parquet keeps them (and DuckDB, pandas and Polars read them as strings).
    return array.cast(pa.string()) if export_format == "csv" else array


# --- the export ------------------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What an export wrote: rows per table, the part files, and the results it could not read."""

    dest: str
    rows: dict[str, int]
    files: list[str]
    unreadable: dict[str, str]


@dataclass(frozen=True)
class PromptEntry:
    """One prompt as the export walks it: whether it has a result or an error record, and its text."""

    prompt_id: str
    has_result: bool
    has_error: bool
    prompt: str | None


@dataclass(frozen=True)
class SliceJob:
    """A slice of a run's prompts that one process exports into part files of its own."""

    results_url: str
    run_id: str
    dest: str
    export_format: str
    level: str
    index: int
    prompts: list[PromptEntry]


def export_run(
    results_url: str,
    run_id: str,
    dest: str,
    *,
    export_format: str = "parquet",
    level: str = "token",
    jobs: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """Write the run's attributions and prompts tables under `dest` (a folder or an s3:// prefix).

    The prompts are exported in slices of `PROMPTS_PER_SLICE`, each into part files of its own, by `jobs`
    processes at once (one by default); `on_progress(n)` is called as each slice's n prompts are done.
    """
    if export_format not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {export_format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    check_level(level)
    _pyarrow()
    store = RunStore(open_storage(results_url), run_id)
    manifest = store.read_manifest()
    target = open_storage(dest)
    for table in TABLES:
        if next(iter(target.list(f"{table}/")), None) is not None:
            # Parts of an earlier export would be read together with the new ones and count twice.
            raise ExportError(f"{dest} already holds an export ({table}/); pass an empty --dest or remove it")
    entries = _prompt_entries(store, store.prompt_ids(manifest))
    slices = [
        SliceJob(results_url, run_id, dest, export_format, level, index, entries[start : start + PROMPTS_PER_SLICE])
        for index, start in enumerate(range(0, len(entries), PROMPTS_PER_SLICE))
    ]
    report = ExportReport(dest, {"attributions": 0, "prompts": 0}, [], {})
    if jobs <= 1 or len(slices) <= 1:
        outcomes: Iterator[ExportReport] = (export_slice(job) for job in slices)
        for outcome, job in zip(outcomes, slices, strict=True):
            _merge(report, outcome, job, on_progress)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(export_slice, job): job for job in slices}
            for future in as_completed(futures):
                _merge(report, future.result(), futures[future], on_progress)
    report.files.sort()
    return report


def _merge(
    report: ExportReport, outcome: ExportReport, job: SliceJob, on_progress: Callable[[int], None] | None
) -> None:
    for table, rows in outcome.rows.items():
        report.rows[table] += rows
    report.files.extend(outcome.files)
    report.unreadable.update(outcome.unreadable)
    if on_progress is not None:
        on_progress(len(job.prompts))


def export_slice(job: SliceJob) -> ExportReport:
    """Export one slice of prompts into its own part files (run in a worker process when `jobs` > 1)."""
    store = RunStore(open_storage(job.results_url), job.run_id)
    target = open_storage(job.dest)
    unreadable: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tokenlens-export-") as staging:
        attributions = PartWriter(target, "attributions", job.export_format, Path(staging), job.index)
        prompts = PartWriter(target, "prompts", job.export_format, Path(staging), job.index)
        for entry, view, error in _walk(store, job.prompts, unreadable):
            if view is not None:
                columns = attribution_columns(view, job.level, job.run_id)
                attributions.add(columns, len(columns["score"]))
            prompts.add_row(prompt_row(job.run_id, entry.prompt_id, entry.prompt, view, error))
        files = attributions.close() + prompts.close()
    return ExportReport(job.dest, {"attributions": attributions.rows, "prompts": prompts.rows}, files, unreadable)


def _prompt_entries(store: RunStore, prompt_ids: list[str]) -> list[PromptEntry]:
    """Every prompt of the run in order (the prompt set's, then any other stored), with what is stored for it."""
    results = store.ids("results")
    errors = store.ids("errors")
    texts = {pid: record.prompt for pid, record in store.read_prompts().items()}
    ordered = list(prompt_ids) or sorted(results | errors)
    ordered += sorted((results | errors) - set(ordered))
    return [PromptEntry(pid, pid in results, pid in errors, texts.get(pid)) for pid in ordered]


def _walk(
    store: RunStore, entries: list[PromptEntry], unreadable: dict[str, str]
) -> Iterator[tuple[PromptEntry, ResultView | None, dict[str, Any] | None]]:
    """Each prompt with its result (read one at a time) or its error record."""
    for entry in entries:
        view = error = None
        prompt_id = entry.prompt_id
        if entry.has_result:
            source = f"{store.storage.url.rstrip('/')}/{store.key('results', prompt_id)}"
            try:
                view = ResultView.of(store.read_result_bytes(prompt_id), source)
            except ResultFormatError as exc:
                unreadable[prompt_id] = str(exc)
            if view is not None and view.prompt_id != prompt_id:
                # The file's name is the prompt's id: a file that says otherwise (edited, copied) can't borrow one.
                view = ResultView(prompt_id, view.metadata, view.input_tokens, view.output_tokens, view.matrix)
        elif entry.has_error:
            try:
                error = store.read_error(prompt_id).model_dump()
            except ValueError as exc:
                unreadable[prompt_id] = f"unreadable error record: {exc}"
        yield entry, view, error
