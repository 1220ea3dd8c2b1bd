"""One counting rule: `tokenlens status`, `tokenlens runs` and the UI's HTTP API agree on the same run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from producer.cli import describe_status
from producer.fetch import describe_runs
from producer.submit import run_status
from storage_backends import LocalStorage, ObjectInfo
from tests.fixtures.redis_server import free_port
from tests.ui.sample_runs import make_result, write_legacy_manifest
from tokenlens import progress
from tokenlens.batch import PromptRecord
from tokenlens.errors import TokenLensError
from tokenlens.plan import plan_run
from tokenlens.progress import RunCounts, mark_cancelled, read_progress, run_counts, start_record
from tokenlens.results import RunStore
from tokenlens.schema import ErrorRecord, RunManifest
from tokenlens.spec import RunSpec
from ui.http_api import create_app


def _error(prompt_id: str) -> ErrorRecord:
    return ErrorRecord(run_id="mixed", prompt_id=prompt_id, prompt="p", error_type="E", message="boom")


def write_mixed_run(root: Path) -> RunStore:
    """A run where the rules used to differ: storage holds a result run.json does not list.

    run.json lists a, b, c; a has a result (and a stale error record, superseded), b failed, c is pending,
    and "extra" has a result although run.json does not list it.
    """
    store = RunStore(LocalStorage(root), "mixed")
    # An older run: its run.json lists the prompt ids, and it has no prompts.jsonl.
    write_legacy_manifest(
        store, RunManifest(run_id="mixed", model="m", method="saliency", prompt_count=3, prompt_ids=["a", "b", "c"])
    )
    for prompt_id in ("a", "extra"):
        store.write_result(make_result("mixed", prompt_id, f"prompt {prompt_id}"))
    store.write_error(_error("a"))
    store.write_error(_error("b"))
    return store


def test_the_rule() -> None:
    assert RunCounts(prompt_count=4, done=2, failed=1).pending == 1
    assert RunCounts(prompt_count=2, done=2, failed=1).pending == 0  # never negative
    # A corrupt result is no outcome to count as done, nor work a worker will do: it waits for a resume.
    corrupt = RunCounts(prompt_count=3, done=1, failed=1, corrupt=1)
    assert corrupt.pending == 0 and not corrupt.complete


def test_status_runs_and_the_ui_agree_on_the_same_run(tmp_path: Path) -> None:
    store = write_mixed_run(tmp_path)
    progress = read_progress(store)
    expected = RunCounts(prompt_count=4, done=2, failed=1, corrupt=0)
    assert progress.counts == expected
    assert [progress.status_of(p) for p in ("a", "b", "c", "extra")] == ["done", "failed", "pending", "done"]

    # tokenlens status (Redis unreachable: storage alone decides, and says so)
    status = run_status("mixed", results_url=str(tmp_path), broker_url=f"redis://127.0.0.1:{free_port()}/0")
    assert status.counts == expected and not status.finished
    assert "  done       2/4" in describe_status(status)

    # tokenlens runs
    (row,) = describe_runs(LocalStorage(tmp_path))
    assert (row.prompts, row.results, row.errors, row.corrupt, row.remaining) == (4, 2, 1, 0, 1)

    # the UI's HTTP API: the run list and the run page
    with TestClient(create_app(LocalStorage(tmp_path))) as client:
        (listed,) = client.get("/api/runs").json()["runs"]
        detail = client.get("/api/runs/mixed").json()
    for summary in (listed, detail["run"]):
        assert (summary["prompt_count"], summary["done"], summary["failed"], summary["corrupt"]) == (4, 2, 1, 0)
        assert (summary["pending"], summary["complete"]) == (1, False)
    statuses = {p["prompt_id"]: p["status"] for p in detail["prompts"]}
    assert statuses == {"a": "done", "b": "failed", "c": "pending", "extra": "done"}


class CountingStorage(LocalStorage):
    """A real local storage that counts the listings it serves (to prove what a count does not read)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listed: list[str] = []

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.listed.append(prefix)
        return super().list(prefix)


