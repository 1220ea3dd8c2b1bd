"""The first page of a run reads what it shows, not the run: the same storage calls at 300 prompts as at 3,000."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from storage_backends import LocalStorage, ObjectInfo
from tests.ui.sample_runs import make_result
from tokenlens.batch import PromptRecord
from tokenlens.progress import start_record
from tokenlens.results import RunStore
from tokenlens.schema import ErrorRecord, RunManifest
from ui.http_api import create_app

PAGE = 100


class CountingStorage(LocalStorage):
    """A real local storage that counts each call a reader makes, and the bytes it reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: Counter[str] = Counter()
        self.bytes_read = 0
        self.listed: list[str] = []

    def get(self, key: str) -> bytes:
        self.calls["get"] += 1
        data = super().get(key)
        self.bytes_read += len(data)
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.calls["get_range"] += 1
        data = super().get_range(key, start, length)
        self.bytes_read += len(data)
        return data

    def exists(self, key: str) -> bool:
        self.calls["exists"] += 1
        return super().exists(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.calls["list"] += 1
        self.listed.append(prefix)
        return super().list(prefix)

    def reset(self) -> None:
        self.calls.clear()
        self.listed.clear()
        self.bytes_read = 0


def write_new_run(storage: LocalStorage, run_id: str, prompt_count: int) -> None:
    """A run as `submit` starts it (prompts.jsonl, progress record, run.json), its first 150 prompts with an
    outcome (every 10th failed), the rest pending."""
    store = RunStore(storage, run_id)
    ids = [f"q{i:06d}" for i in range(prompt_count)]
    store.write_prompts([PromptRecord(id=pid, prompt=f"prompt number {pid}, a little longer") for pid in ids])
    manifest = RunManifest(run_id=run_id, model="m", method="saliency", prompt_count=prompt_count, prompt_ids=ids)
    start_record(store, manifest)
    store.write_manifest(manifest)
    for index, pid in enumerate(ids[:150]):
        if index % 10 == 3:
            store.write_error(ErrorRecord(run_id=run_id, prompt_id=pid, prompt="p", error_type="E", message="boom"))
        else:
            store.write_result(make_result(run_id, pid, f"prompt number {pid}, a little longer"))
    store.flush_progress()


def first_visit(storage: CountingStorage, run_id: str) -> dict[str, Any]:
    storage.reset()
    with TestClient(create_app(storage)) as client:
        body: dict[str, Any] = client.get(f"/api/runs/{run_id}?limit={PAGE}").json()
    return body


def test_the_first_page_costs_the_same_at_300_and_3000_prompts(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    seen = {}
    for count in (300, 3000):
        write_new_run(storage, f"run-{count}", count)
        body = first_visit(storage, f"run-{count}")
        assert body["total"] == count and body["run"]["prompt_count"] == count
        assert (body["run"]["done"], body["run"]["failed"], body["run"]["pending"]) == (135, 15, count - 150)
        rows = body["prompts"]
        assert [row["prompt_id"] for row in rows] == [f"q{i:06d}" for i in range(PAGE)]
        assert [row["status"] for row in rows] == ["failed" if i % 10 == 3 else "done" for i in range(PAGE)]
        assert rows[0]["prompt"] == "prompt number q000000, a little longer"
        assert rows[3]["error"]["message"] == "boom"
        assert not any("/results/" in prefix or "/errors/" in prefix for prefix in storage.listed), "no run listing"
        seen[count] = dict(storage.calls)
        prompts_size = (tmp_path / "runs" / f"run-{count}" / "prompts.jsonl").stat().st_size
        # A row's status costs at most two existence checks; a failed row one read of its error record.
        assert storage.calls["exists"] <= 2 * PAGE
        if count == 3000:
            assert storage.bytes_read < prompts_size / 2, "only the head of prompts.jsonl is read"
    assert seen[300] == seen[3000], f"the first page's storage calls grew with the run: {seen}"


def test_a_page_seen_again_checks_no_done_row_again(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    write_new_run(storage, "again", 400)
    with TestClient(create_app(storage)) as client:
        first = client.get("/api/runs/again?limit=200").json()
        storage.reset()
        again = client.get("/api/runs/again?limit=200").json()
        assert again["prompts"] == first["prompts"]
        assert storage.calls["exists"] == 0, "done rows stay done, and the others wait for the counts to change"
        # A pending row that gets its result changes the counts: only the rows not done are checked again.
        store = RunStore(storage, "again")
        store.write_result(make_result("again", "q000150", "prompt number q000150, a little longer"))
        store.flush_progress()
        storage.reset()
        changed = client.get("/api/runs/again?limit=200").json()
    assert changed["prompts"][150]["status"] == "done" and changed["run"]["done"] == 136
    not_done_before = sum(row["status"] != "done" for row in first["prompts"])
    assert 0 < storage.calls["exists"] <= 2 * not_done_before


def test_deeper_pages_searches_and_filters_still_read_the_whole_prompt_set(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    write_new_run(storage, "deep", 2500)
    with TestClient(create_app(storage)) as client:
        deep = client.get("/api/runs/deep?offset=2400&limit=100").json()
        assert [row["prompt_id"] for row in deep["prompts"]][:2] == ["q002400", "q002401"]
        assert {row["status"] for row in deep["prompts"]} == {"pending"}
        found = client.get("/api/runs/deep?q=q00149").json()
        assert [row["prompt_id"] for row in found["prompts"]] == [f"q00149{i}" for i in range(10)]
        failed = client.get("/api/runs/deep?status=failed").json()
        assert failed["total"] == 15 and failed["prompts"][0]["prompt_id"] == "q000003"
        first = client.get("/api/runs/deep?limit=100").json()
        assert first["total"] == 2500 and first["prompts"][0]["prompt_id"] == "q000000"
