"""S3Storage against a real SeaweedFS: pagination, the AWS configuration chain, bad input, and outages."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storage_backends import (
    InvalidKeyError,
    StorageError,
    StorageUnavailableError,
    open_storage,
)
from storage_backends.s3 import S3Storage, parse_s3_url
from tests.fixtures.seaweedfs import WeedServer, apply_s3_env, free_ports

# URL parsing: no server needed ---------------------------------------------------------------


def test_parse_s3_url_splits_bucket_and_prefix() -> None:
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("S3://bucket/x") == ("bucket", "x")
    storage = S3Storage.from_url("s3://bucket/team/exp1/")
    assert (storage.bucket, storage.prefix, storage.url) == ("bucket", "team/exp1/", "s3://bucket/team/exp1")


@pytest.mark.parametrize(
    ("url", "error", "message"),
    [
        ("s3://", StorageError, "names no bucket"),
        ("s3:///prefix", StorageError, "names no bucket"),
        ("s3://b/prefix", StorageError, "not a valid bucket name"),
        ("s3://bucket/a?region=eu", StorageError, "query or fragment"),
        ("s3://bucket/../up", InvalidKeyError, "unsafe prefix"),
        ("s3://bucket/a/%2e%2e/b", InvalidKeyError, "unsafe prefix"),
        ("s3://bucket/a//b", InvalidKeyError, "unsafe prefix"),
        ("gs://bucket/prefix", StorageError, "unknown results URL scheme 'gs'.*s3://"),
        ("ftp://host/x", StorageError, "use one of: a local path, file://, s3://"),
        ("", StorageError, "empty results URL"),
    ],
)
def test_bad_urls_are_refused_clearly(url: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        open_storage(url)


def test_credentials_in_the_url_are_refused_and_not_echoed() -> None:
    with pytest.raises(StorageError) as caught:
        open_storage("s3://AKIAEXAMPLE:supersecretvalue@bucket/prefix")
    assert "must not contain credentials" in str(caught.value)
    assert "supersecretvalue" not in str(caught.value)
    assert "AKIAEXAMPLE" not in str(caught.value)


# against the session server -----------------------------------------------------------------


@pytest.mark.integration
def test_listing_paginates_past_1000_keys(s3_results_url: str) -> None:
    storage = open_storage(s3_results_url)
    keys = [f"runs/big/results/p{i:05d}.json" for i in range(1105)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: storage.put(key, key.encode()), keys))
    listed = list(storage.list("runs/big/results/"))
    assert [info.key for info in listed] == keys  # all pages, in key order
    assert all(info.size == len(info.key) for info in listed)
    assert len(list(storage.list(""))) == 1105


@pytest.mark.integration
def test_objects_carry_their_content_type_and_encoding(s3_results_url: str) -> None:
    import gzip

    storage = S3Storage.from_url(s3_results_url)
    body = gzip.compress(b'{"metadata":{},"data":{}}', mtime=0)
    storage.put("runs/r/results/p.json", body, if_absent=True, content_type="application/json", content_encoding="gzip")
    storage.put("runs/r/results/q.json", b"{}")
    storage.put("runs/r/plots/p.png", b"\x89PNG", content_type="image/png")
    head = storage.client.head_object(Bucket=storage.bucket, Key=f"{storage.prefix}runs/r/results/p.json")
    assert (head["ContentType"], head.get("ContentEncoding")) == ("application/json", "gzip")
    plain = storage.client.head_object(Bucket=storage.bucket, Key=f"{storage.prefix}runs/r/results/q.json")
    assert plain["ContentType"] == "application/json" and not plain.get("ContentEncoding")
    png = storage.client.head_object(Bucket=storage.bucket, Key=f"{storage.prefix}runs/r/plots/p.png")
    assert png["ContentType"] == "image/png"
    assert storage.get("runs/r/results/p.json") == body  # stored bytes, never decoded on the way back


@pytest.mark.integration
def test_the_standard_endpoint_variables_are_honoured(s3_results_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL (the AWS SDK rule): a dead global endpoint is ignored.
    good = S3Storage.from_url(s3_results_url)
    good.put("k.json", b"1")
    (dead_port,) = free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", good.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead_port}")
    assert open_storage(s3_results_url).get("k.json") == b"1"


@pytest.mark.integration
def test_aws_profile_supplies_endpoint_and_keys(
    s3_results_url: str, s3_server: WeedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.write_text(f"[profile tokenlens-test]\nendpoint_url = {s3_server.endpoint_url}\nregion = us-east-1\n")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[tokenlens-test]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "tokenlens-test")
    storage = open_storage(s3_results_url)
    storage.check()
    storage.put("from-profile.json", b"ok", if_absent=True)
    assert storage.get("from-profile.json") == b"ok"

    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(StorageUnavailableError, match="AWS_PROFILE"):
        open_storage(s3_results_url).check()


@pytest.mark.integration
def test_missing_bucket_is_a_clear_error(s3_env: WeedServer) -> None:
    storage = open_storage("s3://no-such-bucket-here/prefix")
    with pytest.raises(StorageUnavailableError, match="bucket 'no-such-bucket-here' does not exist"):
        storage.check()


SECRET_LOOKING = ("wrong-secret-do-not-print", "AKWRONGKEYNOTPRINTED")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AWS_SECRET_ACCESS_KEY", SECRET_LOOKING[0], "secret access key does not match"),
        ("AWS_ACCESS_KEY_ID", SECRET_LOOKING[1], "access key id is not known"),
    ],
)
def test_wrong_credentials_fail_check_without_leaking_them(
    s3_results_url: str,
    s3_server: WeedServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    value: str,
    message: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="storage_backends")
    monkeypatch.setenv(variable, value)
    storage = open_storage(s3_results_url)
    with pytest.raises(StorageUnavailableError, match=message) as caught:
        storage.check()
    with pytest.raises(StorageUnavailableError, match=message):
        storage.put("x.json", b"1")
    shown = str(caught.value) + caplog.text
    for secret in (*SECRET_LOOKING, s3_server.secret_key):
        assert secret not in shown


@pytest.mark.integration
def test_missing_credentials_are_a_clear_error(s3_results_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageUnavailableError, match=r"no usable AWS credentials.*AWS_ACCESS_KEY_ID"):
        open_storage(s3_results_url).check()


@pytest.mark.integration
def test_unreachable_endpoint_fails_check_after_a_short_retry(
    s3_env: WeedServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (dead_port,) = free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead_port}")
    storage = open_storage("s3://tokenlens-test/prefix")
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as caught:
        storage.check()
    elapsed_s = time.monotonic() - started
    message = str(caught.value)
    assert f"127.0.0.1:{dead_port}" in message
    attempts = int(re.search(r"gave up after (\d+) attempt", message).group(1))  # type: ignore[union-attr]
    assert attempts >= 2, message  # it did retry
    assert elapsed_s < 15, elapsed_s  # ... briefly
    assert "retrying" in caplog.text


# outages: a private server the test kills -------------------------------------------------------


@pytest.mark.integration
def test_server_stopped_mid_run_retries_then_raises_then_recovers(
    weed_server_factory: Callable[[], WeedServer], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = weed_server_factory()
    apply_s3_env(monkeypatch, server)
    storage = S3Storage.from_url(f"s3://{server.bucket}/outage", unavailable_after_s=2.0)
    storage.put("runs/r/results/p1.json", b"before")
    server.kill()

    for operation in (
        lambda: storage.put("runs/r/results/p2.json", b"during"),
        lambda: storage.get("runs/r/results/p1.json"),
        lambda: list(storage.list("runs/")),
    ):
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match=r"cannot reach S3 endpoint .* gave up after"):
            operation()
        assert 1.0 < time.monotonic() - started < 15
    assert "retrying" in caplog.text

    server.start()  # same ports, same data
    assert storage.get("runs/r/results/p1.json") == b"before"
    assert not storage.exists("runs/r/results/p2.json")  # the failed write left nothing behind


@pytest.mark.integration
def test_a_write_survives_a_short_outage(
    weed_server_factory: Callable[[], WeedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = weed_server_factory()
    apply_s3_env(monkeypatch, server)
    storage = S3Storage.from_url(f"s3://{server.bucket}/blip", unavailable_after_s=60.0)
    storage.put("runs/r/run.json", b"{}")
    server.kill()
    restarter = threading.Timer(2.0, server.start)
    restarter.start()
    try:
        storage.put("runs/r/results/p1.json", b"written across the outage", if_absent=True)
    finally:
        restarter.join()
    assert storage.get("runs/r/results/p1.json") == b"written across the outage"
