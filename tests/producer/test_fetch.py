"""`tokenlens fetch` and `tokenlens runs`: on local storage (fast) and from a real S3 server (integration)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from producer.fetch import FileOutcome, fetch_run, plan_fetch
from storage_backends import LocalStorage, Storage, open_storage
from storage_backends.s3 import S3Storage
from tests.cli_runner import run_tokenlens as run_cli
from tests.fixtures.seaweedfs import WeedServer, apply_s3_env, free_ports
from tokenlens.errors import RunNotFoundError, TokenLensError
from tokenlens.result_codec import decode_result
from tokenlens.results import RunStore
from tokenlens.schema import AnalysisData, AnalysisMetadata, AnalysisResult, ErrorRecord, RunManifest, TokenInfo


def make_result(run_id: str, prompt_id: str) -> AnalysisResult:
    tokens_in = [TokenInfo(token=f"Ġin{i}", token_id=i, clean_token=f" in{i}") for i in range(3)]
    tokens_out = [TokenInfo(token=f"Ġout{i}", token_id=100 + i, clean_token=f" out{i}") for i in range(2)]
    matrix = [[0.5, -1.0, 0.25, 0.0, 0.0], [0.1, 0.2, 0.4, 0.8, 0.0]]
    return AnalysisResult(
        metadata=AnalysisMetadata(llm_id="tiny", prompt=f"prompt {prompt_id}", run_id=run_id, prompt_id=prompt_id),
        data=AnalysisData(
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            association_matrix=matrix,
            normalized_association=[[v / max(abs(x) for x in row) for v in row] for row in matrix],
        ),
    )


def populate_run(
    storage: Storage, run_id: str, *, results: int, errors: int = 0, inseq: int = 0, model: str = "tiny-llama"
) -> dict[str, bytes]:
    """Write a run through RunStore; return {path under DEST: bytes} of every file a full fetch should bring."""
    store = RunStore(storage, run_id)
    prompt_ids = [f"p{i:03d}" for i in range(results + errors)]
    store.write_manifest(
        RunManifest(run_id=run_id, model=model, method="saliency", prompt_count=len(prompt_ids), prompt_ids=prompt_ids)
    )
    for prompt_id in prompt_ids[:results]:
        assert store.write_result(make_result(run_id, prompt_id))
    for prompt_id in prompt_ids[:inseq]:
        store.write_inseq(prompt_id, json.dumps({"native": prompt_id, "pad": "x" * 500}))
    for prompt_id in prompt_ids[results:]:
        store.write_error(
            ErrorRecord(run_id=run_id, prompt_id=prompt_id, prompt="p", error_type="PromptTooLongError", message="long")
        )
    prefix = f"runs/{run_id}/"
    # The progress record (runs/<id>/progress/) is bookkeeping for counting, not a file of the run: not fetched.
    listed = [info for info in storage.list(prefix) if not info.key.startswith(f"{prefix}progress/")]
    return {info.key[len("runs/") :]: storage.get(info.key) for info in listed}


def files_under(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def leftover_temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


@pytest.fixture
def local_results(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "results")


# fetch_run, on local storage ---------------------------------------------------------------------


def test_fetch_mirrors_the_run_layout(local_results: LocalStorage, tmp_path: Path) -> None:
    expected = populate_run(local_results, "run-1", results=5, errors=2, inseq=3)
    populate_run(local_results, "run-2", results=2)  # another run: must not come along
    dest = tmp_path / "dest"
    summary = fetch_run(local_results, plan_fetch(local_results, "run-1"), dest, jobs=4)
    assert summary.ok
    assert (summary.downloaded, summary.skipped, summary.failures) == (len(expected), 0, [])
    assert summary.bytes_downloaded == sum(len(data) for data in expected.values())
    assert files_under(dest) == expected
    assert {"run-1/run.json", "run-1/results/p000.json", "run-1/inseq/p000.json", "run-1/errors/p005.json"} <= set(
        expected
    )


def test_fetch_include_selects_kinds(local_results: LocalStorage, tmp_path: Path) -> None:
    expected = populate_run(local_results, "run-1", results=3, errors=1, inseq=2)
    summary = fetch_run(local_results, plan_fetch(local_results, "run-1", ["errors"]), tmp_path / "dest")
    wanted = {
        path: data for path, data in expected.items() if path.startswith("run-1/errors/") or path.endswith("run.json")
    }
    assert files_under(tmp_path / "dest") == wanted
    assert summary.downloaded == 2


def test_fetch_resumes_a_partial_destination(local_results: LocalStorage, tmp_path: Path) -> None:
    expected = populate_run(local_results, "run-1", results=8, errors=1)
    dest = tmp_path / "dest"
    # What an interrupted fetch (or a tampered copy) leaves: some good files, one same-size corrupt
    # file, one truncated file.
    good = ["run-1/run.json", "run-1/results/p000.json", "run-1/results/p001.json", "run-1/results/p002.json"]
    for path in good:
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).write_bytes(expected[path])
    corrupt = expected["run-1/results/p003.json"]
    (dest / "run-1/results/p003.json").write_bytes(b"X" + corrupt[1:])
    (dest / "run-1/results/p004.json").write_bytes(expected["run-1/results/p004.json"][:10])

    summary = fetch_run(local_results, plan_fetch(local_results, "run-1"), dest, jobs=3)
    assert summary.ok
    assert summary.skipped == len(good)
    assert summary.downloaded == len(expected) - len(good)
    assert files_under(dest) == expected

    again = fetch_run(local_results, plan_fetch(local_results, "run-1"), dest)
    assert (again.downloaded, again.skipped) == (0, len(expected))


def test_unknown_run_id_fails_before_anything_is_written(local_results: LocalStorage, tmp_path: Path) -> None:
    populate_run(local_results, "run-1", results=1)
    with pytest.raises(RunNotFoundError, match=r"run 'nope' not found.*tokenlens runs"):
        plan_fetch(local_results, "nope")
    with pytest.raises(TokenLensError, match="not a safe file name"):
        plan_fetch(local_results, "../run-1")
    assert not (tmp_path / "dest").exists()


def test_ctrl_c_stops_a_fetch_promptly_and_leaves_only_whole_files(local_results: LocalStorage, tmp_path: Path) -> None:
    expected = populate_run(local_results, "run-1", results=120)
    dest = tmp_path / "dest"
    finished: list[FileOutcome] = []

    def interrupt_after_three(outcome: FileOutcome) -> None:
        finished.append(outcome)
        if len(finished) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch_run(local_results, plan_fetch(local_results, "run-1"), dest, jobs=2, on_file=interrupt_after_three)
    fetched = files_under(dest)
    # What was reported, plus what finished or was running meanwhile: a handful, not the 121 queued.
    assert 3 <= len(fetched) <= 10
    assert all(expected[path] == data for path, data in fetched.items())
    assert leftover_temp_files(dest) == []


def test_unwritable_destination_is_a_clear_error(local_results: LocalStorage, tmp_path: Path) -> None:
    populate_run(local_results, "run-1", results=1)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(TokenLensError, match=r"can't create the destination .*--dest"):
        fetch_run(local_results, plan_fetch(local_results, "run-1"), tmp_path / "a-file" / "sub")


# the CLI -------------------------------------------------------------------------------------------


def test_fetch_command_summary_and_resume(
    local_results: LocalStorage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = populate_run(local_results, "run-1", results=4, errors=1, inseq=2)
    dest = tmp_path / "dest"
    args = ["fetch", "run-1", "--results", local_results.url, "--dest", str(dest), "--jobs", "2"]
    code, out, _ = run_cli([*args, "--include", "results"], capsys)
    assert code == 0
    assert "5 downloaded" in out and "0 already there" in out and "0 failed" in out
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    assert f"{len(expected) - 5} downloaded" in out and "5 already there" in out
    assert files_under(dest) == expected


def test_fetch_command_errors_are_clear(
    local_results: LocalStorage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    populate_run(local_results, "run-1", results=1)
    code, _, err = run_cli(["fetch", "nope", "--results", local_results.url, "--dest", str(tmp_path / "d")], capsys)
    assert code == 2 and "run 'nope' not found" in err
    code, _, err = run_cli(["fetch", "run-1", "--results", str(tmp_path / "missing"), "--dest", str(tmp_path)], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(["fetch", "run-1", "--results", "gs://bucket/x"], capsys)
    assert code == 2 and "unknown results URL scheme 'gs'" in err
    code, _, err = run_cli(["fetch", "run-1", "--results", local_results.url, "--include", "logs"], capsys)
    assert code == 2 and "'logs' is not one of" in err
    assert not (tmp_path / "d").exists()


def test_runs_command_table_and_json(local_results: LocalStorage, capsys: pytest.CaptureFixture[str]) -> None:
    populate_run(local_results, "run-a", results=3, errors=1, model="model-a")
    populate_run(local_results, "run-b", results=1, model="model-b")
    code, out, _ = run_cli(["runs", "--results", local_results.url], capsys)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["RUN", "ID", "MODEL", "METHOD", "PROMPTS", "RESULTS", "ERRORS", "CORRUPT", "CREATED"]
    by_id = {row.split()[0]: row.split() for row in rows}
    assert by_id["run-a"][1:7] == ["model-a", "saliency", "4", "3", "1", "0"]
    assert by_id["run-b"][1:7] == ["model-b", "saliency", "1", "1", "0", "0"]

    code, out, _ = run_cli(["runs", "--results", local_results.url, "--json"], capsys)
    listed = {row["run_id"]: row for row in json.loads(out)}
    assert set(listed) == {"run-a", "run-b"}
    assert (listed["run-a"]["prompts"], listed["run-a"]["results"], listed["run-a"]["errors"]) == (4, 3, 1)
    assert listed["run-a"]["created_at"] == RunStore(local_results, "run-a").read_manifest().created_at


def test_runs_command_reports_a_broken_manifest(
    local_results: LocalStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    populate_run(local_results, "good", results=1)
    local_results.put("runs/broken/run.json", b"{not json")
    code, out, _ = run_cli(["runs", "--results", local_results.url], capsys)
    assert code == 0
    assert "unreadable run.json" in next(line for line in out.splitlines() if line.startswith("broken"))
    assert any(line.startswith("good") for line in out.splitlines())


def test_runs_command_uses_tokenlens_results_then_dot_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    populate_run(LocalStorage(tmp_path / "elsewhere"), "from-env", results=1)
    populate_run(LocalStorage(tmp_path / "results"), "from-cwd", results=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENLENS_RESULTS", str(tmp_path / "elsewhere"))
    _, out, _ = run_cli(["runs"], capsys)
    assert "from-env" in out and "from-cwd" not in out
    monkeypatch.delenv("TOKENLENS_RESULTS")
    _, out, _ = run_cli(["runs"], capsys)
    assert "from-cwd" in out and "from-env" not in out
    empty = tmp_path / "empty"
    empty.mkdir()
    _, out, _ = run_cli(["runs", "--results", str(empty)], capsys)
    assert out.strip() == f"no runs under {empty}"


# from a real S3 server ------------------------------------------------------------------------------


@pytest.mark.integration
def test_fetch_and_runs_from_s3(s3_results_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = populate_run(open_storage(s3_results_url), "s3run", results=6, errors=1, inseq=2)
    dest = tmp_path / "dest"
    args = ["fetch", "s3run", "--results", s3_results_url, "--dest", str(dest)]
    code, out, _ = run_cli([*args, "--include", "results"], capsys)
    assert code == 0 and "7 downloaded" in out
    (dest / "s3run/results/p000.json").write_bytes(b"#" * len(expected["s3run/results/p000.json"]))  # same size
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    assert "4 downloaded" in out and "6 already there" in out  # 1 error + 2 inseq + the corrupted result
    assert files_under(dest) == expected

    code, out, _ = run_cli(["runs", "--results", s3_results_url, "--json"], capsys)
    (row,) = json.loads(out)
    assert (row["run_id"], row["prompts"], row["results"], row["errors"]) == ("s3run", 7, 6, 1)

    code, _, err = run_cli(["fetch", "missing-run", "--results", s3_results_url, "--dest", str(dest)], capsys)
    assert code == 2 and "run 'missing-run' not found" in err


@pytest.mark.integration
def test_compact_results_fetched_from_s3_stay_compact_and_read_back(
    s3_results_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = open_storage(s3_results_url)
    store = RunStore(storage, "packed")
    store.write_manifest(RunManifest(run_id="packed", model="tiny", method="saliency", prompt_count=2))
    for prompt_id in ("a", "b"):
        assert store.write_result(make_result("packed", prompt_id), "compact")
    dest = tmp_path / "dest"
    args = ["fetch", "packed", "--results", s3_results_url, "--dest", str(dest)]
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "3 downloaded" in out
    fetched = (dest / "packed/results/a.json").read_bytes()
    assert fetched == storage.get("runs/packed/results/a.json") and fetched[:2] == b"\x1f\x8b"
    assert decode_result(fetched).data.output_tokens == make_result("packed", "a").data.output_tokens
    code, out, _ = run_cli(args, capsys)  # the object's ETag is the MD5 of the gzip bytes: nothing to fetch again
    assert code == 0 and "0 downloaded" in out and "3 already there" in out


@pytest.mark.integration
def test_commands_fail_fast_on_an_unreachable_endpoint(
    s3_env: WeedServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (dead_port,) = free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead_port}")
    for command in (["runs"], ["fetch", "some-run"]):
        code, out, err = run_cli([*command, "--results", f"s3://{s3_env.bucket}/x"], capsys)
        assert code == 2, command
        assert f"cannot reach S3 endpoint http://127.0.0.1:{dead_port}" in err
        assert out == ""


@pytest.mark.integration
def test_fetch_interrupted_by_a_dead_server_then_resumed(
    weed_server_factory: Callable[[], WeedServer], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = weed_server_factory()
    apply_s3_env(monkeypatch, server)
    url = f"s3://{server.bucket}/interrupted"
    expected = populate_run(open_storage(url), "big", results=30, errors=4, inseq=6)
    dest = tmp_path / "dest"
    storage = S3Storage.from_url(url, unavailable_after_s=2.0)
    plan = plan_fetch(storage, "big")
    assert len(plan.objects) == len(expected)

    seen: list[FileOutcome] = []

    def kill_after_six(outcome: FileOutcome) -> None:
        seen.append(outcome)
        if len(seen) == 6:
            server.kill()

    first = fetch_run(storage, plan, dest, jobs=3, on_file=kill_after_six)
    assert not first.ok
    assert first.stopped_because is not None and "cannot reach S3 endpoint" in first.stopped_because
    assert first.downloaded >= 6
    assert first.failures and first.not_attempted > 0  # it stopped instead of grinding through every file
    assert first.downloaded + len(first.failures) + first.not_attempted == len(expected)
    assert leftover_temp_files(dest) == []
    fetched = files_under(dest)
    assert len(fetched) == first.downloaded
    assert all(expected[path] == data for path, data in fetched.items())  # only whole, correct files

    server.start()
    fresh = S3Storage.from_url(url)  # default retry budget: rides out the restarted server's warm-up
    second = fetch_run(fresh, plan_fetch(fresh, "big"), dest, jobs=3)
    assert second.ok
    assert second.skipped == first.downloaded
    assert second.downloaded == len(expected) - first.downloaded
    assert files_under(dest) == expected
    assert leftover_temp_files(dest) == []
