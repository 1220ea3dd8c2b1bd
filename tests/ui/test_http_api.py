"""The UI's read-only HTTP API over real storage (a local directory, and S3 on a real SeaweedFS server)."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from storage_backends import LocalStorage, Storage, open_storage
from tests.seed_validators import SeedAnalysisResult, ui_accepts
from tests.ui.sample_runs import SamplePrompt, make_result, strongest_input, write_big_result, write_run
from tokenlens.batch import PromptRecord
from tokenlens.results import RunStore
from tokenlens.run_reader import prompt_text_from_result
from tokenlens.schema import AnalysisResult
from ui.http_api import create_app

PROMPTS = [
    SamplePrompt("p1", "The quick brown fox jumps over the lazy dog"),
    SamplePrompt("p2", "Paris is the capital of"),
    SamplePrompt("p3", "Water boils at one hundred degrees"),
    SamplePrompt("p4", "A prompt that fails"),
]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "results")
    else:
        yield open_storage(request.getfixturevalue("s3_results_url"))


@pytest.fixture
def populated(storage: Storage) -> Storage:
    """Three runs: a finished one with a failure, a second method on the same prompts, one still running."""
    write_run(storage, "run-sal", PROMPTS, failed={"p4"}, created_at="2026-11-27T12:00:00Z", with_inseq=True)
    write_run(storage, "run-ixg", PROMPTS[:3], method="input_x_gradient", created_at="2026-11-27T12:05:00Z")
    write_run(storage, "run-live", PROMPTS, done=1, created_at="2026-11-27T12:10:00Z")
    return storage


@pytest.fixture
def client(populated: Storage) -> Iterator[TestClient]:
    with TestClient(create_app(populated)) as test_client:
        yield test_client


def test_health_names_the_results_url(client: TestClient, populated: Storage) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["results_url"] == populated.url


def test_runs_lists_every_run_newest_first_with_progress(client: TestClient) -> None:
    response = client.get("/api/runs")
    assert response.status_code == 200
    # Always revalidated (never answered from a cache), with an ETag so an unchanged answer costs no body.
    assert response.headers["cache-control"] == "no-cache" and response.headers["etag"]
    runs = response.json()["runs"]
    assert [r["run_id"] for r in runs] == ["run-live", "run-ixg", "run-sal"]
    by_id = {r["run_id"]: r for r in runs}
    assert (by_id["run-sal"]["done"], by_id["run-sal"]["failed"], by_id["run-sal"]["pending"]) == (3, 1, 0)
    assert by_id["run-sal"]["complete"] is True
    assert (by_id["run-live"]["done"], by_id["run-live"]["failed"], by_id["run-live"]["pending"]) == (1, 0, 3)
    assert by_id["run-live"]["complete"] is False
    assert by_id["run-ixg"]["method"] == "input_x_gradient"
    assert by_id["run-ixg"]["model"] == "sample-model"


def test_runs_progress_follows_storage_live(client: TestClient, populated: Storage) -> None:
    before = {r["run_id"]: r for r in client.get("/api/runs").json()["runs"]}["run-live"]
    RunStore(populated, "run-live").write_result(make_result("run-live", "p2", PROMPTS[1].prompt))
    after = {r["run_id"]: r for r in client.get("/api/runs").json()["runs"]}["run-live"]
    assert after["done"] == before["done"] + 1
    assert after["pending"] == before["pending"] - 1


def test_a_corrupt_manifest_does_not_hide_the_other_runs(client: TestClient, populated: Storage) -> None:
    populated.put("runs/broken/run.json", b"{not json")
    runs = {r["run_id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert "unreadable run.json" in runs["broken"]["error"]
    assert runs["run-sal"]["done"] == 3
    response = client.get("/api/runs/broken")
    assert response.status_code == 500
    assert "broken" in response.json()["error"]


def test_run_detail_lists_prompts_in_order_with_status_text_and_reasons(client: TestClient) -> None:
    body = client.get("/api/runs/run-sal").json()
    assert body["manifest"]["method"] == "saliency"
    assert body["run"]["done"] == 3
    prompts = body["prompts"]
    assert [p["prompt_id"] for p in prompts] == ["p1", "p2", "p3", "p4"]
    assert [p["status"] for p in prompts] == ["done", "done", "done", "failed"]
    assert prompts[1]["prompt"] == "Paris is the capital of"
    failed = prompts[3]
    assert failed["prompt"] == "A prompt that fails"
    assert failed["error"]["error_type"] == "PromptTooLongError"
    assert "context window" in failed["error"]["message"]
    assert failed["error"]["attempts"] == 3


def test_run_detail_marks_prompts_not_yet_done_as_pending(client: TestClient) -> None:
    prompts = client.get("/api/runs/run-live").json()["prompts"]
    assert [p["status"] for p in prompts] == ["done", "pending", "pending", "pending"]
    assert [p["prompt_id"] for p in prompts] == [p.prompt_id for p in PROMPTS[:4]], "in the prompt set's order"


def test_pending_prompts_show_their_text_from_the_runs_prompt_set(client: TestClient, populated: Storage) -> None:
    live = RunStore(populated, "run-live")
    live.write_prompts([PromptRecord(id=p.prompt_id, prompt=p.prompt) for p in PROMPTS[:4]])
    prompts = client.get("/api/runs/run-live").json()["prompts"]
    assert [p["status"] for p in prompts] == ["done", "pending", "pending", "pending"]
    assert [p["prompt"] for p in prompts] == [p.prompt for p in PROMPTS[:4]]


def test_a_result_wins_over_a_stale_error_record(client: TestClient, populated: Storage) -> None:
    RunStore(populated, "run-sal").write_result(make_result("run-sal", "p4", PROMPTS[3].prompt))
    prompts = {p["prompt_id"]: p for p in client.get("/api/runs/run-sal").json()["prompts"]}
    assert prompts["p4"]["status"] == "done"
    assert prompts["p4"]["error"] is None


def test_run_page_is_paginated_searchable_and_filterable(client: TestClient) -> None:
    body = client.get("/api/runs/run-sal", params={"offset": 1, "limit": 2}).json()
    assert [p["prompt_id"] for p in body["prompts"]] == ["p2", "p3"]
    assert (body["total"], body["offset"], body["limit"]) == (4, 1, 2)
    assert "prompt_ids" not in body["manifest"], "no prompt-id list in a response"
    failed = client.get("/api/runs/run-sal", params={"status": "failed"}).json()
    assert [p["prompt_id"] for p in failed["prompts"]] == ["p4"] and failed["total"] == 1
    assert failed["prompts"][0]["error"]["error_type"] == "PromptTooLongError"
    found = client.get("/api/runs/run-sal", params={"q": "PARIS"}).json()
    assert [p["prompt_id"] for p in found["prompts"]] == ["p2"], "search is in the prompt text, any case"
    pending = client.get("/api/runs/run-live", params={"status": "pending", "limit": 2}).json()
    assert [p["prompt_id"] for p in pending["prompts"]] == ["p2", "p3"] and pending["total"] == 3
    assert [p["status"] for p in pending["prompts"]] == ["pending", "pending"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"limit": "0"}, "limit"),
        ({"status": "odd"}, "status"),
    ],
)
def test_bad_page_parameters_are_a_400_naming_them(client: TestClient, params: dict[str, str], named: str) -> None:
    response = client.get("/api/runs/run-sal", params=params)
    assert response.status_code == 400
    assert named in response.json()["error"]


def test_counts_endpoint_and_etags_answer_304_until_the_run_changes(client: TestClient, populated: Storage) -> None:
    counts = client.get("/api/runs/run-live/counts")
    assert counts.status_code == 200
    assert set(counts.json()) == {"run"} and counts.json()["run"]["done"] == 1
    page = client.get("/api/runs/run-live")
    for url, first in (("/api/runs/run-live/counts", counts), ("/api/runs/run-live", page), ("/api/runs", None)):
        first = first or client.get(url)
        again = client.get(url, headers={"if-none-match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    RunStore(populated, "run-live").write_result(make_result("run-live", "p2", PROMPTS[1].prompt))
    changed = client.get("/api/runs/run-live/counts", headers={"if-none-match": counts.headers["etag"]})
    assert changed.status_code == 200 and changed.json()["run"]["done"] == 2
    assert client.get("/api/runs/run-live", headers={"if-none-match": page.headers["etag"]}).status_code == 200
    assert client.get("/api/runs/no-such-run/counts").status_code == 404


def test_unknown_run_is_a_404_that_says_how_to_list_runs(client: TestClient) -> None:
    response = client.get("/api/runs/no-such-run")
    assert response.status_code == 404
    assert "no-such-run" in response.json()["error"]
    assert "tokenlens runs" in response.json()["error"]


def test_result_file_is_served_as_stored(client: TestClient, populated: Storage) -> None:
    response = client.get("/api/runs/run-sal/results/p1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == populated.get("runs/run-sal/results/p1.json")
    result = AnalysisResult.model_validate_json(response.content)
    assert result.metadata.prompt_id == "p1"
    assert strongest_input(result, 0) == 3


def test_large_result_is_gzip_compressed_when_the_client_accepts_it(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "results")
    write_big_result(storage, "big", n_words=500, n_out=120)
    stored = storage.get("runs/big/results/long.json")
    with TestClient(create_app(storage)) as test_client:
        compressed = test_client.get("/api/runs/big/results/long", headers={"accept-encoding": "gzip"}, extensions={})
        assert compressed.headers["content-encoding"] == "gzip"
        assert int(compressed.headers["content-length"]) < len(stored) / 2
        # httpx decodes transparently: the decoded body is the stored file byte for byte.
        assert compressed.content == stored
        plain = test_client.get("/api/runs/big/results/long", headers={"accept-encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert plain.content == stored


def test_gzip_body_round_trips_through_a_real_decompressor(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "results")
    write_big_result(storage, "big", n_words=200, n_out=40)
    with (
        TestClient(create_app(storage)) as test_client,
        test_client.stream("GET", "/api/runs/big/results/long", headers={"accept-encoding": "gzip"}) as response,
    ):
        raw = b"".join(response.iter_raw())
    assert gzip.decompress(raw) == storage.get("runs/big/results/long.json")


def test_compact_results_and_seed_files_are_served_as_plain_tokenlens_json(
    client: TestClient, populated: Storage
) -> None:
    store = RunStore(populated, "run-live")
    compact = make_result("run-live", "p3", PROMPTS[2].prompt)
    store.write_result(compact, "compact")
    assert populated.get(store.key("results", "p3"))[:2] == b"\x1f\x8b"
    # A seed project's file dropped into a run shows with its own method, in TokenLens's layout.
    seed = (Path(__file__).parents[1] / "fixtures/seed_files/v1_1_0_inseq_target.json").read_bytes()
    populated.put(store.key("results", "p4"), seed)
    served = client.get("/api/runs/run-live/results/p3?download=1")
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    document = served.json()
    assert ui_accepts(document) and SeedAnalysisResult.model_validate(document)
    np.testing.assert_allclose(
        document["data"]["association_matrix"], compact.data.association_matrix, atol=2.5e-4 * 15, rtol=0
    )
    from_seed = client.get("/api/runs/run-live/results/p4").json()
    assert from_seed["metadata"]["attribution_method"] == "integrated_gradients"
    assert [t["clean_token"] for t in from_seed["data"]["output_tokens"]] == ["the", "capital"]
    assert ui_accepts(from_seed)


def test_an_unreadable_result_is_reported_corrupt_naming_the_file(client: TestClient, populated: Storage) -> None:
    populated.put("runs/run-live/results/p2.json", b"\x1f\x8b not really gzip")
    response = client.get("/api/runs/run-live/results/p2")
    assert response.status_code == 422  # corrupt: the file is there, it can't be read (a resume replaces it)
    error = response.json()["error"]
    assert "corrupt" in error and "runs/run-live/results/p2.json: not a TokenLens result file" in error


def test_download_sets_an_attachment_file_name(client: TestClient) -> None:
    response = client.get("/api/runs/run-sal/results/p2?download=1")
    assert response.headers["content-disposition"] == 'attachment; filename="run-sal_results_p2.json"'


def test_inseq_and_error_files_are_served(client: TestClient) -> None:
    inseq = client.get("/api/runs/run-sal/inseq/p1")
    assert inseq.status_code == 200
    assert "sequence_attributions" in inseq.json()
    error = client.get("/api/runs/run-sal/errors/p4")
    assert error.json()["error_type"] == "PromptTooLongError"


def test_missing_files_and_unknown_kinds_are_404(client: TestClient) -> None:
    assert client.get("/api/runs/run-sal/results/p4").status_code == 404
    assert client.get("/api/runs/run-sal/errors/p1").status_code == 404
    unknown = client.get("/api/runs/run-sal/secrets/p1")
    assert unknown.status_code == 404
    assert "results, inseq, errors" in unknown.json()["error"]
    assert client.get("/api/nothing-here").status_code == 404


def test_compare_matches_by_prompt_id_across_runs(client: TestClient) -> None:
    body = client.get("/api/compare", params={"run_id": "run-sal", "prompt_id": "p2"}).json()
    assert body["prompt"] == "Paris is the capital of"
    entries = {e["run_id"]: e for e in body["entries"]}
    assert body["entries"][0]["run_id"] == "run-sal"
    assert entries["run-sal"]["matched_by"] == "self"
    assert entries["run-ixg"]["matched_by"] == "id"
    assert entries["run-ixg"]["method"] == "input_x_gradient"
    assert entries["run-ixg"]["same_text"] is True
    # run-live has not reached p2 yet: nothing to compare there.
    assert "run-live" not in entries


def test_compare_falls_back_to_the_prompt_text(client: TestClient, populated: Storage) -> None:
    write_run(populated, "run-renamed", [SamplePrompt("q-007", PROMPTS[2].prompt)], model="other-model")
    entries = {e["run_id"]: e for e in client.get("/api/compare?run_id=run-sal&prompt_id=p3").json()["entries"]}
    assert entries["run-renamed"]["matched_by"] == "text"
    assert entries["run-renamed"]["prompt_id"] == "q-007"
    assert entries["run-renamed"]["model"] == "other-model"


def test_compare_flags_a_same_id_with_different_text(client: TestClient, populated: Storage) -> None:
    write_run(populated, "run-other", [SamplePrompt("p1", "A different prompt altogether")])
    entries = {e["run_id"]: e for e in client.get("/api/compare?run_id=run-sal&prompt_id=p1").json()["entries"]}
    assert entries["run-other"]["matched_by"] == "id"
    assert entries["run-other"]["same_text"] is False


def test_compare_needs_both_ids_and_a_known_prompt(client: TestClient) -> None:
    assert client.get("/api/compare?run_id=run-sal").status_code == 400
    missing = client.get("/api/compare?run_id=run-sal&prompt_id=nope")
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/..%2F..%2Fetc/results/passwd",
        "/api/runs/run-sal/results/..%2Frun.json",
        "/api/runs/run-sal/results/%2E%2E",
        "/api/runs/%2E%2E/results/p1",
        "/api/runs/run-sal%5Cresults/p1",
        "/api/runs/run-sal/results/p1%00",
        "/api/runs/%2Fetc%2Fpasswd/results/p1",
        "/api/runs//etc/results/p1",
        "/%2E%2E/%2E%2E/pyproject.toml",
        "/assets/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
    ],
)
def test_traversal_attempts_are_refused(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert "error" in response.json()


@pytest.mark.parametrize("bad_id", [".hidden", "a b", "run.json..x", "-dash", "x" * 200])
def test_unsafe_ids_are_refused_with_the_rule(client: TestClient, bad_id: str) -> None:
    for path in (f"/api/runs/{bad_id}", f"/api/runs/run-sal/results/{bad_id}", f"/api/runs/{bad_id}/results/p1"):
        response = client.get(path)
        assert response.status_code == 400, path
        assert "1-128 characters" in response.json()["error"]
    assert client.get("/api/compare", params={"run_id": "run-sal", "prompt_id": bad_id}).status_code == 400


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_only_reads_are_allowed(client: TestClient, populated: Storage, method: str) -> None:
    response = client.request(method, "/api/runs/run-sal/results/p1", content=b"{}")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert populated.exists("runs/run-sal/results/p1.json")


def test_head_is_answered(client: TestClient) -> None:
    response = client.head("/api/runs")
    assert response.status_code == 200
    assert response.content == b""


def test_security_headers_are_on_every_response(client: TestClient) -> None:
    for path in ("/api/runs", "/api/runs/nope", "/runs/run-sal"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"


def test_loopback_only_host_header_blocks_dns_rebinding(populated: Storage) -> None:
    app = create_app(populated, allowed_hosts=("127.0.0.1", "localhost"))
    with TestClient(app, base_url="http://127.0.0.1:8765") as local_client:
        assert local_client.get("/api/runs").status_code == 200
    with TestClient(app, base_url="http://attacker.example") as rebinding_client:
        assert rebinding_client.get("/api/runs").status_code == 400


def test_web_app_is_served_with_a_fallback_for_addressable_urls(populated: Storage, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><div id=root></div>")
    (dist / "assets" / "app-1234.js").write_text("console.log('app')")
    (tmp_path / "secret.txt").write_text("outside dist")
    with TestClient(create_app(populated, dist_dir=dist)) as web:
        for path in ("/", "/runs/run-sal", "/runs/run-sal/p1", "/compare/run-sal/p1?with=run-ixg"):
            page = web.get(path)
            assert page.status_code == 200, path
            assert "<div id=root>" in page.text
        asset = web.get("/assets/app-1234.js")
        assert asset.text == "console.log('app')"
        assert "immutable" in asset.headers["cache-control"]
        assert "outside dist" not in web.get("/%2E%2E/secret.txt").text
        assert "outside dist" not in web.get("/assets/%2E%2E/%2E%2E/secret.txt").text


def test_without_a_built_app_the_root_says_how_to_build_it(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "npm run build" in page.text


def test_prompt_text_is_read_from_metadata_without_the_matrices() -> None:
    result = make_result("r", "p", "Hello there", n_out=3)
    assert prompt_text_from_result(result.to_json_bytes()) == "Hello there"
    pretty = json.dumps(json.loads(result.to_json_bytes()), indent=2).encode()
    assert prompt_text_from_result(pretty) == "Hello there"
    assert prompt_text_from_result(b"not json") is None


def test_no_credentials_reach_the_browser(client: TestClient) -> None:
    secrets = [os.environ.get(name) for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")]
    bodies = [
        client.get(path).text
        for path in ("/api/health", "/api/runs", "/api/runs/run-sal", "/api/compare?run_id=run-sal&prompt_id=p1")
    ]
    for secret in filter(None, secrets):
        assert all(secret not in body for body in bodies)
    assert all("secret" not in body.lower() for body in bodies)


def test_an_empty_results_location_has_no_runs(tmp_path: Path) -> None:
    with TestClient(create_app(LocalStorage(tmp_path / "nothing-yet"))) as empty:
        assert empty.get("/api/runs").json()["runs"] == []
        assert empty.get("/api/runs/any").status_code == 404
