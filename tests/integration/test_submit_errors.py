"""Bad input is refused before anything is queued; a worker whose model can't load takes no batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.fixtures.redis_server import free_port
from tests.integration.workers import TOKENLENS, run_cli, submit, worker_env, write_prompts
from tokenlens.queue import queue_name

pytestmark = pytest.mark.integration


def _nothing_queued(broker_url: str) -> bool:
    client = redis.Redis.from_url(broker_url)
    keys = [k.decode() if isinstance(k, bytes) else k for k in client.keys("*")]
    return [k for k in keys if not k.startswith("__tokenlens_test")] == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad prompt set", "prompts.jsonl:2: malformed JSON"),
        ("unknown method", "unknown attribution method 'saliencyy'"),
        ("option that doesn't fit", "do not apply to method 'saliency'"),
        ("unreachable broker", "can't reach the broker"),
        ("broker that isn't Redis", "is not a Redis URL"),
        ("results path that can't be written", "not writable"),
        ("results URL with an unknown scheme", "unknown results URL scheme"),
        ("unknown model alias", "unknown model alias"),
        ("contrastive function without contrast targets", "prompts.jsonl:1: prompt 'p000' has no 'contrast_target'"),
    ],
)
def test_submit_refuses_bad_input_and_queues_nothing(case: str, expected: str, tmp_path: Path, broker_url: str) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    results = tmp_path / "results"
    args = {"--model": "some-org/some-model", "--method": "saliency", "--results": str(results), "--broker": broker_url}
    extra: list[str] = []
    if case == "bad prompt set":
        prompts.write_text('{"prompt": "fine"}\n{"prompt": "broken"\n')
    elif case == "unknown method":
        args["--method"] = "saliencyy"
    elif case == "option that doesn't fit":
        extra = ["--n-steps", "8"]
    elif case == "unreachable broker":
        args["--broker"] = f"redis://127.0.0.1:{free_port()}/0"
    elif case == "broker that isn't Redis":
        args["--broker"] = "amqp://guest@127.0.0.1//"
    elif case == "results path that can't be written":
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        args["--results"] = str(blocker / "results")
    elif case == "results URL with an unknown scheme":
        args["--results"] = "ftp://example.org/results"
    elif case == "unknown model alias":
        args["--model"] = "smollm9-nope-instruct"
    elif case == "contrastive function without contrast targets":
        extra = ["--attributed-fn", "contrast_prob"]
    proc = run_cli("submit", str(prompts), *[x for pair in args.items() for x in pair], "--run-id", "refused", *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _nothing_queued(broker_url)
    assert not (results / "runs" / "refused").exists()


def test_resubmitting_a_run_with_another_model_is_refused(tmp_path: Path, broker_url: str) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    results = tmp_path / "results"
    submit(prompts, "some-org/model-a", results, broker_url, "mine")
    client = redis.Redis.from_url(broker_url)
    assert client.llen(queue_name("some-org/model-a")) == 1
    proc = run_cli(
        "submit",
        str(prompts),
        "--model",
        "some-org/model-b",
        "--results",
        str(results),
        "--broker",
        broker_url,
        "--run-id",
        "mine",
    )
    assert proc.returncode == 2
    assert "already exists with model='some-org/model-a'" in proc.stderr
    assert client.llen(queue_name("some-org/model-b")) == 0
    assert client.llen(queue_name("some-org/model-a")) == 1


def test_a_worker_whose_model_cannot_load_exits_and_takes_nothing(tmp_path: Path, broker_url: str) -> None:
    import subprocess

    missing = str(tmp_path / "no-such-model")
    submit(write_prompts(tmp_path / "prompts.jsonl", 2), missing, tmp_path / "results", broker_url, "orphan")
    client = redis.Redis.from_url(broker_url)
    queue = queue_name(missing)
    assert client.llen(queue) == 1
    proc = subprocess.run(
        [TOKENLENS, "worker", "--model", missing, "--broker", broker_url],
        capture_output=True, text=True, env=worker_env(), timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"model directory {missing} does not exist" in proc.stderr
    assert client.llen(queue) == 1
    assert client.hlen("unacked") == 0
