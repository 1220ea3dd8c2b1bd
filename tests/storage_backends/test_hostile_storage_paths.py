"""Hostile storage paths: symbolic links planted in a local results directory never lead a read, write, delete,
listing or the UI outside the root; result files are created 0644 less the umask.

Each test plants one kind of link (or path) and checks both the clear outcome and that nothing outside the root was
read, served, listed, written or removed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from storage_backends import InvalidKeyError, LocalStorage, OutsideRootError, StorageUnavailableError
from tests.ui.sample_runs import SamplePrompt, make_result, write_run
from tokenlens.progress import read_progress
from tokenlens.results import RunStore, list_run_ids
from ui.http_api import create_app

SECRET = b"root:x:0:0:root:/root:/bin/bash\n"
PROMPTS = [SamplePrompt("p1", "The quick brown fox"), SamplePrompt("p2", "Paris is the capital of")]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the results root holding a secret file and a whole run, as an attacker would plant."""
    directory = tmp_path / "outside"
    (directory / "secret").parent.mkdir(parents=True)
    (directory / "secret").write_bytes(SECRET)
    write_run(LocalStorage(directory / "results"), "stolen", PROMPTS)
    return directory


@pytest.fixture
def root(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "results")
    write_run(storage, "real", PROMPTS)
    return storage


@pytest.fixture
def client(root: LocalStorage) -> Iterator[TestClient]:
    with TestClient(create_app(root)) as test_client:
        yield test_client


def _results_dir(storage: LocalStorage, run_id: str) -> Path:
    return storage.root / "runs" / run_id / "results"


def test_hostile_result_file_linked_to_a_system_file_is_refused_and_not_served(
    root: LocalStorage, outside: Path, client: TestClient
) -> None:
    (_results_dir(root, "real") / "leak.json").symlink_to(outside / "secret")
    with pytest.raises(OutsideRootError):
        root.get("runs/real/results/leak.json")
    assert not root.exists("runs/real/results/leak.json")
    assert "runs/real/results/leak.json" not in {info.key for info in root.list("runs/real/")}
    response = client.get("/api/runs/real/results/leak")
    assert response.status_code == 403
    assert SECRET not in response.content
    # Not counted done either: progress comes from the same listing.
    assert read_progress(RunStore(root, "real")).done_ids == {"p1", "p2"}


def test_hostile_run_directory_linked_out_of_the_root_is_not_listed_or_served(
    root: LocalStorage, outside: Path, client: TestClient
) -> None:
    (root.root / "runs" / "stolen").symlink_to(outside / "results" / "runs" / "stolen", target_is_directory=True)
    assert list(list_run_ids(root)) == ["real"]
    assert list(root.list("runs/stolen/")) == []
    assert [run["run_id"] for run in client.get("/api/runs").json()["runs"]] == ["real"]
    assert client.get("/api/runs/stolen").status_code in (403, 404)
    response = client.get("/api/runs/stolen/results/p1")
    assert response.status_code == 403 and b"quick brown fox" not in response.content


def test_hostile_link_inside_the_root_pointing_outside_refuses_writes(root: LocalStorage, outside: Path) -> None:
    # runs/evil -> outside: a write "into" the run would land outside the root.
    (root.root / "runs" / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutsideRootError):
        root.put("runs/evil/results/p1.json", b"{}")
    with pytest.raises(OutsideRootError):
        root.put("runs/evil/new/deeper/p1.json", b"{}")
    assert sorted(p.name for p in outside.iterdir()) == ["results", "secret"]
    assert not (outside / "new").exists()


def test_hostile_result_link_is_never_written_through(root: LocalStorage, outside: Path) -> None:
    target = outside / "secret"
    (_results_dir(root, "real") / "p9.json").symlink_to(target)
    with pytest.raises(OutsideRootError):
        root.put("runs/real/results/p9.json", b"overwritten", if_absent=True)
    with pytest.raises(OutsideRootError):
        root.put("runs/real/results/p9.json", b"overwritten")
    assert target.read_bytes() == SECRET


def test_hostile_delete_through_a_linked_directory_removes_nothing_outside(root: LocalStorage, outside: Path) -> None:
    (root.root / "runs" / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutsideRootError):
        root.delete("runs/evil/secret")
    assert (outside / "secret").read_bytes() == SECRET


def test_hostile_link_to_a_file_inside_the_root_is_still_served(root: LocalStorage, client: TestClient) -> None:
    # Links that stay inside the root are fine: only leaving it is refused.
    (_results_dir(root, "real") / "p1-again.json").symlink_to(_results_dir(root, "real") / "p1.json")
    assert root.get("runs/real/results/p1-again.json") == root.get("runs/real/results/p1.json")


def test_hostile_root_that_is_itself_a_link_is_resolved_once(tmp_path: Path) -> None:
    # An operator's results directory may be a link (to a bigger disk): it is resolved when opened.
    real = tmp_path / "big-disk" / "results"
    real.mkdir(parents=True)
    (tmp_path / "results-link").symlink_to(real, target_is_directory=True)
    storage = LocalStorage(tmp_path / "results-link")
    storage.put("runs/r/results/p.json", b"{}")
    assert storage.url == str(real) and (real / "runs/r/results/p.json").read_bytes() == b"{}"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_result_files_are_created_0644_less_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        storage = LocalStorage(tmp_path / f"results-{umask:o}")
        RunStore(storage, "r").write_result(make_result("r", "p1", "hello"))
    finally:
        os.umask(old)
    mode = stat.S_IMODE((storage.root / "runs/r/results/p1.json").stat().st_mode)
    assert mode == 0o644 & ~umask


@pytest.mark.parametrize("key", ["../escape.json", "runs/../../escape.json", "/etc/passwd", "runs\\x.json", "a\x00b"])
def test_hostile_keys_never_name_a_path_outside(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path / "results")
    with pytest.raises(InvalidKeyError):
        storage.put(key, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_hostile_results_directory_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    # /proc accepts nothing new: the check says so before any work, instead of a traceback mid-run.
    storage = LocalStorage("/proc/tokenlens-results")
    with pytest.raises(StorageUnavailableError, match="not writable"):
        storage.check()
    with pytest.raises(StorageUnavailableError, match="can't"):
        storage.put("runs/r/run.json", b"{}")
    assert not Path("/proc/tokenlens-results").exists()


def test_hostile_result_link_is_replaced_by_a_real_result_on_resume(root: LocalStorage, outside: Path) -> None:
    from tokenlens.pipeline import result_done

    store = RunStore(root, "real")
    (_results_dir(root, "real") / "p3.json").symlink_to(outside / "secret")
    # Not done: the link is removed (never what it points to), so the prompt is attributed again.
    assert result_done(store, "p3") is False
    assert not (_results_dir(root, "real") / "p3.json").is_symlink()
    assert (outside / "secret").read_bytes() == SECRET
    assert store.write_result(make_result("real", "p3", "hello"))
    assert result_done(store, "p3") is True