def _new_run(storage: LocalStorage, run_id: str, prompt_count: int) -> RunStore:
    store = RunStore(storage, run_id)
    ids = [f"p{i}" for i in range(prompt_count)]
    manifest = RunManifest(run_id=run_id, model="m", method="saliency", prompt_count=prompt_count, prompt_ids=ids)
    store.write_prompts([PromptRecord(id=pid, prompt=f"prompt {pid}") for pid in ids])
    start_record(store, manifest)
    store.write_manifest(manifest)
    return store


def _fail(store: RunStore, prompt_id: str) -> None:
    store.write_error(ErrorRecord(run_id=store.run_id, prompt_id=prompt_id, prompt="p", error_type="E", message="x"))


def test_counts_come_from_the_progress_record_without_listing_results(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    store = _new_run(storage, "recorded", 5)
    for prompt_id in ("p0", "p1", "p2"):
        store.write_result(make_result("recorded", prompt_id, f"prompt {prompt_id}"))
    _fail(store, "p3")
    _fail(store, "p3")  # rewritten: still one failed prompt
    storage.listed.clear()
    counts = run_counts(store)
    assert counts == RunCounts(prompt_count=5, done=3, failed=1, corrupt=0)
    assert storage.listed == ["runs/recorded/progress/"], "only the record's few objects are listed"
    assert counts == read_progress(store).counts, "the record agrees with the listing rule"

    # A failed prompt that succeeds on resume: its error is cleared, the result counted once.
    store.clear_error("p3")
    store.write_result(make_result("recorded", "p3", "prompt p3"))
    store.write_result(make_result("recorded", "p3", "prompt p3"))  # a redelivered batch: create-only, not counted
    assert run_counts(store) == RunCounts(prompt_count=5, done=4, failed=0, corrupt=0) == read_progress(store).counts


def test_a_second_writer_process_keeps_its_own_tally(tmp_path: Path) -> None:
    store = _new_run(LocalStorage(tmp_path), "two-writers", 4)
    store.write_result(make_result("two-writers", "p0", "prompt p0"))
    child = subprocess.run(
        [sys.executable, "-c", (
            "import sys; from storage_backends import LocalStorage; from tokenlens.results import RunStore;"
            "from tests.ui.sample_runs import make_result, write_legacy_manifest;"
            "store = RunStore(LocalStorage(sys.argv[1]), 'two-writers');"
            "[store.write_result(make_result('two-writers', p, 'prompt ' + p)) for p in ('p1', 'p2')]"
        ), str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-2000:]
    tallies = [info.key for info in LocalStorage(tmp_path).list("runs/two-writers/progress/w-")]
    assert len(tallies) == 2
    assert run_counts(store) == RunCounts(prompt_count=4, done=3, failed=0, corrupt=0)


def test_a_missing_record_is_rebuilt_once_from_storage(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    store = write_mixed_run(tmp_path)  # written without a record, like a run from before it existed
    store = RunStore(storage, "mixed")
    assert run_counts(store) == RunCounts(prompt_count=4, done=2, failed=1, corrupt=0)
    assert "runs/mixed/results/" in storage.listed
    storage.listed.clear()
    assert run_counts(store) == RunCounts(prompt_count=4, done=2, failed=1, corrupt=0)
    assert storage.listed == ["runs/mixed/progress/"], "rebuilt once, then read from the record"


def test_a_result_whose_tally_was_lost_is_caught_up_when_the_run_goes_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path)
    store = _new_run(storage, "crashed", 3)
    store.write_result(make_result("crashed", "p0", "prompt p0"))
    # A writer killed between creating a result and storing its tally: storage has it, the record does not.
    raw = store.read_result_bytes("p0").replace(b'"p0"', b'"p1"').replace(b"prompt p0", b"prompt p1")
    storage.put(store.key("results", "p1"), raw)
    assert run_counts(store).done == 1, "while writers are active the record is trusted"
    monkeypatch.setattr(progress, "QUIET_S", 0.0)
    assert run_counts(store).done == 2, "quiet since the last change: rebuilt from storage once"
    storage.put(store.key("results", "p2"), raw.replace(b'"p1"', b'"p2"'))
    monkeypatch.setattr(progress, "QUIET_S", 3600.0)
    assert run_counts(store).done == 2, "no change since the rebuild, and not quiet long enough: no listing"


def test_a_removed_corrupt_result_is_not_counted_twice(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    store = _new_run(storage, "healed", 2)
    storage.put(store.key("results", "p0"), b"")  # truncated by hand: the listing rule counts it corrupt
    read_progress(store)  # e.g. `tokenlens status --verify`: the record is rebuilt with it
    assert run_counts(store) == RunCounts(prompt_count=2, done=0, failed=0, corrupt=1)
    store.delete_result("p0")  # a resume removes it ...
    store.write_result(make_result("healed", "p0", "prompt p0"))  # ... and attributes it again
    assert run_counts(store) == RunCounts(prompt_count=2, done=1, failed=0, corrupt=0) == read_progress(store).counts


def test_a_cancelled_run_says_so_to_readers_without_redis(tmp_path: Path) -> None:
    store = _new_run(LocalStorage(tmp_path), "stopped", 3)
    store.write_result(make_result("stopped", "p0", "prompt p0"))
    mark_cancelled(store, True)
    assert run_counts(store).cancelled and read_progress(store).counts.cancelled
    with TestClient(create_app(LocalStorage(tmp_path))) as client:
        run = client.get("/api/runs/stopped/counts").json()["run"]
    assert run["cancelled"] is True and run["pending"] == 2
    mark_cancelled(store, False)  # a resume
    assert not run_counts(store).cancelled


def test_a_new_runs_run_json_holds_no_prompt_id_list(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"id": "q{i}", "prompt": "prompt {i}"}}\n' for i in (3, 1, 2)))
    spec = RunSpec(run_id="new", model="m", method="saliency", results_url=str(tmp_path / "results"))
    plan = plan_run(spec, prompts, mode="distributed")
    plan.save_manifest()
    raw = json.loads(plan.storage.get("runs/new/run.json"))
    assert "prompt_ids" not in raw and raw["prompt_count"] == 3
    assert plan.store.prompt_ids() == ["q3", "q1", "q2"], "the ids, in order, come from prompts.jsonl"
    plan.store.write_result(make_result("new", "q1", "prompt 1"))
    expected = RunCounts(prompt_count=3, done=1, failed=0)
    assert run_counts(plan.store) == expected == read_progress(plan.store).counts
    (row,) = describe_runs(plan.storage)
    assert (row.prompts, row.results, row.remaining) == (3, 1, 2)
    with TestClient(create_app(plan.storage)) as client:
        page = client.get("/api/runs/new").json()
    assert [(p["prompt_id"], p["status"]) for p in page["prompts"]] == [
        ("q3", "pending"),
        ("q1", "done"),
        ("q2", "pending"),
    ]
    # A resume still compares the prompt set with the stored one.
    prompts.write_text('{"id": "q3", "prompt": "prompt 3"}\n')
    with pytest.raises(TokenLensError, match="different prompt set"):
        plan_run(spec, prompts, mode="distributed")


def test_an_older_run_json_with_prompt_ids_is_read_and_its_summary_skips_them(tmp_path: Path) -> None:
    store = RunStore(LocalStorage(tmp_path), "light")
    ids = [f"p{i}" for i in range(50)]
    write_legacy_manifest(
        store, RunManifest(run_id="light", model="m", method="saliency", prompt_count=50, prompt_ids=ids)
    )
    assert store.prompt_ids() == ids, "a run without prompts.jsonl: run.json's list"
    full, light = store.read_manifest(), store.read_manifest(prompt_ids=False)
    assert len(full.prompt_ids) == 50 and light.prompt_ids == []
    assert light.model_copy(update={"prompt_ids": full.prompt_ids}) == full
    # A "source" that spells the key out is never where the list is cut.
    odd = full.model_copy(update={"run_id": "odd", "source": '"prompt_ids": [x]'})
    LocalStorage(tmp_path).put("runs/odd/run.json", odd.model_dump_json().encode())
    assert RunStore(LocalStorage(tmp_path), "odd").read_manifest(prompt_ids=False) == odd.model_copy(
        update={"prompt_ids": []}
    )
