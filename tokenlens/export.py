"""A run as tables: `tokenlens export` and `tokenlens.open_run`, streaming, in bounded memory.

Two tables, each a folder of part files that DuckDB (``read_parquet('DEST/attributions/*.parquet')``),
pandas (``read_parquet('DEST/attributions')``) and Polars (``scan_parquet('DEST/attributions/*.parquet')``)
read directly:

``attributions/``: one row per (prompt, output position, source position) that the output can depend on
(every prompt source, and the generated sources before it): ``run_id``, ``prompt_id``, ``model``,
``method``, ``level``, ``output_position``, ``output_token_id``, ``output_token``, ``output_clean_token``,
``output_is_template``, ``output_probability``, ``source_position`` (the matrix column: prompt sources
first, then generated ones), ``source_kind`` (``prompt`` / ``generated``), ``source_token_id``,
``source_token``, ``source_clean_token``, ``source_is_template``, ``score`` (raw) and ``normalized_score``
(the row over its largest absolute value). The ``*_token_id`` columns are the vocabulary ids (int32; null
where a file has none). At the word or sentence level (`tokenlens.words`, sum aggregation) positions number
groups, tokens are the groups' texts, token ids are null and an output group's probability is the product
of its tokens' probabilities.

``prompts/``: one row per prompt of the run: ``prompt``, ``generated_text``, ``status`` (done / error /
pending), token counts, ``timings_s`` (JSON of seconds per phase), ``error_type`` and ``error_message``.

Results are read one at a time (either result format, through `tokenlens.result_codec`) and written in
row groups of `ROWS_PER_GROUP` rows, so memory stays bounded whatever the run's size. The string columns
are Parquet dictionaries (each distinct string once per row group: DuckDB groups by them without comparing
strings); `parquet_options` says how each column is compressed and which carry statistics. A result's rows
are computed with numpy, its strings looked up once per prompt, never once per row. The prompts are exported
in slices of up to `PROMPTS_PER_SLICE`, each into its own part files (``part-<slice>-<part>``, a new part
every `ROWS_PER_PART` rows), by ``jobs`` processes at once (by default as many as the CPUs this process may
use: `default_jobs`); an ``s3://`` destination receives each finished part through storage_backends.
"""

from __future__ import annotations

import functools
import json
import math
import os
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
    load_document_and_matrix,
    unpack_matrix,
    upgrade_document,
)
from tokenlens.results import RunStore
from tokenlens.schema import AnalysisResult, TokenInfo
from tokenlens.words import TokenGroup, check_level, group_tokens

EXPORT_FORMATS = ("parquet", "csv")
TABLES = ("attributions", "prompts")
#: Rows buffered before a row group is written: what bounds the export's memory.
ROWS_PER_GROUP = 500_000
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
    input_tokens: TokenColumns
    output_tokens: TokenColumns
    matrix: np.ndarray

    @classmethod
    def of(cls, raw: bytes, source: str) -> ResultView:
        document, parsed = load_document_and_matrix(raw, source)
        if document["metadata"].get("tokenlens_format"):
            # A current TokenLens file: its matrix is already in layout, so it is read as it is stored.
            data, metadata = document["data"], document["metadata"]
            if not isinstance(data.get("input_tokens"), list) or not isinstance(data.get("output_tokens"), list):
                raise ResultFormatError(f"{source}: data.input_tokens and data.output_tokens must be lists")
            stored = data.get("association_matrix")
            if parsed is not None:
                matrix = parsed
            elif isinstance(stored, dict) and stored.get("encoding") == PACKED_ENCODING:
                matrix = unpack_matrix(stored, source).astype(np.float64)
            else:
                try:
                    matrix = np.asarray(stored, dtype=np.float64)
                except (TypeError, ValueError):
                    raise ResultFormatError(f"{source}: data.association_matrix is not a matrix of numbers") from None
            if not np.isfinite(matrix).all():
                raise ResultFormatError(f"{source}: data.association_matrix holds NaN or Infinity")
        else:  # older revisions and seed files: brought to the current layout first
            if parsed is not None:
                document["data"]["association_matrix"] = parsed.tolist()
            document = upgrade_document(document, source)
            data, metadata = document["data"], document["metadata"]
            matrix = np.asarray(data["association_matrix"], dtype=np.float64)
        inputs = TokenColumns.of_entries(data["input_tokens"], source, "input")
        outputs = TokenColumns.of_entries(data["output_tokens"], source, "output")
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
        inputs, outputs = TokenColumns.of_tokens(data.input_tokens), TokenColumns.of_tokens(data.output_tokens)
        return cls(str(result.metadata.prompt_id or ""), metadata, inputs, outputs, matrix)


