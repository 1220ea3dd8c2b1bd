"""Prompt sets from Parquet, Arrow and Hugging Face `datasets` (a folder saved here), validated like the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_runner import run_tokenlens
from tokenlens.errors import PromptSetError
from tokenlens.prompt_sets import PromptSource, read_prompt_set

QUESTIONS: dict[str, list[object]] = {
    "question": ["is the sky blue", "do fish swim", "can pigs fly"],
    "qid": ["q-1", "q-2", "q-3"],
    "label": [True, True, False],
}


def parquet_file(tmp_path: Path, columns: dict[str, list[object]] = QUESTIONS) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "boolq.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_with_column_id_column_and_limit(tmp_path: Path) -> None:
    path = parquet_file(tmp_path)
    records = read_prompt_set(PromptSource(str(path), column="question", id_column="qid", limit=2))
    assert [(r.id, r.prompt) for r in records] == [("q-1", "is the sky blue"), ("q-2", "do fish swim")]
    numbered = read_prompt_set(PromptSource(str(path), column="question"))
    assert [r.id for r in numbered] == ["p0001", "p0002", "p0003"]


def test_arrow_file_and_stream(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.ipc as ipc

    table = pa.table({"prompt": ["a b", "c d"], "id": ["x", "y"], "target": [" yes", None]})
    feather.write_feather(table, tmp_path / "t.arrow")
    records = read_prompt_set(tmp_path / "t.arrow")
    assert [(r.id, r.prompt, r.target) for r in records] == [("x", "a b", " yes"), ("y", "c d", None)]
    with ipc.new_stream(tmp_path / "s.arrow", table.schema) as writer:
        writer.write_table(table)
    assert [r.id for r in read_prompt_set(tmp_path / "s.arrow")] == ["x", "y"]


def test_saved_dataset_folder_with_splits(tmp_path: Path) -> None:
    import datasets

    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(QUESTIONS),
            "validation": datasets.Dataset.from_dict({k: v[:1] for k, v in QUESTIONS.items()}),
        }
    )
    splits.save_to_disk(str(tmp_path / "boolq"))
    train = read_prompt_set(PromptSource(str(tmp_path / "boolq"), column="question", id_column="qid"))
    assert [r.id for r in train] == ["q-1", "q-2", "q-3"]
    validation = read_prompt_set(PromptSource(str(tmp_path / "boolq"), column="question", split="validation"))
    assert [r.prompt for r in validation] == ["is the sky blue"]
    with pytest.raises(PromptSetError, match="choose a split with --split: train, validation"):
        read_prompt_set(PromptSource(str(tmp_path / "boolq"), column="question", split="test"))


def test_a_hub_id_reads_the_local_datasets_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``hf:<id>`` without the hub: `datasets` reads the copy in its cache, which the test writes as a download would
    (``<cache>/<owner>___<name>/default/<version>/<hash>/<name>-<split>.arrow``)."""
    import shutil

    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    builder = Parquet(
        cache_dir=str(tmp_path / "built"), dataset_name="boolq_mini", hash="0" * 16,
        data_files={"train": str(parquet_file(tmp_path))},
    )  # fmt: skip
    builder.download_and_prepare()
    config_folder = Path(builder.cache_dir).parents[1]  # <built>/boolq_mini/<config>/, holding <version>/<hash>/
    shutil.copytree(config_folder, cache / "tokenlens-tests___boolq_mini" / "default")
    records = read_prompt_set(
        PromptSource("hf:tokenlens-tests/boolq_mini", column="question", id_column="qid", limit=2)
    )
    assert [(r.id, r.prompt) for r in records] == [("q-1", "is the sky blue"), ("q-2", "do fish swim")]
    # An id the cache doesn't hold is a clear error naming it and the fix.
    with pytest.raises(PromptSetError, match=r"hf:tokenlens-tests/not_cached: not a readable dataset .*hub reachable"):
        read_prompt_set(PromptSource("hf:tokenlens-tests/not_cached", column="question"))


@pytest.mark.parametrize(
    ("columns", "source", "message"),
    [
        (
            QUESTIONS,
            {"column": "text"},
            r"no column 'text'; pick the prompt column with --column \(question, qid, label\)",
        ),
        (QUESTIONS, {"column": "question", "id_column": "nope"}, "no column 'nope' for --id-column"),
        (QUESTIONS, {"column": "label"}, r"boolq.parquet:1: column 'label' holds bool, not text"),
        ({"prompt": ["a", ""]}, {}, r"boolq.parquet:2: missing or empty 'prompt'"),
        ({"prompt": ["a", "b"], "id": ["same", "same"]}, {}, r"boolq.parquet:2: duplicate id 'same'"),
        ({"prompt": ["a"], "id": ["../up"]}, {}, "not a safe file name"),
    ],
)
def test_bad_tables_name_the_file_row_and_fix(
    tmp_path: Path, columns: dict[str, list[object]], source: dict[str, str], message: str
) -> None:
    path = parquet_file(tmp_path, columns)
    with pytest.raises(PromptSetError, match=message):
        read_prompt_set(PromptSource(str(path), **source))  # type: ignore[arg-type]


def test_table_options_on_a_text_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("hello\n")
    with pytest.raises(PromptSetError, match="apply to Parquet, Arrow and datasets"):
        read_prompt_set(PromptSource(str(tmp_path / "p.txt"), limit=1))


def test_run_validates_a_table_before_loading_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = parquet_file(tmp_path)
    args = ["run", str(path), "--results", str(tmp_path / "r"), "--model", "no/such-model", "--column", "qustion"]
    code, _out, err = run_tokenlens(args, capsys)
    assert code == 2 and "no column 'qustion'" in err and not (tmp_path / "r/runs").exists()
