"""RunStore: the storage layout of a run, create-only results, and state rebuilt from storage alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_backends import LocalStorage
from tokenlens.batch import PromptRecord
from tokenlens.errors import RunNotFoundError, TokenLensError
from tokenlens.progress import read_progress
from tokenlens.results import RunStore, list_run_ids, prompt_ids_of_jsonl
from tokenlens.schema import AnalysisResult, ErrorRecord, RunManifest


def make_result(prompt_id: str, value: float = 1.0) -> AnalysisResult:
    return AnalysisResult.model_validate(
        {
            "metadata": {"llm_id": "m", "prompt": "p", "prompt_id": prompt_id, "run_id": "r1"},
            "data": {
                "input_tokens": [{"token": "a", "token_id": 1, "clean_token": "a"}],
                "output_tokens": [{"token": "b", "token_id": 2, "clean_token": "b"}],
                "association_matrix": [[value, 0.0]],
                "normalized_association": [[1.0, 0.0]],
            },
        }
    )


def test_layout_create_only_and_counts(tmp_path: Path) -> None:
    store = RunStore(LocalStorage(tmp_path), "r1")
    store.write_manifest(RunManifest(run_id="r1", model="m", method="saliency", prompt_count=3))
    assert store.write_result(make_result("a", 1.0)) is True
    assert store.write_result(make_result("a", 9.0)) is False  # never overwritten
    assert store.read_result("a").data.association_matrix == [[1.0, 0.0]]
    store.write_error(ErrorRecord(run_id="r1", prompt_id="b", prompt="p", error_type="E", message="boom"))
    store.write_inseq("a", '{"native": true}')
    assert (tmp_path / "runs/r1/results/a.json").is_file()
    assert (tmp_path / "runs/r1/errors/b.json").is_file()
    assert (tmp_path / "runs/r1/inseq/a.json").is_file()
    counts = read_progress(store).counts
    assert (counts.prompt_count, counts.done, counts.failed, counts.pending) == (3, 1, 1, 1)
    assert list(list_run_ids(LocalStorage(tmp_path))) == ["r1"]


def test_missing_run_and_unsafe_ids(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(RunNotFoundError, match="tokenlens runs"):
        RunStore(storage, "nope").read_manifest()
    with pytest.raises(TokenLensError, match="not a safe file name"):
        RunStore(storage, "../escape")
    with pytest.raises(TokenLensError, match="not a safe file name"):
        RunStore(storage, "ok").key("results", "a/../../b")


def test_prompt_set_round_trips_with_the_run(tmp_path: Path) -> None:
    store = RunStore(LocalStorage(tmp_path), "r1")
    assert store.read_prompts() == {}
    records = [PromptRecord(id="a", prompt="Hi\nthere"), PromptRecord(id="b", prompt="x", target="y", max_new_tokens=3)]
    store.write_prompts(records)
    assert store.read_prompts() == {"a": records[0], "b": records[1]}
    assert (tmp_path / "runs/r1/prompts.jsonl").read_text().count("\n") == 2


def test_prompt_ids_come_in_order_from_prompts_jsonl_however_it_is_laid_out(tmp_path: Path) -> None:
    store = RunStore(LocalStorage(tmp_path), "r1")
    records = [PromptRecord(id=pid, prompt=f'say "{pid}"\n{{"id":"x"}}') for pid in ("z9", "a.1", "m_2", "B-3")]
    store.write_prompts(records)
    assert store.prompt_ids() == ["z9", "a.1", "m_2", "B-3"]
    assert prompt_ids_of_jsonl((tmp_path / "runs/r1/prompts.jsonl").read_bytes()) == store.prompt_ids()
    # Written by hand: other key order, spaces, a blank line. Read line by line, same answer.
    by_hand = b'{"prompt": "p", "id": "z9"}\n\n { "id" : "a.1", "prompt": "q"}\n{"id":"m_2","prompt":"r"}\n'
    assert prompt_ids_of_jsonl(by_hand) == ["z9", "a.1", "m_2"]
    assert prompt_ids_of_jsonl(b"") == []