@dataclass(frozen=True, slots=True)
class ExportToken:
    """One token as `tokenlens.words` groups it (built only at the word and sentence levels)."""

    token: str
    clean_token: str
    is_template: bool
    probability: float | None
    span: list[int] | None


#: Token ids above this don't fit the table's int32 column (no vocabulary is that large); they are left out.
_LARGEST_TOKEN_ID = 2**31 - 1


@dataclass(frozen=True)
class TokenColumns:
    """One sequence's tokens as columns: what the export reads of them, with no object per token (on a big run
    an object per token costs more than all the rest of a row)."""

    token: list[str]
    clean_token: list[str]
    #: The vocabulary id, -1 where the file has none (null in the table).
    token_id: np.ndarray
    is_template: np.ndarray
    #: NaN where the token has no probability (input tokens).
    probability: np.ndarray
    #: As stored: `records` keeps the lists, `tokenlens.words` checks them.
    span: list[Any]

    def __len__(self) -> int:
        return len(self.token)

    @classmethod
    def of_entries(cls, entries: list[Any], source: str, kind: str) -> TokenColumns:
        """Token entries as stored (JSON objects), checked for what the export reads."""
        try:
            texts = [entry["token"] for entry in entries]
            clean = [entry["clean_token"] for entry in entries]
            probabilities = [entry.get("probability") for entry in entries]
            ids = [entry.get("token_id") for entry in entries]
            templates = [entry.get("is_template") is True for entry in entries]
            spans = [entry.get("span") for entry in entries]
        except (KeyError, TypeError, AttributeError):
            _first_bad_token(entries, source, kind)
            raise  # unreachable: _first_bad_token raises for the entry that failed above
        # Checked a set of types at a time (a check per token would cost more than the rest of the export).
        strings, numbers = set(map(type, texts)) | set(map(type, clean)), set(map(type, probabilities))
        if not strings <= {str} or not numbers <= {int, float, type(None)}:
            _first_bad_token(entries, source, kind)  # raises, naming the first entry the export can't read
        templates_array = np.array(templates, dtype=bool)
        return cls(texts, clean, _token_ids(ids), templates_array, _optional_floats(probabilities), spans)

    @classmethod
    def of_tokens(cls, tokens: Sequence[TokenInfo]) -> TokenColumns:
        """A result's tokens (`TokenInfo`), as read through the schema."""
        return cls(
            [t.token for t in tokens], [t.clean_token for t in tokens],
            np.array([t.token_id if 0 <= t.token_id <= _LARGEST_TOKEN_ID else -1 for t in tokens], dtype=np.int32),
            np.array([t.is_template for t in tokens], dtype=bool),
            np.array([math.nan if t.probability is None else t.probability for t in tokens], dtype=np.float64),
            [t.span for t in tokens],
        )  # fmt: skip

    def records(self) -> list[ExportToken]:
        """One record per token, for `tokenlens.words.group_tokens` (word and sentence levels)."""
        probabilities = [None if math.isnan(p) else p for p in self.probability.tolist()]
        spans = [span if isinstance(span, list) else None for span in self.span]
        columns = (self.token, self.clean_token, self.is_template.tolist(), probabilities, spans)
        return [ExportToken(*fields) for fields in zip(*columns, strict=True)]


