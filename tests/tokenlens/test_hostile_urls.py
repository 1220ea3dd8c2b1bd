"""Hostile and malformed URLs: broker URLs are parsed strictly, results URLs that can't be used are refused, and
every one of them is a single line on stderr with exit status 2 (no traceback, no silent default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_runner import run_tokenlens
from tokenlens.broker_url import BrokerUrlError, check_broker_url, redact_url
from tokenlens.cli import main


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://host:6379/notanumber", "is not a number"),
        ("redis://host:6379/-1", "is not a number"),
        ("redis://host:6379/0/1", "is not a number"),
        ("redis://host:6379/?db=abc", "is not a number"),
        ("redis://host:6379/2?db=3", "two databases"),
        ("redis://[::1", "can't be parsed"),
        ("redis://[not-an-ip]:6379/0", "does not appear to be an IPv4 or IPv6 address"),
        ("redis://host:port/0", "can't be parsed"),
        ("redis://host:99999/0", "can't be parsed"),
        ("redis://host:/0", "port after ':' is missing"),
        ("redis://:6379/0", "names no host"),
        ("redis://bad_host!name:6379/0", "not a valid host"),
        ("redis://host:6379/0#frag", "fragment"),
        ("redis://host:6379/0?evil=1", "unknown query parameter"),
        ("redis://host :6379/0", "spaces or control characters"),
        ("http://host:6379/0", "not a Redis URL"),
        ("sentinel://host:26379", "not a Redis URL"),
        ("unix://relative.sock", "absolute socket path"),
        ("", "empty"),
    ],
)
def test_hostile_broker_urls_are_refused_with_what_a_good_one_looks_like(url: str, expected: str) -> None:
    with pytest.raises(BrokerUrlError) as caught:
        check_broker_url(url)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert "redis://host:6379/0" in message or "empty" in message


def test_good_broker_urls_name_their_database() -> None:
    assert check_broker_url("redis://queue:6379/3").db == 3
    assert check_broker_url("redis://queue").db == 0
    assert check_broker_url("rediss://user:pw@queue.example.com:6380/15?ssl_cert_reqs=required").db == 15
    assert check_broker_url("redis://[::1]:6379/2").host == "[::1]"
    assert check_broker_url("unix:///run/redis.sock?db=4").socket_path == "/run/redis.sock"


def test_a_password_never_shows_in_an_error() -> None:
    with pytest.raises(BrokerUrlError) as caught:
        check_broker_url("redis://:hunter2-secret@host:6379/notanumber")
    assert "hunter2-secret" not in str(caught.value)
    assert "hunter2" not in redact_url("redis://:hunter2@[::1")  # even when the URL can't be parsed


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["cancel", "some-run", "--broker", "redis://localhost:6379/notanumber"], "is not a number"),
        (["cancel", "some-run", "--broker", "redis://[::1"], "can't be parsed"),
        (["worker", "--model", "org/model", "--broker", "redis://h:6379/x"], "is not a number"),
    ],
)
def test_hostile_broker_urls_are_one_line_and_exit_2(
    command: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_tokenlens(command, capsys)
    assert code == 2
    assert expected in one_line_error(err)


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ("/proc/tokenlens-results", "not writable"),
        ("s3://AKIAEXAMPLE:secret@bucket/prefix", "must not contain credentials"),
        ("s3://bucket/../escape", "unsafe prefix"),
        ("ftp://host/results", "unknown results URL scheme"),
        ("file://otherhost/results", "names host"),
    ],
)
def test_hostile_results_urls_are_one_line_and_exit_2_before_anything_is_written(
    results: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    monkeypatch.chdir(tmp_path)
    code, _out, err = run_tokenlens(["run", str(prompts), "--results", results, "--model", "org/model"], capsys)
    assert code == 2
    line = one_line_error(err)
    assert expected in line and "secret" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]


def test_the_debug_flag_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BrokerUrlError):
        main(["--debug", "cancel", "some-run", "--broker", "redis://h:6379/x"])
