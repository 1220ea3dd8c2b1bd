"""`tokenlens ui` as a real process: it serves the API on loopback, refuses raw traversal, and fails clearly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_backends import LocalStorage, open_storage
from tests.ui.sample_runs import SamplePrompt, write_run
from tests.ui.ui_process import REPO_ROOT, TOKENLENS, free_port, running_ui
from ui.server import is_loopback


def raw_get(base_url: str, path: str, host: str | None = None) -> tuple[int, bytes]:
    """Send a GET with `path` exactly as written (no client-side normalisation of `..`)."""
    address = base_url.removeprefix("http://")
    hostname, port = address.split(":")
    with socket.create_connection((hostname, int(port)), timeout=10) as conn:
        request = f"GET {path} HTTP/1.1\r\nHost: {host or address}\r\nConnection: close\r\n\r\n"
        conn.sendall(request.encode("latin-1"))
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.fixture(scope="module")
def ui_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("ui-results")
    write_run(LocalStorage(root), "run-a", [SamplePrompt("p1", "Hello world"), SamplePrompt("p2", "Bye now")])
    (root / "outside.txt").write_text("must not be served")
    with running_ui(str(root)) as base_url:
        yield base_url


@pytest.mark.integration
def test_the_server_answers_the_api(ui_url: str) -> None:
    with urllib.request.urlopen(f"{ui_url}/api/runs") as response:
        runs = json.load(response)["runs"]
    assert [(r["run_id"], r["done"]) for r in runs] == [("run-a", 2)]


@pytest.mark.integration
@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/../../outside.txt",
        "/api/runs/run-a/results/../../../outside.txt",
        "/api/runs/run-a/results/..%2f..%2f..%2foutside.txt",
        "/../outside.txt",
        "/assets/../../outside.txt",
        "//etc/passwd",
        "/api/runs/run-a/results/%2e%2e%5c%2e%2e%5coutside",
    ],
)
def test_raw_traversal_paths_never_reach_storage(ui_url: str, path: str) -> None:
    status, body = raw_get(ui_url, path)
    assert status in (400, 404)
    assert b"must not be served" not in body


@pytest.mark.integration
def test_a_foreign_host_header_is_refused(ui_url: str) -> None:
    assert raw_get(ui_url, "/api/runs", host="attacker.example")[0] == 400
    assert raw_get(ui_url, "/api/runs")[0] == 200


@pytest.mark.integration
def test_writes_are_refused_by_the_server(ui_url: str) -> None:
    request = urllib.request.Request(f"{ui_url}/api/runs/run-a/results/p1", data=b"{}", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 405


def test_a_missing_results_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    done = subprocess.run(
        [*TOKENLENS, "ui", "--results", str(missing), "--port", str(free_port())],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"results directory {missing} does not exist" in done.stderr
    assert "--results" in done.stderr


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*TOKENLENS, "ui", "--results", str(tmp_path), "--port", str(port)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.0.2.10")


@pytest.mark.integration
def test_the_server_reads_s3_without_showing_credentials(s3_results_url: str) -> None:
    storage = open_storage(s3_results_url)
    write_run(storage, "run-s3", [SamplePrompt("p1", "Hello from S3")], failed={"p1"})
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    with running_ui(s3_results_url) as base_url:
        with urllib.request.urlopen(f"{base_url}/api/runs/run-s3") as response:
            raw = response.read().decode()
        with urllib.request.urlopen(f"{base_url}/api/health") as response:
            health = json.load(response)
    body = json.loads(raw)
    assert body["prompts"][0]["error"]["error_type"] == "PromptTooLongError"
    assert health["results_url"].startswith("s3://")
    assert secret not in raw
    assert secret not in json.dumps(health)
