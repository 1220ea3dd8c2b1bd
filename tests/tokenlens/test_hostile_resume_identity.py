"""Hostile or careless resumes: a run's identity (dtype included) can't change under it, corrupt results are never
counted done and are attributed again (only those files replaced), a model that can't load writes nothing, and a
deterministic failure is an error record with its real reason at once, on tiny random models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from storage_backends import LocalStorage
from tests.cli_runner import run_tokenlens
from tokenlens.batch import BatchTask, PromptRecord
from tokenlens.errors import TokenLensError
from tokenlens.models import load_model
from tokenlens.pipeline import process_batch
from tokenlens.plan import check_resumable
from tokenlens.progress import read_progress, result_problem
from tokenlens.results import RunStore
from tokenlens.schema import RunManifest
from tokenlens.spec import RunSpec


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir: Path):  # type: ignore[no-untyped-def]
    return load_model(str(tiny_llama_dir), device="cpu")


def manifest(**changes: Any) -> RunManifest:
    base: dict[str, Any] = {"run_id": "r", "model": "m", "method": "saliency", "prompt_count": 1, "prompt_ids": ["a"]}
    return RunManifest(**{**base, **changes})


# --- identity -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "name"),
    [
        ({"dtype": "float32"}, {"dtype": "bfloat16"}, "dtype"),
        (
            {"generation_params": {"max_new_tokens": 8}},
            {"generation_params": {"max_new_tokens": 9}},
            "generation_params",
        ),
        ({"generation_params": {"do_sample": False}}, {"generation_params": {"do_sample": True}}, "generation_params"),
        (
            {"method_params": {"attributed_fn": "logprob"}},
            {"method_params": {"attributed_fn": "probability"}},
            "method_params",
        ),
        ({"chat_template": True}, {"chat_template": False}, "chat_template"),
        ({"engine": "native"}, {"engine": "inseq"}, "engine"),
    ],
)
def test_hostile_resume_with_other_numbers_is_refused(before: dict[str, Any], after: dict[str, Any], name: str) -> None:
    with pytest.raises(TokenLensError, match=f"already exists with {name}="):
        check_resumable(manifest(**before), manifest(**after), ["a"])


def test_a_dtype_left_to_the_workers_does_not_block_a_resume() -> None:
    # `submit` records no dtype (each worker's --dtype decides), so None on either side is no mismatch.
    check_resumable(manifest(dtype=None), manifest(dtype="bfloat16"), ["a"])
    check_resumable(manifest(dtype="float32"), manifest(dtype=None), ["a"])


def test_resuming_a_run_with_another_dtype_is_refused_by_the_cli_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    first = RunSpec(run_id="r", model="org/model", results_url=str(results), dtype="float32")
    RunStore(LocalStorage(results), "r").write_manifest(first.manifest(["p0001"], mode="embedded"))
    before = sorted(p.relative_to(results) for p in results.rglob("*"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    code, _out, err = run_tokenlens(
        [
            "run",
            str(prompts),
            "--model",
            "org/model",
            "--results",
            str(results),
            "--run-id",
            "r",
            "--dtype",
            "bfloat16",
        ],
        capsys,
    )
    assert code == 2 and "dtype='float32'" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before


# --- corrupt results ------------------------------------------------------------------------------------------------


def _batch(results: Path, ids: list[str], method: str = "saliency", **extra: Any) -> BatchTask:
    return BatchTask(
        run_id="r1",
        results_url=str(results),
        model="tiny",
        method=method,
        max_new_tokens=3,
        prompts=[PromptRecord(id=pid, prompt=f"Prompt {pid} about a fox") for pid in ids],
        **extra,
    )


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_json", "breaks_contract", "another_prompts"])
def test_hostile_corrupt_result_is_not_done_and_a_resume_replaces_only_it(
    tiny_llama: Any, tmp_path: Path, damage: str
) -> None:
    results = tmp_path / "results"
    store = RunStore(LocalStorage(results), "r1")
    store.write_manifest(manifest(run_id="r1", prompt_ids=["a", "b", "c"], prompt_count=3))
    assert sorted(process_batch(tiny_llama, _batch(results, ["a", "b", "c"])).done) == ["a", "b", "c"]
    files = {pid: results / f"runs/r1/results/{pid}.json" for pid in "abc"}
    good = {pid: path.read_bytes() for pid, path in files.items()}
    damaged = {
        "truncated": good["b"][: len(good["b"]) // 2],
        "empty": b"",
        "not_json": b"\x00\x01 not json",
        "breaks_contract": json.dumps({**json.loads(good["b"]), "data": {"input_tokens": []}}).encode(),
        "another_prompts": good["a"],  # a valid file, but prompt a's
    }[damage]
    files["b"].write_bytes(damaged)
    mtimes = {pid: files[pid].stat().st_mtime_ns for pid in "ac"}

    assert result_problem(damaged, run_id="r1", prompt_id="b") is not None
    verified = read_progress(store, verify=True)
    assert verified.corrupt_ids == {"b"} and verified.done_ids == {"a", "c"}
    assert verified.counts.pending == 0 and verified.counts.corrupt == 1 and verified.status_of("b") == "corrupt"

    report = process_batch(tiny_llama, _batch(results, ["a", "b", "c"]))
    assert report.done == ["b"] and sorted(report.skipped) == ["a", "c"]
    assert result_problem(files["b"].read_bytes(), run_id="r1", prompt_id="b") is None
    assert {pid: files[pid].stat().st_mtime_ns for pid in "ac"} == mtimes  # the others are untouched
    assert read_progress(store, verify=True).done_ids == {"a", "b", "c"}


def test_an_empty_result_counts_as_corrupt_without_reading_anything(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    store = RunStore(storage, "r1")
    store.write_manifest(manifest(run_id="r1", prompt_ids=["a"]))
    storage.put("runs/r1/results/a.json", b"")
    progress = read_progress(store)
    assert progress.corrupt_ids == {"a"} and not progress.done_ids and not progress.counts.complete


def test_status_and_runs_report_corrupt_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = LocalStorage(tmp_path)
    store = RunStore(storage, "r1")
    store.write_manifest(manifest(run_id="r1", prompt_ids=["a", "b"], prompt_count=2))
    storage.put("runs/r1/results/a.json", b'{"metadata": {"prompt": "cut off')
    code, out, _err = run_tokenlens(
        ["status", "r1", "--results", str(tmp_path), "--broker", "redis://127.0.0.1:1/0", "--verify"], capsys
    )
    assert code == 0 and "done       0/2" in out and "corrupt    1 (a)" in out
    code, out, _err = run_tokenlens(["runs", "--results", str(tmp_path), "--verify", "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["corrupt"] == 1 and json.loads(out)[0]["results"] == 0


def test_a_corrupt_run_json_is_one_line_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    LocalStorage(tmp_path).put("runs/r1/run.json", b'{"run_id": "r1", "mod')
    code, _out, err = run_tokenlens(
        ["status", "r1", "--results", str(tmp_path), "--broker", "redis://127.0.0.1:1/0"], capsys
    )
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "unreadable runs/r1/run.json" in line and "Traceback" not in err


# --- a model that can't load writes nothing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "device", "expected"),
    [
        ("./no-such-model-dir", "cpu", "model directory ./no-such-model-dir does not exist"),
        ("missing.gguf", "cpu", "GGUF file missing.gguf does not exist"),
        ("some-org/not-in-the-cache", "cpu", "not in the local Hugging Face cache"),
        ("TINY", "cuda:7", "cuda:7"),
    ],
)
def test_a_model_that_cannot_load_writes_no_run_json(
    model: str,
    device: str,
    expected: str,
    tiny_llama_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    model = str(tiny_llama_dir) if model == "TINY" else model
    args = ["run", str(prompts), "--model", model, "--device", device, "--results", str(tmp_path / "results")]
    code, _out, err = run_tokenlens(args, capsys)
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


# --- deterministic failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "extra", "error_type"),
    [
        ("no_such_method", {}, "UnknownMethodError"),
        ("saliency", {"method_params": {"n_steps": 4}}, "MethodOptionError"),
        ("saliency", {"engine": "warp-drive"}, "MethodOptionError"),
        # A method TokenLens refuses (registry.REFUSED_INSEQ_METHODS), in a batch a worker takes anyway.
        ("value_zeroing", {"engine": "inseq"}, "MethodOptionError"),
    ],
)
def test_deterministic_failures_are_error_records_at_once(
    tiny_llama: Any, tmp_path: Path, method: str, extra: dict[str, Any], error_type: str
) -> None:
    results = tmp_path / "results"
    report = process_batch(
        tiny_llama, _batch(results, ["a"], method=method, **extra), attempts={"a": 1}, max_attempts=3
    )
    assert report.failed == ["a"] and not report.retry and not report.done
    error = RunStore(LocalStorage(results), "r1").read_error("a")
    assert error.error_type == error_type and error.attempts == 1 and error.message
    assert not os.path.exists(results / "runs/r1/results/a.json")


def test_the_ui_reports_a_corrupt_result_and_lists_it_so_from_then_on(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from tests.ui.sample_runs import SamplePrompt, write_run
    from ui.http_api import create_app

    storage = LocalStorage(tmp_path)
    write_run(storage, "r1", [SamplePrompt("p1", "The quick brown fox"), SamplePrompt("p2", "Paris is the capital of")])
    whole = storage.get("runs/r1/results/p2.json")
    storage.put("runs/r1/results/p2.json", whole[: len(whole) // 2])
    with TestClient(create_app(storage)) as client:
        response = client.get("/api/runs/r1/results/p2")
        assert response.status_code == 422 and "corrupt" in response.json()["error"]
        assert client.get("/api/runs/r1/results/p1").status_code == 200
        statuses = {p["prompt_id"]: p["status"] for p in client.get("/api/runs/r1").json()["prompts"]}
        assert statuses == {"p1": "done", "p2": "corrupt"}
        (run,) = client.get("/api/runs").json()["runs"]
        assert (run["done"], run["corrupt"], run["complete"]) == (1, 1, False)


@pytest.mark.integration
def test_resubmitting_a_run_queues_a_corrupt_result_again_and_only_it(tmp_path: Path, broker_url: str) -> None:
    import base64

    import redis

    from producer.submit import submit_run
    from tests.ui.sample_runs import make_result
    from tokenlens.queue import queue_name, session_of

    results, prompts = tmp_path / "results", tmp_path / "p.jsonl"
    prompts.write_text("".join(f'{{"id": "{pid}", "prompt": "Prompt {pid}"}}\n' for pid in "abc"))
    spec = RunSpec(run_id="r1", model="org/model", results_url=str(results))
    assert submit_run(spec, prompts, broker_url=broker_url).enqueued_prompts == 3
    store = RunStore(LocalStorage(results), "r1")
    for pid in "abc":
        store.write_result(make_result("r1", pid, f"Prompt {pid}"))
    whole = store.read_result_bytes("b")
    store.storage.put(store.key("results", "b"), whole[: len(whole) // 3])

    report = submit_run(spec, prompts, broker_url=broker_url)
    assert report.resumed and report.enqueued_prompts == 1 and report.already_done == 2
    # Resume starts a new session instead of sweeping the queue: the first submit's batch stays queued, and a
    # worker drops it as stale when it pops it (tests/integration/test_queue_contract.py). Only the new session's
    # batch is attributed, and it holds the corrupt prompt alone.
    bodies = [
        json.loads(base64.b64decode(json.loads(message)["body"]))
        for message in redis.Redis.from_url(broker_url).lrange(queue_name("org/model"), 0, -1)
    ]
    by_session = {session_of(body[1]["batch_id"]): body for body in bodies}
    assert len(bodies) == 2 and len(by_session) == 2
    newest = by_session[max(s for s in by_session if s is not None)]
    assert [p["id"] for p in newest[0][0]["prompts"]] == ["b"]
