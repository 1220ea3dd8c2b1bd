"""Hostile queue messages, checked without a worker: the strict batch model, the generation allow-list, signatures,
results locations and the whole door (`check_message`). tests/integration/test_hostile_queue_messages.py pushes the
same kinds of message at a real running worker.

Every refused message must say why in one line, and nothing in it may reach code that runs, loads or writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tokenlens.batch import (
    GENERATION_OPTIONS,
    BatchTask,
    GenerationOptionError,
    PromptRecord,
    validate_generation_params,
)
from tokenlens.errors import TokenLensError
from tokenlens.locations import ResultsLocations
from tokenlens.message_check import AcceptedBatch, DoorPolicy, Refusal, check_message
from tokenlens.queue import RUN_HEADER, SIGNATURE_HEADER, build_message
from tokenlens.signing import MIN_KEY_CHARS, check_key, sign_batch, signature_matches
from tokenlens.spec import RunSpec

KEY = "unit-test-queue-key-0123456789abcdef"


def batch(results: Path, **changes: Any) -> dict[str, Any]:
    task = BatchTask(
        run_id="r1",
        results_url=str(results),
        model="org/model",
        method="saliency",
        prompts=[PromptRecord(id="p1", prompt="hello")],
    ).model_dump(mode="json")
    task.update(changes)
    return task


def message(raw_batch: dict[str, Any], *, key: str | None = KEY, body: Any = None) -> tuple[dict[str, Any], bytes]:
    """(headers, body bytes) of a message carrying `raw_batch` as submit would send it, signed with `key`."""
    valid = BatchTask(
        run_id="r1", results_url="/r", model="m", method="saliency", prompts=[PromptRecord(id="t", prompt="t")]
    )
    envelope = json.loads(build_message(valid, "b1", "tokenlens.m"))
    headers: dict[str, Any] = envelope["headers"]
    headers[RUN_HEADER] = raw_batch.get("run_id")
    if key is not None:
        headers[SIGNATURE_HEADER] = sign_batch(key, raw_batch, "b1")
    content = body if body is not None else [[raw_batch], {"batch_id": "b1"}, {"callbacks": None, "chord": None}]
    return headers, (content if isinstance(content, bytes) else json.dumps(content).encode())


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "results"
    path.mkdir()
    return path


@pytest.fixture
def policy(results: Path) -> DoorPolicy:
    return DoorPolicy(locations=ResultsLocations([str(results)]), signing_key=KEY)


def refused(headers: Any, body: Any, policy: DoorPolicy, content_type: Any = "application/json") -> Refusal:
    verdict = check_message(headers, body, content_type, policy)
    assert isinstance(verdict, Refusal), verdict
    assert verdict.reason and "\n" not in verdict.reason
    return verdict


def test_a_good_signed_batch_is_accepted(results: Path, policy: DoorPolicy) -> None:
    headers, body = message(batch(results))
    verdict = check_message(headers, body, "application/json", policy)
    assert isinstance(verdict, AcceptedBatch)
    assert verdict.batch.run_id == "r1" and verdict.batch_id == "b1"


# --- the envelope ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected_kind"),
    [
        ("headers_missing", "not_a_batch"),
        ("another_task", "not_a_batch"),
        ("pickle", "undecodable"),
        ("not_json", "undecodable"),
        ("nan_in_json", "undecodable"),
        ("not_utf8", "undecodable"),
        ("body_a_dict", "not_a_batch"),
        ("two_args", "not_a_batch"),
        ("kwargs_extra", "not_a_batch"),
        ("batch_id_path", "not_a_batch"),
        ("chord", "not_a_batch"),
        ("eta", "not_a_batch"),
        ("expires", "not_a_batch"),
        ("retries_text", "not_a_batch"),
        ("timelimit_text", "not_a_batch"),
        ("no_task_id", "not_a_batch"),
    ],
)
def test_hostile_envelopes_are_refused(case: str, expected_kind: str, results: Path, policy: DoorPolicy) -> None:
    good = batch(results)
    headers, body = message(good)
    content_type = "application/json"
    if case == "headers_missing":
        headers = None  # type: ignore[assignment]
    elif case == "another_task":
        headers["task"] = "celery.backend_cleanup"
    elif case == "pickle":
        content_type = "application/x-python-serialize"
    elif case == "not_json":
        body = b"cos\nsystem\n(S'id'\ntR."  # a pickle that would run `id`
    elif case == "nan_in_json":
        body = b'[[{"run_id": NaN}], {"batch_id": "b1"}, {}]'
    elif case == "not_utf8":
        body = b"\xff\xfe\x00"
    elif case == "body_a_dict":
        body = b'{"not": "a list"}'
    elif case == "two_args":
        body = json.dumps([[good, good], {"batch_id": "b1"}, {}]).encode()
    elif case == "kwargs_extra":
        body = json.dumps([[good], {"batch_id": "b1", "storage": "/etc"}, {}]).encode()
    elif case == "batch_id_path":
        body = json.dumps([[good], {"batch_id": "../x"}, {}]).encode()
    elif case == "chord":
        body = json.dumps([[good], {"batch_id": "b1"}, {"chord": {"task": "x"}}]).encode()
    elif case == "eta":
        headers["eta"] = "2999-01-01T00:00:00"
    elif case == "expires":
        headers["expires"] = "2000-01-01T00:00:00"
    elif case == "retries_text":
        headers["retries"] = "many"
    elif case == "timelimit_text":
        headers["timelimit"] = [None, "forever"]
    elif case == "no_task_id":
        del headers["id"]
    assert refused(headers, body, policy, content_type).kind == expected_kind


# --- signatures --------------------------------------------------------------------------------------------------


def test_hostile_unsigned_batch_is_refused_when_a_key_is_set(results: Path, policy: DoorPolicy) -> None:
    headers, body = message(batch(results), key=None)
    assert refused(headers, body, policy).kind == "unsigned"
    # Without a key on the worker, unsigned batches are fine (signing is opt-in).
    open_policy = DoorPolicy(locations=policy.locations, signing_key=None)
    assert isinstance(check_message(headers, body, "application/json", open_policy), AcceptedBatch)


@pytest.mark.parametrize("tamper", ["other_key", "prompt_changed", "results_changed", "batch_id_changed", "not_text"])
def test_hostile_signature_mismatch_is_refused(tamper: str, results: Path, policy: DoorPolicy) -> None:
    good = batch(results)
    headers, body = message(good, key="another-key-entirely-0123456789abcdef" if tamper == "other_key" else KEY)
    if tamper == "prompt_changed":
        body = json.dumps([[batch(results, prompts=[{"id": "p1", "prompt": "evil"}])], {"batch_id": "b1"}, {}]).encode()
    elif tamper == "results_changed":
        body = json.dumps([[batch(results / "sub")], {"batch_id": "b1"}, {}]).encode()
    elif tamper == "batch_id_changed":
        body = json.dumps([[good], {"batch_id": "b2"}, {}]).encode()
    elif tamper == "not_text":
        headers[SIGNATURE_HEADER] = ["0" * 64]
    assert refused(headers, body, policy).kind == "bad_signature"


def test_signatures_ignore_key_order_and_never_accept_non_json_values() -> None:
    one = {"a": 1, "b": [1, 2], "c": "é"}
    two = {"c": "é", "b": [1, 2], "a": 1}
    assert sign_batch(KEY, one, "b1") == sign_batch(KEY, two, "b1")
    assert not signature_matches(KEY, {"a": float("nan")}, "b1", "0" * 64)


def test_a_short_queue_key_is_refused_without_showing_it() -> None:
    short = "s3cr3t"
    with pytest.raises(TokenLensError) as caught:
        check_key(short)
    assert short not in str(caught.value) and str(MIN_KEY_CHARS) in str(caught.value)


# --- the batch itself ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"generation_params": {"custom_generate": "/tmp/evil", "trust_remote_code": True}}, "custom_generate"),
        ({"generation_params": {"logits_processor": "os.system"}}, "logits_processor"),
        ({"generation_params": {"streamer": {"__class__": "x"}}}, "streamer"),
        ({"generation_params": {"temperature": 0}}, "temperature"),
        ({"generation_params": {"temperature": "hot"}}, "temperature"),
        ({"generation_params": {"top_p": 1.5}}, "top_p"),
        ({"generation_params": {"num_beams": 10_000}}, "num_beams"),
        ({"generation_params": {"do_sample": "yes"}}, "do_sample"),
        ({"generation_params": "max_new_tokens=5"}, "generation_params"),
        ({"max_new_tokens": 10**9}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"max_new_tokens": "64"}, "max_new_tokens"),
        ({"model_path": "/etc"}, "model_path"),
        ({"trust_remote_code": True}, "trust_remote_code"),
        ({"run_id": "../../etc"}, "run_id"),
        ({"run_id": 42}, "run_id"),
        ({"prompts": []}, "prompts"),
        ({"prompts": [{"id": "p1", "prompt": "x", "exec": "id"}]}, "prompts.0.exec"),
        ({"prompts": [{"id": "../p", "prompt": "x"}]}, "prompts.0.id"),
        ({"prompts": [{"id": "p1", "prompt": "x" * 1_000_001}]}, "prompts.0.prompt"),
        ({"method_params": {"n_steps": {"__import__": "os"}}}, "method_params"),
        ({"chat_template": "false"}, "chat_template"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_hostile_batch_fields_are_refused(
    change: dict[str, Any], where: str, results: Path, policy: DoorPolicy
) -> None:
    raw = batch(results, **change)
    with pytest.raises(ValidationError) as caught:
        BatchTask.model_validate(raw)
    assert where in str(caught.value)
    headers, body = message(raw)
    verdict = refused(headers, body, policy)
    assert verdict.kind == "invalid_batch" and where.split(".")[0] in verdict.reason


def test_every_allowed_generation_option_takes_a_plain_bounded_value() -> None:
    sample = {
        "max_new_tokens": 8, "min_new_tokens": 1, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50,
        "typical_p": 0.95, "repetition_penalty": 1.1, "no_repeat_ngram_size": 3, "num_beams": 2, "length_penalty": 1.0,
    }  # fmt: skip
    assert set(sample) == set(GENERATION_OPTIONS)
    assert validate_generation_params(sample) == sample
    assert validate_generation_params({"top_k": 5.0}) == {"top_k": 5}  # JSON has one number type
    with pytest.raises(GenerationOptionError, match="allowed:"):
        validate_generation_params({"trust_remote_code": True})


def test_submit_refuses_a_generation_option_off_the_list_before_anything_runs() -> None:
    with pytest.raises(GenerationOptionError, match="custom_generate"):
        RunSpec(run_id="r", model="org/model", generation_params={"custom_generate": "/tmp/evil"})
    with pytest.raises(TokenLensError, match="from 1 to"):
        RunSpec(run_id="r", model="org/model", batch_size=10**9)


# --- where it may write -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["sibling", "dotdot", "link_out", "other_scheme", "other_bucket", "bucket_prefix_lookalike"]
)
def test_hostile_results_locations_are_refused(where: str, tmp_path: Path, results: Path) -> None:
    (tmp_path / "outside").mkdir()
    (results / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    urls = {
        "sibling": str(tmp_path / "results2"),
        "dotdot": f"{results}/../outside",
        "link_out": str(results / "link"),
        "other_scheme": "http://attacker.example/results",
        "other_bucket": "s3://other-bucket/tokenlens",
        "bucket_prefix_lookalike": "s3://bucket/tokenlens-evil",
    }
    policy = DoorPolicy(locations=ResultsLocations([str(results), "s3://bucket/tokenlens"]), signing_key=KEY)
    headers, body = message(batch(results, results_url=urls[where]))
    assert refused(headers, body, policy).kind == "results_location"


def test_results_locations_match_after_normalising(
    tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    locations = ResultsLocations(["./results", "s3://bucket/tokenlens/"])
    assert locations.allows(str(results))  # ./results and /abs/results are one place
    assert locations.allows(f"file://{results}")
    assert locations.allows(f"{results}/sub/../")
    assert locations.allows(str(results / "team-a"))  # beneath an allowed location
    assert locations.allows("s3://bucket/tokenlens") and locations.allows("s3://bucket//tokenlens/run-a")
    assert not locations.allows("s3://bucket")
    assert not locations.allows("")