def _token_ids(ids: list[Any]) -> np.ndarray:
    """Vocabulary ids as int32, -1 for one that is missing or not a usable id."""
    if set(map(type, ids)) <= {int}:
        try:
            values = np.array(ids, dtype=np.int64)
        except OverflowError:
            pass
        else:
            values[(values < 0) | (values > _LARGEST_TOKEN_ID)] = -1
            return values.astype(np.int32)
    return np.array([i if type(i) is int and 0 <= i <= _LARGEST_TOKEN_ID else -1 for i in ids], dtype=np.int32)


def _optional_floats(values: list[Any]) -> np.ndarray:
    """Numbers or None as float64, NaN for None."""
    kinds = set(map(type, values))
    if type(None) not in kinds:
        return np.array(values, dtype=np.float64)
    if kinds == {type(None)}:
        return np.full(len(values), math.nan)
    return np.array([math.nan if value is None else value for value in values], dtype=np.float64)


def _first_bad_token(entries: list[Any], source: str, kind: str) -> None:
    """Raise the error that names the first token entry the export can't read."""
    for index, token in enumerate(entries):
        if not (
            isinstance(token, dict)
            and isinstance(token.get("token"), str)
            and isinstance(token.get("clean_token"), str)
        ):
            raise ResultFormatError(f"{source}: {kind} token {index} needs string fields token and clean_token")
        probability = token.get("probability")
        if probability is not None and (isinstance(probability, bool) or not isinstance(probability, int | float)):
            raise ResultFormatError(f"{source}: {kind} token {index} has a probability that is not a number")


