"""`tokenlens export` and `tokenlens.open_run`: tables that DuckDB, pandas and Polars read, equal to the files.

Runs are synthetic (tests/fixtures/synthetic_runs.py: real files in the real layout, random scores), in
both result formats; numbers are checked against the results read back through the real decoder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from storage_backends import LocalStorage, open_storage
from tests.cli_runner import run_tokenlens
from tests.fixtures.synthetic_runs import write_synthetic_run
from tokenlens import export, open_run
from tokenlens.errors import TokenLensError
from tokenlens.words import aggregate

N_IN, N_OUT = 6, 5


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    # Results in both formats (json, compact in turn), one prompt failed.
    formats = ["json", "compact"]
    write_synthetic_run(
        LocalStorage(tmp_path / "results"), "r1", 9, n_in=N_IN, n_out=N_OUT, result_format=formats, failed=[2]
    )
    compact = (tmp_path / "results/runs/r1/results/p000001.json").read_bytes()
    assert compact[:2] == b"\x1f\x8b"
    return tmp_path / "results"


def reachable_cells(n_in: int, n_out: int) -> int:
    return n_out * n_in + n_out * (n_out - 1) // 2


def test_token_table_has_one_row_per_reachable_cell_and_the_files_numbers(run_dir: Path, tmp_path: Path) -> None:
    import duckdb
    import pandas as pd
    import polars as pl

    report = export.export_run(str(run_dir), "r1", str(tmp_path / "out"))
    results = {r.metadata.prompt_id: r for r in open_run(str(run_dir), "r1").results()}
    assert len(results) == 8
    assert report.rows == {"attributions": 8 * reachable_cells(N_IN, N_OUT), "prompts": 9}
    frame = pd.read_parquet(tmp_path / "out/attributions")
    polars = pl.scan_parquet(str(tmp_path / "out/attributions/*.parquet")).collect()
    relation = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/out/attributions/*.parquet')")
    assert relation is not None
    counted = relation.fetchall()
    assert len(frame) == polars.height == counted[0][0] == report.rows["attributions"]
    for prompt_id in ("p000001", "p000004"):  # compact, json
        result = results[prompt_id]
        rows = frame[frame.prompt_id == prompt_id]
        matrix = np.asarray(result.data.association_matrix)
        normalized = np.asarray(result.data.normalized_association)
        assert np.allclose(rows.score, matrix[rows.output_position, rows.source_position], atol=1e-6)
        assert np.allclose(rows.normalized_score, normalized[rows.output_position, rows.source_position], atol=1e-6)
        first = rows[(rows.output_position == 2) & (rows.source_position == N_IN + 1)].iloc[0]
        assert first.source_kind == "generated" and first.source_token == result.data.output_tokens[1].token
        assert first.output_probability == pytest.approx(result.data.output_tokens[2].probability, rel=1e-6)
        assert rows[rows.source_position == 0].iloc[0].source_is_template
    prompts = pd.read_parquet(tmp_path / "out/prompts").set_index("prompt_id")
    assert prompts.loc["p000002"].status == "error" and prompts.loc["p000002"].error_type == "X"
    assert prompts.loc["p000001"].generated_text == results["p000001"].metadata.generated_text


def test_word_level_sums_tokens_into_words(run_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    export.export_run(str(run_dir), "r1", str(tmp_path / "words"), level="word")
    words = pd.read_parquet(tmp_path / "words/attributions")
    tokens = open_run(str(run_dir), "r1").to_pandas(level="token")
    result = next(iter(open_run(str(run_dir), "r1").results()))
    grouped = aggregate(result, "word", "sum")
    mine = words[words.prompt_id == result.metadata.prompt_id]
    assert set(mine.level) == {"word"}
    cell = mine[(mine.output_position == 1) & (mine.source_position == 4)].iloc[0]
    assert cell.score == pytest.approx(grouped.matrix[1, 4], rel=1e-5, abs=1e-6)
    # Every prompt source is reachable at both levels, so prompt attribution totals agree per prompt.
    by_word = words[words.source_kind == "prompt"].groupby("prompt_id").score.sum()
    by_token = tokens[tokens.source_kind == "prompt"].groupby("prompt_id").score.sum()
    assert np.allclose(by_word.sort_index(), by_token.sort_index(), atol=1e-4)


def test_csv_export_and_small_parts(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    monkeypatch.setattr(export, "ROWS_PER_GROUP", 40)
    monkeypatch.setattr(export, "ROWS_PER_PART", 100)
    report = export.export_run(str(run_dir), "r1", str(tmp_path / "csv"), export_format="csv", level="word")
    parts = sorted((tmp_path / "csv/attributions").glob("part-*.csv"))
    assert len(parts) > 1 and [f"attributions/{p.name}" for p in parts] == report.files[: len(parts)]
    frame = pd.concat(pd.read_csv(part) for part in parts)
    assert len(frame) == report.rows["attributions"] and set(frame.level) == {"word"}


def test_an_unreadable_result_is_listed_and_the_rest_exported(run_dir: Path, tmp_path: Path) -> None:
    (run_dir / "runs/r1/results/p000003.json").write_text('{"metadata": {}, "data": {"input_tokens": 3}}')
    report = export.export_run(str(run_dir), "r1", str(tmp_path / "out"))
    assert list(report.unreadable) == ["p000003"] and "input_tokens" in report.unreadable["p000003"]
    assert report.rows["attributions"] == 7 * reachable_cells(N_IN, N_OUT)


def test_open_run_finds_the_run_and_lists_prompts(run_dir: Path) -> None:
    run = open_run(str(run_dir))  # the only run there
    assert run.run_id == "r1"
    assert open_run(str(run_dir / "runs/r1")).run_id == "r1"
    prompts = {row["prompt_id"]: row for row in run.prompts()}
    assert prompts["p000002"]["status"] == "error" and prompts["p000000"]["status"] == "done"
    assert prompts["p000000"]["n_output_tokens"] == N_OUT
    write_synthetic_run(LocalStorage(run_dir), "r2", 1)
    with pytest.raises(TokenLensError, match=r"holds 2 runs \(r1, r2\)"):
        open_run(str(run_dir))


def test_cli_export_and_its_errors(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_tokenlens(
        ["export", "r1", "--results", str(run_dir), "--dest", str(tmp_path / "cli"), "--level", "word"], capsys
    )
    assert code == 0 and "9 prompts" in out and (tmp_path / "cli/attributions/part-00000-000.parquet").exists()
    code, _out, err = run_tokenlens(["export", "nope", "--results", str(run_dir), "--dest", str(tmp_path)], capsys)
    assert code == 2 and "run 'nope' not found" in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_export_to_s3_is_read_back_by_duckdb_through_the_store(run_dir: Path, s3_results_url: str) -> None:
    import io

    import pyarrow.parquet as pq

    dest = f"{s3_results_url}/export/"
    report = export.export_run(str(run_dir), "r1", dest)
    storage = open_storage(dest)
    keys = sorted(info.key for info in storage.list(""))
    assert keys == report.files and "attributions/part-00000-000.parquet" in keys
    parts = [pq.read_table(io.BytesIO(storage.get(key))) for key in keys if key.startswith("attributions/")]
    assert sum(table.num_rows for table in parts) == report.rows["attributions"]


def test_an_earlier_export_is_never_mixed_in_and_file_names_are_the_ids(run_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    export.export_run(str(run_dir), "r1", str(tmp_path / "out"))
    with pytest.raises(export.ExportError, match="already holds an export"):
        export.export_run(str(run_dir), "r1", str(tmp_path / "out"), level="word")
    # A result file whose metadata claims another prompt's id is exported under its own file's id.
    (run_dir / "runs/r1/results/p000004.json").write_bytes(
        (run_dir / "runs/r1/results/p000004.json")
        .read_bytes()
        .replace(b'"prompt_id":"p000004"', b'"prompt_id":"p000000"')
    )
    export.export_run(str(run_dir), "r1", str(tmp_path / "again"))
    counts = pd.read_parquet(tmp_path / "again/attributions").prompt_id.value_counts()
    assert counts["p000004"] == counts["p000000"] == reachable_cells(N_IN, N_OUT)


def test_slices_in_several_processes_write_the_same_rows(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    monkeypatch.setattr(export, "PROMPTS_PER_SLICE", 2)
    done: list[int] = []
    one = export.export_run(str(run_dir), "r1", str(tmp_path / "one"), jobs=1)
    two = export.export_run(str(run_dir), "r1", str(tmp_path / "two"), jobs=2, on_progress=done.append)
    assert sum(done) == 9 and len(done) == 5  # 9 prompts in slices of 2, each reported when finished
    assert one.rows == two.rows and len([f for f in two.files if f.startswith("attributions/")]) == 5
    columns = ["prompt_id", "output_position", "source_position"]
    first = pd.read_parquet(tmp_path / "one/attributions").sort_values(columns).reset_index(drop=True)
    second = pd.read_parquet(tmp_path / "two/attributions").sort_values(columns).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, second)


def test_cli_jobs_2_writes_the_same_table_as_jobs_1_and_defaults_to_the_cpus(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(export, "PROMPTS_PER_SLICE", 3)  # 9 prompts: three slices, so two processes share them
    tables = {}
    for jobs in ("1", "2"):
        dest = tmp_path / f"jobs{jobs}"
        code, _out, _err = run_tokenlens(
            ["export", "r1", "--results", str(run_dir), "--dest", str(dest), "--jobs", jobs], capsys
        )
        assert code == 0 and len(list((dest / "attributions").glob("part-*.parquet"))) == 3
        table = pq.read_table(dest / "attributions")
        plain = table.cast(
            pa.schema([pa.field(f.name, pa.string()) if pa.types.is_dictionary(f.type) else f for f in table.schema])
        )
        order = [("prompt_id", "ascending"), ("output_position", "ascending"), ("source_position", "ascending")]
        tables[jobs] = plain.sort_by(order)
    assert tables["1"].num_rows == 8 * reachable_cells(N_IN, N_OUT)
    assert tables["1"].equals(tables["2"])
    cpus = os.process_cpu_count() if hasattr(os, "process_cpu_count") else len(os.sched_getaffinity(0))
    assert export.default_jobs() == cpus


def test_token_ids_and_dictionary_strings(run_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    export.export_run(str(run_dir), "r1", str(tmp_path / "tokens"))
    export.export_run(str(run_dir), "r1", str(tmp_path / "words"), level="word")
    results = {r.metadata.prompt_id: r for r in open_run(str(run_dir), "r1").results()}
    frame = pq.read_table(tmp_path / "tokens/attributions").to_pandas()
    for row in frame.sample(20, random_state=0).itertuples():
        result = results[row.prompt_id]
        sources = [*result.data.input_tokens, *result.data.output_tokens]
        assert row.source_token_id == sources[row.source_position].token_id
        assert row.output_token_id == result.data.output_tokens[row.output_position].token_id
    words = pq.read_table(tmp_path / "words/attributions")
    assert words.column("source_token_id").null_count == words.num_rows  # a word has no single vocabulary id
    # Strings are dictionary-encoded, each distinct string once per row group, whichever prompts it came from.
    part = pq.ParquetFile(next((tmp_path / "tokens/attributions").glob("*.parquet")))
    assert pa.types.is_dictionary(part.schema_arrow.field("source_clean_token").type)
    group = part.read_row_group(0, columns=["source_clean_token", "prompt_id"])
    dictionary = group.column("source_clean_token").chunk(0).dictionary.to_pylist()
    mine = frame[frame.prompt_id.isin(set(group.column("prompt_id").to_pylist()))]
    assert sorted(dictionary) == sorted(set(dictionary)) == sorted(set(mine.source_clean_token))


def test_prompt_parts_agree_on_types_when_a_slice_has_no_errors(tmp_path: Path) -> None:
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    write_synthetic_run(LocalStorage(tmp_path / "results"), "r1", 6, n_in=N_IN, n_out=N_OUT, failed=[4])
    export.export_run(str(tmp_path / "results"), "r1", str(tmp_path / "out"), jobs=2)  # slices of 3: one error
    parts = sorted((tmp_path / "out/prompts").glob("*.parquet"))
    assert len(parts) == 2 and len({pq.read_schema(part) for part in parts}) == 1
    assert list(pq.read_schema(parts[0]).names) == list(export.PROMPT_COLUMNS)
    frame = pd.read_parquet(tmp_path / "out/prompts").set_index("prompt_id")
    assert frame.loc["p000004"].error_type == "X" and frame.error_type.isna().sum() == 5
    relation = duckdb.sql(f"SELECT count(error_type) FROM read_parquet('{tmp_path}/out/prompts/*.parquet')")
    assert relation is not None and relation.fetchall() == [(1,)]
    assert pl.scan_parquet(str(tmp_path / "out/prompts/*.parquet")).collect().height == 6
