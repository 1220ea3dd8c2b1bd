"""The run views over HTTP (ui/run_views_api.py): the numbers the core computes, on a local directory and on S3
(a real SeaweedFS server), and hostile requests refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from storage_backends import LocalStorage, Storage, open_storage
from tests.ui.sample_runs import SamplePrompt, make_result, write_run
from tokenlens.results import RunStore
from tokenlens.run_views import RunViewCache
from ui.http_api import create_app

PROMPTS = [
    SamplePrompt("p1", "The quick brown fox jumps over the lazy dog"),
    SamplePrompt("p2", "Paris is the capital of"),
    SamplePrompt("p3", "Water boils at one hundred degrees"),
    SamplePrompt("p4", "A prompt that fails"),
]


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return populate(LocalStorage(tmp_path / "results"))


def populate(storage: Storage) -> Storage:
    """A finished run with a failure, and a second method on three of its prompts."""
    write_run(storage, "run-sal", PROMPTS, failed={"p4"})
    write_run(storage, "run-ixg", PROMPTS[:3], method="input_x_gradient")
    return storage


@pytest.fixture
def client(storage: Storage) -> Iterator[TestClient]:
    with TestClient(create_app(storage)) as test_client:
        yield test_client


def test_the_views_answer_what_the_core_computes(client: TestClient, storage: Storage) -> None:
    core = RunViewCache(storage)
    importance = client.get("/api/views/run-sal/importance?limit=5")
    assert importance.status_code == 200
    assert importance.headers["cache-control"] == "no-store"
    assert importance.json() == core.importance("run-sal", limit=5)
    assert len(importance.json()["tokens"]) == 5
    words = client.get("/api/views/run-sal/importance?level=word&limit=5").json()
    assert words == core.importance("run-sal", level="word", limit=5) and words["level"] == "word"
    assert client.get("/api/views/run-sal/attention").json() == core.attention("run-sal")
    agreement = client.get("/api/views/run-sal/agreement?with=run-ixg").json()
    assert agreement == core.agreement("run-sal", "run-ixg")
    assert agreement["compared"] == 3 and agreement["only_in_run"] == 0
    performance = client.get("/api/views/performance").json()
    assert {(g["method"], tuple(g["runs"])) for g in performance["groups"]} == {
        ("saliency", ("run-sal",)),
        ("input_x_gradient", ("run-ixg",)),
    }


@pytest.mark.integration
def test_the_views_read_runs_on_s3(s3_results_url: str) -> None:
    storage = populate(open_storage(s3_results_url))
    with TestClient(create_app(storage)) as client:
        importance = client.get("/api/views/run-sal/importance?level=word").json()
        assert importance == RunViewCache(storage).importance("run-sal", level="word")
        assert importance["prompts"] == 3 and importance["unreadable"] == []
        agreement = client.get("/api/views/run-sal/agreement?with=run-ixg").json()
        assert agreement["compared"] == 3


def test_new_results_show_up_on_the_next_call(client: TestClient, storage: Storage) -> None:
    before = client.get("/api/views/run-ixg/importance").json()
    RunStore(storage, "run-ixg").write_result(make_result("run-ixg", "p9", "Zebras graze", method="input_x_gradient"))
    after = client.get("/api/views/run-ixg/importance").json()
    assert after["prompts"] == before["prompts"] + 1
    assert "Zebras" in {row["token"] for row in after["tokens"]}


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/api/views/no-such-run/importance", 404, "no-such-run"),
        ("/api/views/run-sal/agreement", 400, "?with="),
        ("/api/views/run-sal/agreement?with=run-sal", 400, "other than"),
        ("/api/views/run-sal/agreement?with=..%2Fetc", 400, "run id"),
        ("/api/views/run-sal/agreement?with=nope", 404, "nope"),
        ("/api/views/run-sal/importance?level=sentence", 400, "unknown level"),
        ("/api/views/run-sal/importance?level=word%00", 400, "unknown level"),
        ("/api/views/run-sal/importance?limit=0", 400, "limit"),
        ("/api/views/run-sal/importance?limit=-3", 400, "limit"),
        ("/api/views/run-sal/importance?limit=%C2%B2", 400, "limit"),
        ("/api/views/run-sal/importance?limit=%D9%A5", 400, "limit"),
        ("/api/views/run-sal/importance?limit=99999999999999999999", 400, "limit"),
        ("/api/views/run%2F..%2Fx/attention", 400, "encoded"),
        ("/api/views/run-sal/agreement?with=run-sal%2F..%2F..", 400, "run id"),
        ("/api/views/.hidden/attention", 400, "run id"),
        ("/api/views/run-sal/nothing", 404, "no API endpoint"),
    ],
)
def test_hostile_requests_are_refused_with_a_clear_message(
    client: TestClient, path: str, status: int, fragment: str
) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_the_views_are_read_only(client: TestClient) -> None:
    for method in ("POST", "PUT", "DELETE"):
        response = client.request(method, "/api/views/run-sal/importance")
        assert response.status_code == 405