def _groups(view: ResultView, level: str) -> tuple[list[TokenGroup], list[TokenGroup]]:
    generated = view.metadata.get("generated_text")
    return (
        group_tokens(view.input_tokens.records(), view.metadata.get("prompt"), level),
        group_tokens(view.output_tokens.records(), generated if isinstance(generated, str) else None, level),
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


@dataclass(frozen=True)
class ConstantColumn:
    """A string column that holds one value in all of a prompt's rows (its run, id, model, method, level)."""

    value: str
    count: int


@dataclass(frozen=True)
class OptionalIds:
    """An int32 column in which -1 stands for null (a token id the file lacks; every id at the word level)."""

    values: np.ndarray


SOURCE_KINDS = ["prompt", "generated"]


@functools.lru_cache(maxsize=256)
def _reachable_cells(n_rows: int, n_prompt_sources: int, n_columns: int, own_column: bool) -> tuple[np.ndarray, ...]:
    """The cells an output can depend on, row by row: (rows, columns, flat indices), read-only, shared by every
    prompt of the same shape. Every prompt source, and the generated sources before the output (and its own,
    with `own_column`)."""
    last_column = np.arange(n_rows)[:, None] + n_prompt_sources + (1 if own_column else 0)
    rows, columns = np.nonzero(np.arange(n_columns)[None, :] < last_column)
    cells = (rows.astype(np.int32), columns.astype(np.int32), rows * n_columns + columns)
    for array in cells:
        array.flags.writeable = False
    return cells


def attribution_columns(view: ResultView, level: str, run_id: str) -> dict[str, Any]:
    """One result's rows of the attributions table, as columns (numpy arrays and the column types above)."""
    inputs, outputs = view.input_tokens, view.output_tokens
    if level == "token":
        matrix = view.matrix
        source_texts, output_texts = inputs.token + outputs.token, outputs.token
        source_clean, output_clean = inputs.clean_token + outputs.clean_token, outputs.clean_token
        source_template = np.concatenate([inputs.is_template, outputs.is_template])
        source_ids = np.concatenate([inputs.token_id, outputs.token_id])
        n_prompt_sources = len(inputs)
        probabilities = outputs.probability
    else:
        input_groups, output_groups = _groups(view, level)
        n_in = len(inputs)
        columns = [g.tokens for g in input_groups] + [tuple(n_in + i for i in g.tokens) for g in output_groups]
        matrix = _sum_groups(_sum_groups(view.matrix, columns, axis=1), [g.tokens for g in output_groups], axis=0)
        source_texts = [g.text for g in [*input_groups, *output_groups]]
        source_clean = [text.strip() or text for text in source_texts]
        n_prompt_sources = len(input_groups)
        output_texts, output_clean = source_texts[n_prompt_sources:], source_clean[n_prompt_sources:]
        source_template = np.array([g.is_template for g in [*input_groups, *output_groups]], dtype=bool)
        source_ids = np.full(len(source_texts), -1, dtype=np.int32)  # a group has no single vocabulary id
        probabilities = np.array([_group_probability(outputs.probability, g) for g in output_groups])
    # A word can depend on earlier words and on itself (its later tokens on its earlier ones).
    rows, cols, cells = _reachable_cells(matrix.shape[0], n_prompt_sources, matrix.shape[1], level != "token")
    scores = matrix.take(cells)
    peaks = np.abs(matrix).max(axis=1) if matrix.size else np.zeros(matrix.shape[0])
    row_peaks = peaks[rows]
    normalized = np.divide(scores, row_peaks, out=np.zeros_like(scores), where=row_peaks > 0)
    count = len(rows)
    return {
        "run_id": ConstantColumn(run_id, count),
        "prompt_id": ConstantColumn(view.prompt_id, count),
        "model": ConstantColumn(str(view.metadata.get("llm_id", "")), count),
        "method": ConstantColumn(str(view.metadata.get("attribution_method", "")), count),
        "level": ConstantColumn(level, count),
        "output_position": rows,
        "output_token_id": OptionalIds(source_ids[n_prompt_sources:][rows]),
        "output_token": DictColumn(rows, output_texts),
        "output_clean_token": DictColumn(rows, output_clean),
        "output_is_template": source_template[n_prompt_sources:][rows],
        "output_probability": probabilities.astype(np.float32)[rows],
        "source_position": cols,
        "source_kind": DictColumn((cols >= n_prompt_sources).view(np.int8), SOURCE_KINDS),
        "source_token_id": OptionalIds(source_ids[cols]),
        "source_token": DictColumn(cols, source_texts),
        "source_clean_token": DictColumn(cols, source_clean),
        "source_is_template": source_template[cols],
        "score": scores.astype(np.float32),
        "normalized_score": normalized.astype(np.float32),
    }


def _group_probability(probabilities: np.ndarray, group: TokenGroup) -> float:
    """A group's probability: the product of its tokens' (NaN if any token has none)."""
    return float(np.prod(probabilities[list(group.tokens)]))


#: The prompts table's integer columns; the others hold text. Fixed types, so that every part file agrees: a
#: part whose prompts all lack a value (no errors in its slice) would otherwise hold a column of type null,
#: which DuckDB, pandas and Polars refuse to read together with a part where it holds text.
PROMPT_COUNT_COLUMNS = ("n_input_tokens", "n_output_tokens")
PROMPT_COLUMNS = (
    "run_id", "prompt_id", "status", "prompt", "generated_text", "model", "method", "engine", "device",
    *PROMPT_COUNT_COLUMNS, "timings_s", "error_type", "error_message",
)  # fmt: skip


def prompt_row(
    run_id: str, prompt_id: str, prompt: str | None, view: ResultView | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    """One row of the prompts table."""
    metadata = view.metadata if view is not None else {}
    status = "done" if view is not None else ("error" if error is not None else "pending")
    generated = metadata.get("generated_text")
    if view is not None and generated is None:
        generated = "".join(view.output_tokens.clean_token)
    texts = {
        "run_id": run_id,
        "prompt_id": prompt_id,
        "status": status,
        "prompt": metadata.get("prompt", prompt),
        "generated_text": generated,
        "model": metadata.get("llm_id"),
        "method": metadata.get("attribution_method"),
        "engine": metadata.get("engine"),
        "device": metadata.get("device"),
    }
    return {
        **{name: None if value is None else str(value) for name, value in texts.items()},
        "n_input_tokens": len(view.input_tokens) if view is not None else None,
        "n_output_tokens": len(view.output_tokens) if view is not None else None,
        "timings_s": json.dumps(metadata.get("timings_s") or {}, sort_keys=True) if view is not None else None,
        "error_type": None if error is None or error.get("error_type") is None else str(error["error_type"]),
        "error_message": None if error is None or error.get("message") is None else str(error["message"]),
    }


def prompts_table_types() -> dict[str, Any]:
    """The Arrow type of each prompts-table column (see `PROMPT_COUNT_COLUMNS`)."""
    pa = _pyarrow()
    return {name: pa.int64() if name in PROMPT_COUNT_COLUMNS else pa.string() for name in PROMPT_COLUMNS}


# --- writing part files ----------------------------------------------------------------------------------------


#: Columns that get Parquet statistics (min / max per row group), which let readers skip row groups: the
#: numbers, and the prompt id (rows are in prompt order, so `WHERE prompt_id = ...` reads one row group).
#: Statistics of the other string columns would take a third of the export's writing time.
STATISTICS_STRINGS = ("prompt_id",)
SCORE_COLUMNS = ("score", "normalized_score")


def parquet_options(schema: Any) -> dict[str, Any]:
    """How a table is written to Parquet (the choices measured in bench/bench_export.py)."""
    pa = _pyarrow()
    strings = [field.name for field in schema if pa.types.is_dictionary(field.type) or pa.types.is_string(field.type)]
    scores = [name for name in SCORE_COLUMNS if name in schema.names]
    return {
        # zstd level 1, but the scores stored as they are: random-looking floats, which zstd shrinks by under a
        # tenth (LZ4 not at all), and which DuckDB then sums in three quarters of the time.
        "compression": {field.name: "none" if field.name in scores else "zstd" for field in schema},
        "compression_level": {field.name: 1 for field in schema if field.name not in scores},
        # Dictionaries for the strings only: scores are random-looking floats, which dictionaries don't help.
        "use_dictionary": strings,
        "write_statistics": [
            field.name for field in schema if field.name not in strings or field.name in STATISTICS_STRINGS
        ],
    }


class PartWriter:
    """Rows of one table in, part files out (Parquet row groups, or CSV), to a folder or an object store."""

    def __init__(
        self, storage: Storage, table: str, export_format: str, staging: Path, slice_index: int = 0,
        types: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.storage, self.table, self.format, self.staging = storage, table, export_format, staging
        self.slice_index, self.types = slice_index, types
        self.buffer = ColumnBuffer(types)
        self.part_rows = 0
        self.part_index = 0
        self.writer: Any = None
        self.path: Path | None = None
        self.keys: list[str] = []
        self.rows = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"export-{table}")
        self.pending: Future[None] | None = None

    def add(self, columns: dict[str, Any], count: int) -> None:
        self.buffer.add(columns, count)
        if self.buffer.rows >= ROWS_PER_GROUP:
            self.flush()

    def add_row(self, row: dict[str, Any]) -> None:
        self.add({name: [value] for name, value in row.items()}, 1)

    def flush(self) -> None:
        if not self.buffer.rows:
            return
        table = self.buffer.table(self.format)
        self._wait()
        if self.writer is None:
            self._open(table.schema)
        # Written on a thread (pyarrow lets go of the GIL) while the next rows are read; one write at a time,
        # so at most two row groups are in memory.
        options = {"row_group_size": len(table)} if self.format == "parquet" else {}
        self.pending = self.executor.submit(self.writer.write_table, table, **options)
        self.rows += self.buffer.rows
        self.part_rows += self.buffer.rows
        self.buffer = ColumnBuffer(self.types)  # a new dictionary per row group: it holds only that group's strings
        if self.part_rows >= ROWS_PER_PART:
            self._close_part()

    def _open(self, schema: Any) -> None:
        self.path = self.staging / f"{self.table}-{self._name()}"
        if self.format == "parquet":
            import pyarrow.parquet as pq

            self.writer = pq.ParquetWriter(str(self.path), schema, **parquet_options(schema))
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


class ColumnBuffer:
    """Rows gathered into one Arrow table: the chunks of each column, numpy arrays or lists of values.

    String columns (`DictColumn`, `ConstantColumn`) are kept as codes into one dictionary per column, filled as
    prompts arrive, so each distinct string is stored once in the table (and once per Parquet row group, where
    DuckDB groups by it without comparing strings); CSV gets plain strings.
    """

    def __init__(self, types: dict[str, Any] | None = None) -> None:
        #: Arrow types of the columns given as lists of values (inferred from the values where not named).
        self.types = types or {}
        self.chunks: dict[str, list[Any]] = {}
        self.dictionaries: dict[str, dict[str, int]] = {}
        self.rows = 0

    def add(self, columns: dict[str, Any], count: int) -> None:
        for name, values in columns.items():
            if isinstance(values, DictColumn | ConstantColumn):
                values = self._codes(self.dictionaries.setdefault(name, {}), values)
            self.chunks.setdefault(name, []).append(values)
        self.rows += count

    @staticmethod
    def _codes(dictionary: dict[str, int], column: DictColumn | ConstantColumn) -> np.ndarray:
        if isinstance(column, ConstantColumn):
            return np.full(column.count, dictionary.setdefault(column.value, len(dictionary)), dtype=np.int32)
        # A prompt's few strings looked up once each (new ones added first); its rows pick their codes with numpy.
        values = column.values
        try:
            codes = np.fromiter(map(dictionary.__getitem__, values), dtype=np.int32, count=len(values))
        except KeyError:
            for value in values:
                dictionary.setdefault(value, len(dictionary))
            codes = np.fromiter(map(dictionary.__getitem__, values), dtype=np.int32, count=len(values))
        picked: np.ndarray = codes[column.indices]
        return picked

    def table(self, export_format: str = "parquet") -> Any:
        pa = _pyarrow()
        arrays = {}
        for name, chunks in self.chunks.items():
            if name in self.dictionaries:
                strings = pa.array(list(self.dictionaries[name]), type=pa.string())
                array = pa.DictionaryArray.from_arrays(pa.array(np.concatenate(chunks), type=pa.int32()), strings)
                arrays[name] = array.cast(pa.string()) if export_format == "csv" else array
            elif isinstance(chunks[0], OptionalIds):
                ids = np.concatenate([chunk.values for chunk in chunks])
                arrays[name] = pa.array(ids, type=pa.int32(), mask=ids < 0)
            elif isinstance(chunks[0], np.ndarray):
                arrays[name] = pa.array(np.concatenate(chunks))
            else:
                arrays[name] = pa.array([value for chunk in chunks for value in chunk], type=self.types.get(name))
        return pa.table(arrays)


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


def default_jobs() -> int:
    """How many processes an export uses unless told: the CPUs this process may run on."""
    counted = getattr(os, "process_cpu_count", None)  # Python 3.13 and later
    if counted is not None:
        return int(counted() or 1)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # a platform without CPU affinity (macOS)
        return os.cpu_count() or 1


def export_run(
    results_url: str,
    run_id: str,
    dest: str,
    *,
    export_format: str = "parquet",
    level: str = "token",
    jobs: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """Write the run's attributions and prompts tables under `dest` (a folder or an s3:// prefix).

    The prompts are exported in slices of up to `PROMPTS_PER_SLICE`, each into part files of its own, by `jobs`
    processes at once (`default_jobs()` when None); `on_progress(n)` is called as each slice's n prompts are done.
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
    jobs = default_jobs() if jobs is None else jobs
    # Smaller slices on a small run, so that every process gets a share.
    size = max(1, min(PROMPTS_PER_SLICE, math.ceil(len(entries) / max(jobs, 1))))
    slices = [
        SliceJob(results_url, run_id, dest, export_format, level, index, entries[start : start + size])
        for index, start in enumerate(range(0, len(entries), size))
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
        prompts = PartWriter(target, "prompts", job.export_format, Path(staging), job.index, prompts_table_types())
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
