"""`--device` and the worker's `--gpu`: one GPU, several (the model sharded), auto, and errors that name the fix
(issue 14, item 4). No GPU here: what torch sees is set per test."""

from __future__ import annotations

import pytest
import torch

from tokenlens.devices import DeviceRequest, parse_device, parse_gpu_list, visible_gpus_device
from tokenlens.errors import ConfigError, ModelLoadError
from tokenlens.models import resolve_device, shard_devices
from worker.runtime import worker_device


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> object:
    """Set how many GPUs torch sees: gpus(n)."""

    def see(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return see


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto", DeviceRequest("auto")),
        ("cpu", DeviceRequest("cpu")),
        ("cuda", DeviceRequest("cuda")),
        ("cuda:1", DeviceRequest("cuda", (1,))),
        ("cuda:0,1", DeviceRequest("cuda", (0, 1))),
        ("CUDA:2, 3", DeviceRequest("cuda", (2, 3))),
    ],
)
def test_device_values_parse(text: str, expected: DeviceRequest) -> None:
    assert parse_device(text) == expected
    assert parse_device(text).sharded == (len(expected.indices) > 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu", "unknown device 'gpu'; use one of auto|cpu|cuda|cuda:N|cuda:N,M,..."),
        ("cuda:", "names no GPU"),
        ("cuda:0,", "'' is not a GPU index"),
        ("cuda:a", "'a' is not a GPU index"),
        ("cuda:-1", "'-1' is not a GPU index"),
        ("cuda:1,1", "lists GPU 1 twice"),
    ],
)
def test_bad_device_values_name_the_value_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_device(text)
    assert message in str(caught.value)
    if text.startswith("cuda:"):
        assert repr(text) in str(caught.value) and "--device cuda:0,1" in str(caught.value)


def test_gpu_lists_parse() -> None:
    assert parse_gpu_list("0") == (0,)
    assert parse_gpu_list("0,1") == (0, 1)
    assert parse_gpu_list(" 3 , 1 ") == (3, 1)
    bad_lists = [
        ("", "names no GPU"),
        ("0,x", "'x' is not a GPU index"),
        ("2,2", "lists GPU 2 twice"),
        ("0,\u00b2", "'\u00b2' is not a GPU index"),  # a digit to str.isdigit, not to int()
        ("\u0661", "'\u0661' is not a GPU index"),  # an Arabic-Indic one, which int() would read as 1
    ]
    for bad, message in bad_lists:
        with pytest.raises(ConfigError, match=message):
            parse_gpu_list(bad)


def test_auto_is_every_visible_gpu_else_the_cpu(gpus) -> None:  # type: ignore[no-untyped-def]
    gpus(0)
    assert resolve_device("auto") == "cpu"
    gpus(1)
    assert resolve_device("auto") == "cuda"
    gpus(3)
    assert resolve_device("auto") == "cuda:0,1,2"
    assert shard_devices(resolve_device("auto")) == [0, 1, 2]


def test_listed_gpus_resolve_when_visible(gpus) -> None:  # type: ignore[no-untyped-def]
    gpus(2)
    assert resolve_device("cuda:0,1") == "cuda:0,1" and shard_devices("cuda:0,1") == [0, 1]
    assert resolve_device("cuda:1") == "cuda:1" and shard_devices("cuda:1") == []
    assert resolve_device("cuda") == "cuda" and shard_devices("cpu") == []


def test_gpus_that_are_not_there_are_named_with_the_fix(gpus, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus(0)
    with pytest.raises(ModelLoadError) as caught:
        resolve_device("cuda:0,1")
    assert "device 'cuda:0,1'" in str(caught.value) and "no CUDA GPU is visible" in str(caught.value)
    assert "--device cpu" in str(caught.value)
    gpus(2)
    with pytest.raises(ModelLoadError) as caught:
        resolve_device("cuda:0,2,3")
    message = str(caught.value)
    assert "sees 2 GPU(s), cuda:0 to cuda:1" in message and "not cuda:2, cuda:3" in message
    assert "--device auto" in message
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # a pinned worker: say why the numbers start at 0
    with pytest.raises(ModelLoadError, match="CUDA_VISIBLE_DEVICES='4,5' numbers the visible ones from 0"):
        resolve_device("cuda:4,5")


def test_a_bad_device_is_a_model_load_error(gpus) -> None:  # type: ignore[no-untyped-def]
    gpus(0)
    with pytest.raises(ModelLoadError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_the_worker_device_follows_its_gpus() -> None:
    assert worker_device(None, None) == "auto"
    assert worker_device((3,), None) == "cuda"  # pinned: the one GPU it sees
    assert worker_device((2, 3), None) == "cuda:0,1"  # pinned 2,3: torch numbers them 0 and 1; sharded
    assert worker_device((2, 3), "cuda:1") == "cuda:1"  # --device wins
    assert visible_gpus_device(4) == "cuda:0,1,2,3"
