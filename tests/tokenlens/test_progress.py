"""One counting rule: `tokenlens status`, `tokenlens runs` and the UI's HTTP API agree on the same run."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from producer.cli import describe_status
from producer.fetch import describe_runs
from producer.submit import run_status
from storage_backends import LocalStorage
from tests.fixtures.redis_server import free_port
from tests.ui.sample_runs import make_result
from tokenlens.progress import RunCounts, read_progress
from tokenlens.results import RunStore
from tokenlens.schema import ErrorRecord, RunManifest
from ui.http_api import create_app


def _error(prompt_id: str) -> ErrorRecord:
    return ErrorRecord(run_id="mixed", prompt_id=prompt_id, prompt="p", error_type="E", message="boom")


def write_mixed_run(root: Path) -> RunStore:
    """A run where the rules used to differ: storage holds a result run.json does not list.

    run.json lists a, b, c; a has a result (and a stale error record, superseded), b failed, c is pending,
    and "extra" has a result although run.json does not list it.
    """
    store = RunStore(LocalStorage(root), "mixed")
    store.write_manifest(
        RunManifest(run_id="mixed", model="m", method="saliency", prompt_count=3, prompt_ids=["a", "b", "c"])
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
