"""Prompt sets from tables: Parquet and Arrow files, and Hugging Face `datasets` (a saved folder or a hub id).

Only the columns a prompt needs are read (`PromptSource.column`, the id column, and ``target`` and
``max_new_tokens`` where the table has them), and at most `PromptSource.limit` rows. Every problem names
the source and, for a value, its 1-based row; `tokenlens.prompt_sets` then validates the rows like any
other prompt set, before anything is queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenlens.errors import PromptSetError
from tokenlens.prompt_sets import HUB_PREFIX, PromptSource

OPTIONAL_COLUMNS = ("target", "max_new_tokens")


def table_rows(source: PromptSource, kind: str) -> list[tuple[int, dict[str, Any]]]:
    """The (row number, fields) of a table prompt set, ready for `tokenlens.prompt_sets` to validate."""
    if source.limit is not None and source.limit < 1:
        raise PromptSetError(source.path, None, f"--limit must be at least 1, got {source.limit}")
    if kind == "hf":
        table = _dataset_table(source)
    else:
        if not Path(source.path).is_file():
            raise PromptSetError(source.path, None, f"file not found; pass the path to a .{kind} prompt set")
        table = _file_table(source, kind)
    return _rows(source, table)


def _file_table(source: PromptSource, kind: str) -> Any:
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(source.path)
            columns = _wanted(source, parquet.schema_arrow.names)
            batches, count = [], 0
            for batch in parquet.iter_batches(columns=columns, batch_size=8192):
                batches.append(batch)
                count += batch.num_rows
                if source.limit is not None and count >= source.limit:
                    break
            return pa.Table.from_batches(batches, schema=pa.schema([parquet.schema_arrow.field(c) for c in columns]))
        import pyarrow.ipc as ipc

        try:
            table = ipc.open_file(source.path).read_all()
        except pa.ArrowInvalid:  # the streaming IPC format (``.arrow`` files written by `datasets`)
            table = ipc.open_stream(source.path).read_all()
        return table.select(_wanted(source, table.column_names))
    except (pa.ArrowInvalid, OSError) as exc:
        raise PromptSetError(source.path, None, f"not a readable {kind} file ({' '.join(str(exc).split())})") from None


def _dataset_table(source: PromptSource) -> Any:
    try:
        import datasets
    except ImportError:
        raise PromptSetError(
            source.path, None, "reading a Hugging Face dataset needs `pip install datasets` (or tokenlens[datasets])"
        ) from None
    try:
        if source.path.startswith(HUB_PREFIX):
            loaded = datasets.load_dataset(source.path[len(HUB_PREFIX) :], split=source.split)
        else:
            loaded = datasets.load_from_disk(source.path)
    except (FileNotFoundError, ValueError, OSError, ConnectionError) as exc:
        hint = "a folder written by `Dataset.save_to_disk`, or hf:<dataset id> with the hub reachable"
        raise PromptSetError(
            source.path, None, f"not a readable dataset ({' '.join(str(exc).split())}); use {hint}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = sorted(loaded)
        split = source.split or ("train" if "train" in loaded else (splits[0] if len(splits) == 1 else None))
        if split not in loaded:
            raise PromptSetError(source.path, None, f"choose a split with --split: {', '.join(splits)}")
        loaded = loaded[split]
    elif source.split is not None and not source.path.startswith(HUB_PREFIX):
        raise PromptSetError(source.path, None, f"the dataset has no splits; drop --split {source.split}")
    if source.limit is not None:
        loaded = loaded.select(range(min(source.limit, len(loaded))))
    return loaded.data.table.select(_wanted(source, loaded.column_names))


def _wanted(source: PromptSource, names: list[str]) -> list[str]:
    if source.column not in names:
        raise PromptSetError(
            source.path, None, f"no column {source.column!r}; pick the prompt column with --column ({', '.join(names)})"
        )
    if source.id_column is not None and source.id_column not in names:
        raise PromptSetError(
            source.path, None, f"no column {source.id_column!r} for --id-column; columns: {', '.join(names)}"
        )
    id_column = source.id_column or ("id" if "id" in names else None)
    wanted = [source.column] + ([id_column] if id_column else [])
    return wanted + [name for name in OPTIONAL_COLUMNS if name in names and name not in wanted]


def _rows(source: PromptSource, table: Any) -> list[tuple[int, dict[str, Any]]]:
    names = table.column_names
    id_column = source.id_column or ("id" if "id" in names and source.column != "id" else None)
    if source.limit is not None:
        table = table.slice(0, source.limit)
    columns = {name: table.column(name).to_pylist() for name in names}
    rows = []
    for index in range(table.num_rows):
        prompt = columns[source.column][index]
        if prompt is not None and not isinstance(prompt, str):
            raise PromptSetError(
                source.path, index + 1, f"column {source.column!r} holds {type(prompt).__name__}, not text"
            )
        fields: dict[str, Any] = {"prompt": prompt}
        if id_column is not None and columns[id_column][index] is not None:
            fields["id"] = columns[id_column][index]
        for name in OPTIONAL_COLUMNS:
            if name in columns and name != source.column and columns[name][index] is not None:
                fields[name] = columns[name][index]
        rows.append((index + 1, fields))
    return rows
