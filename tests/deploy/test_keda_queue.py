"""KEDA scales on the list `tokenlens submit` really fills: submit to a real Redis with each worker Deployment's
model, and the ScaledObject's listName holds one entry per queued batch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from tests.deploy.deploy_files import container_env, k8s_kind, pod_spec, worker_deployments
from tokenlens.cli import cli

pytestmark = pytest.mark.integration

#: A database no worker of the other tests consumes, so the batches stay put.
DATABASE = 13


@pytest.fixture
def broker_url(redis_server: str) -> Iterator[str]:
    url = f"{redis_server}/{DATABASE}"
    client = redis.Redis.from_url(url)
    lists = [list_name for _model, list_name in _scaled_lists()]
    client.delete(*lists)
    yield url
    # Only what this test wrote: the queues and the run's bookkeeping keys.
    client.delete(*lists, *client.keys("tokenlens:run:deploy-keda-*"))


def _scaled_lists() -> list[tuple[str, str]]:
    """(model, listName) for each worker Deployment and the ScaledObject that targets it."""
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for _path, doc in k8s_kind("ScaledObject")}
    pairs = []
    for _path, deployment in worker_deployments():
        (container,) = pod_spec(deployment)["containers"]
        model = container_env(container)["TOKENLENS_MODEL"]
        (trigger,) = scaled[deployment["metadata"]["name"]]["spec"]["triggers"]
        pairs.append((model, trigger["metadata"]["listName"]))
    return pairs


@pytest.mark.parametrize(("model", "list_name"), _scaled_lists())
def test_submitted_batches_land_on_the_list_keda_watches(
    model: str, list_name: str, broker_url: str, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"p{n}", "prompt": f"Question {n}?"}) + "\n" for n in range(5)), encoding="utf-8"
    )
    result: Any = CliRunner().invoke(
        cli,
        [
            "submit", str(prompts), "--model", model, "--results", str(tmp_path / "results"),
            "--broker", broker_url, "--batch-size", "2", "--run-id", f"deploy-keda-{tmp_path.name}",
        ],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"in 3 batches on queue {list_name}" in result.output
    # KEDA's redis scaler reads LLEN of listName: one entry per batch waiting.
    assert redis.Redis.from_url(broker_url).llen(list_name) == 3
