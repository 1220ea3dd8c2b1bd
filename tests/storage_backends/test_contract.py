"""The storage contract, run on every backend: LocalStorage and S3Storage (against real SeaweedFS)."""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storage_backends import (
    AlreadyExistsError,
    InvalidKeyError,
    LocalStorage,
    NotFoundError,
    ObjectInfo,
    Storage,
    StorageUnavailableError,
    open_storage,
)
from storage_backends.base import md5_hex

BAD_KEYS = [
    "../escape.json",
    "runs/../../escape.json",
    "/etc/passwd",
    "runs/a\x00b.json",
    "",
    "runs//x.json",
    "./x.json",
    "runs\\x.json",
    "runs/..",
]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A fresh, empty storage of each kind, opened from its URL the way the CLI opens it."""
    if request.param == "local":
        return open_storage(str(tmp_path / "results"))
    return open_storage(request.getfixturevalue("s3_results_url"))


def test_round_trip_and_overwrite(storage: Storage) -> None:
    payload = bytes(range(256)) * 40  # not UTF-8, not JSON: bytes are bytes
    storage.put("runs/r1/results/p1.json", payload)
    assert storage.get("runs/r1/results/p1.json") == payload
    storage.put("runs/r1/results/p1.json", b"second")
    assert storage.get("runs/r1/results/p1.json") == b"second"
    storage.put("runs/r1/empty.json", b"")
    assert storage.get("runs/r1/empty.json") == b""


def test_content_type_and_encoding_never_change_the_bytes(storage: Storage) -> None:
    # A gzip body stored with Content-Encoding: gzip comes back as the same gzip bytes, not decoded.
    body = gzip.compress(b'{"metadata":{}}', mtime=0)
    storage.put("runs/r1/results/c.json", body, content_type="application/json", content_encoding="gzip")
    assert storage.get("runs/r1/results/c.json") == body
    assert storage.md5("runs/r1/results/c.json") == md5_hex(body)
    storage.put("runs/r1/results/d.json", b"{}", if_absent=True, content_type="application/json")
    with pytest.raises(AlreadyExistsError):
        storage.put("runs/r1/results/d.json", body, if_absent=True, content_encoding="gzip")
    assert storage.get("runs/r1/results/d.json") == b"{}"


def test_missing_key_is_not_found(storage: Storage) -> None:
    with pytest.raises(NotFoundError, match=r"runs/none\.json"):
        storage.get("runs/none.json")
    with pytest.raises(KeyError):  # NotFoundError is also a KeyError, for dict-like callers
        storage.get("runs/none.json")
    with pytest.raises(NotFoundError):
        storage.md5("runs/none.json")


def test_exists_and_delete(storage: Storage) -> None:
    assert not storage.exists("runs/r1/run.json")
    storage.put("runs/r1/run.json", b"{}")
    assert storage.exists("runs/r1/run.json")
    assert not storage.exists("runs/r1")  # a "directory" is not an object
    storage.delete("runs/r1/run.json")
    assert not storage.exists("runs/r1/run.json")
    storage.delete("runs/r1/run.json")  # deleting what is gone is fine
    assert list(storage.list("")) == []


def test_list_with_prefix_is_sorted_and_exact(storage: Storage) -> None:
    contents = {
        "runs/a/run.json": b"1",
        "runs/a/results/p2.json": b"22",
        "runs/a/results/p1.json": b"333",
        "runs/ab/run.json": b"4444",
        "other.txt": b"55555",
    }
    for key, data in contents.items():
        storage.put(key, data)
    everything = list(storage.list(""))
    assert [info.key for info in everything] == sorted(contents)
    assert {info.key: info.size for info in everything} == {key: len(data) for key, data in contents.items()}
    assert [info.key for info in storage.list("runs/a/")] == [
        "runs/a/results/p1.json",
        "runs/a/results/p2.json",
        "runs/a/run.json",
    ]
    assert [info.key for info in storage.list("runs/a")] == [
        "runs/a/results/p1.json",
        "runs/a/results/p2.json",
        "runs/a/run.json",
        "runs/ab/run.json",
    ]
    assert list(storage.list("runs/a/results/p1.json")) == [ObjectInfo("runs/a/results/p1.json", 3)]
    assert list(storage.list("runs/zzz/")) == []


def test_list_dirs_names_only_the_folders_directly_under_a_prefix(storage: Storage) -> None:
    for key in ("runs/b/run.json", "runs/a/results/p1.json", "runs/a/run.json", "runs/c/results/x/deep.json",
                "runs/top.json", "other/z.json"):  # fmt: skip
        storage.put(key, b"x")
    assert list(storage.list_dirs("runs/")) == ["a", "b", "c"]  # sorted; a file at that level is no folder
    assert list(storage.list_dirs("")) == ["other", "runs"]
    assert list(storage.list_dirs("runs/a/")) == ["results"]
    assert list(storage.list_dirs("runs/none/")) == []
    with pytest.raises(InvalidKeyError, match="must end with '/'"):
        list(storage.list_dirs("runs"))
    with pytest.raises(InvalidKeyError):
        list(storage.list_dirs("../"))


def test_get_range_reads_part_of_an_object(storage: Storage) -> None:
    data = bytes(range(256)) * 40
    storage.put("runs/r/prompts.jsonl", data)
    assert storage.get_range("runs/r/prompts.jsonl", 0, 100) == data[:100]
    assert storage.get_range("runs/r/prompts.jsonl", 5000, 4096) == data[5000:9096]
    assert storage.get_range("runs/r/prompts.jsonl", 10_000, 1000) == data[10_000:], "fewer bytes at the end"
    assert storage.get_range("runs/r/prompts.jsonl", 20_000, 10) == b"", "nothing past the end"
    assert storage.get_range("runs/r/prompts.jsonl", 3, 0) == b""
    with pytest.raises(NotFoundError):
        storage.get_range("runs/r/missing.jsonl", 0, 10)
    with pytest.raises(ValueError, match="start >= 0"):
        storage.get_range("runs/r/prompts.jsonl", -1, 10)


def test_md5_matches_content(storage: Storage) -> None:
    storage.put("runs/r1/results/p1.json", b'{"x": 1}')
    expected = hashlib.md5(b'{"x": 1}').hexdigest()
    assert storage.md5("runs/r1/results/p1.json") == expected
    (info,) = storage.list("runs/r1/")
    assert info.md5 in (None, expected)  # a free hint where the backend has one, never a wrong one


def test_create_only_write_never_overwrites(storage: Storage) -> None:
    storage.put("runs/r1/results/p1.json", b"first", if_absent=True)
    with pytest.raises(AlreadyExistsError, match=r"p1\.json"):
        storage.put("runs/r1/results/p1.json", b"second", if_absent=True)
    assert storage.get("runs/r1/results/p1.json") == b"first"
    storage.delete("runs/r1/results/p1.json")
    storage.put("runs/r1/results/p1.json", b"third", if_absent=True)
    assert storage.get("runs/r1/results/p1.json") == b"third"


@pytest.mark.parametrize("round_number", range(3))
def test_concurrent_create_only_writers_exactly_one_wins(storage: Storage, round_number: int) -> None:
    writers = 6
    key = f"runs/race/results/p{round_number}.json"
    start_together = threading.Barrier(writers)
    assert not storage.exists(key)  # also warms up the client, so the writers really start together

    def write(writer: int) -> str:
        payload = f"writer-{writer}".encode() * 1000
        start_together.wait()
        try:
            storage.put(key, payload, if_absent=True)
        except AlreadyExistsError:
            return "lost"
        return "won"

    with ThreadPoolExecutor(writers) as pool:
        outcomes = list(pool.map(write, range(writers)))
    assert outcomes.count("won") == 1, outcomes
    assert outcomes.count("lost") == writers - 1
    winner = outcomes.index("won")
    assert storage.get(key) == f"writer-{winner}".encode() * 1000


@pytest.mark.parametrize("bad_key", BAD_KEYS)
def test_keys_escaping_the_root_are_refused(storage: Storage, bad_key: str) -> None:
    operations: list[Callable[[], object]] = [
        lambda: storage.put(bad_key, b"x"),
        lambda: storage.put(bad_key, b"x", if_absent=True),
        lambda: storage.get(bad_key),
        lambda: storage.exists(bad_key),
        lambda: storage.delete(bad_key),
        lambda: storage.md5(bad_key),
    ]
    for operation in operations:
        with pytest.raises(InvalidKeyError):
            operation()
    assert list(storage.list("")) == []


@pytest.mark.parametrize("bad_prefix", ["../", "/abs/", "a/../../", "a\x00"])
def test_list_refuses_escaping_prefixes(storage: Storage, bad_prefix: str) -> None:
    with pytest.raises(InvalidKeyError):
        list(storage.list(bad_prefix))


def test_readers_never_see_a_partial_object(storage: Storage) -> None:
    versions = [bytes([65 + i]) * 300_000 for i in range(2)]
    storage.put("runs/r1/results/big.json", versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def overwrite() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            storage.put("runs/r1/results/big.json", versions[i % 2])

    writer = threading.Thread(target=overwrite)
    writer.start()
    try:
        for _ in range(25):
            seen.append(storage.get("runs/r1/results/big.json"))
    finally:
        stop.set()
        writer.join()
    assert all(data in versions for data in seen), {len(data) for data in seen}
    assert [info.key for info in storage.list("")] == ["runs/r1/results/big.json"]  # no temp objects visible


def test_check_passes_on_a_usable_storage(storage: Storage) -> None:
    storage.check()
    storage.put("runs/r1/run.json", b"{}")
    storage.check(for_writing=False)


# LocalStorage specifics -----------------------------------------------------------------------


def test_local_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("runs/r1/results/p1.json", b"old")

    def crash(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    # One clear storage error (the CLI prints it as one line), never a bare OSError traceback.
    with pytest.raises(StorageUnavailableError, match="disk full"):
        storage.put("runs/r1/results/p1.json", b"new")
    assert storage.get("runs/r1/results/p1.json") == b"old"
    assert sorted(p.name for p in (tmp_path / "runs/r1/results").iterdir()) == ["p1.json"]


def test_local_traversal_never_touches_outside(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    for bad in ("../outside.json", "a/../../outside.json"):
        with pytest.raises(InvalidKeyError):
            storage.put(bad, b"x")
    assert not (tmp_path / "outside.json").exists()


def test_local_check_for_reading_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        LocalStorage(tmp_path / "missing").check(for_writing=False)
    LocalStorage(tmp_path / "missing").check()  # writable parent: fine for a writer, created on first put
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageUnavailableError, match="not writable"):
        LocalStorage(tmp_path / "afile").check()


def test_file_urls_open_local_storage(tmp_path: Path) -> None:
    from storage_backends import StorageError

    storage = open_storage(f"file://{tmp_path}/res")
    assert isinstance(storage, LocalStorage) and storage.root == tmp_path / "res"
    storage.put("runs/r/run.json", b"{}")
    assert (tmp_path / "res/runs/r/run.json").read_bytes() == b"{}"
    with pytest.raises(StorageError, match="names host 'elsewhere'"):
        open_storage("file://elsewhere/res")
