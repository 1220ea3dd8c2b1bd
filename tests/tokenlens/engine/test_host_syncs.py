"""The native engine reads the device a fixed number of times per batch, not per token (issue 14, item 5).

On a GPU every read of a device tensor from the host (`.item()`, `.tolist()`, `.cpu()`, `bool(t)`, `int(t)`)
waits for the device to finish everything queued, so a read per target or per generated token stalls the
kernel queue. There is no GPU here; on the CPU the same calls are counted where the engine's own code makes
them (the model's internals are left out) and compared between 4 and 16 output tokens.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tokenlens.engine import generation
from tokenlens.engine.generation import GPU_FINISH_CHECK_STEPS, generate_greedy
from tokenlens.engine.native import attribute_native
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import AttributionOutput, PromptFailure, PromptInput
from tokenlens.models import LoadedModel, load_model

#: Tensor methods that copy to the host, so wait for a GPU.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
ENGINE_DIR = str(Path(generation.__file__).parent)


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir), device="cpu")


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every host read of a tensor made by code in tokenlens/engine/, by name, as it happens."""
    reads: list[str] = []

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if sys._getframe(1).f_code.co_filename.startswith(ENGINE_DIR):
                reads.append(name)
            return real(self, *args, **kwargs)

        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    yield reads


def prompt(prompt_id: str, n_in: int, n_out: int, forced: bool) -> PromptInput:
    ids = [100 + (7 * i) % 400 for i in range(n_in)]
    target = [300 + (11 * i) % 400 for i in range(n_out)] if forced else None
    return PromptInput(prompt_id, "", ids, [False] * n_in, n_out, target_ids=target)


def ok(result: AttributionOutput | PromptFailure) -> AttributionOutput:
    assert isinstance(result, AttributionOutput), result
    return result


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_attribution_reads_the_device_a_fixed_number_of_times_per_batch(
    tiny_llama: LoadedModel, host_reads: list[str], method: str
) -> None:
    opts = validate_options(method, {"target_chunk": 2, "n_steps": 2} if method != "saliency" else {"target_chunk": 2})
    counts = {}
    for n_out in (4, 16):
        host_reads.clear()
        batch = [prompt("a", 9, n_out, forced=True), prompt("b", 12, n_out, forced=True)]
        results = attribute_native(tiny_llama, batch, method, opts, batch_size=2)
        assert all(ok(r).scores.shape == (n_out, len(p.input_ids) + n_out) for r, p in zip(results, batch, strict=True))
        counts[n_out] = list(host_reads)
    # 16 targets take four times the backward calls (two targets each) of 4, and no more reads.
    assert 0 < len(counts[16]) == len(counts[4]) <= 4, counts


def test_generation_reads_the_device_once_per_finish_check(
    tiny_llama: LoadedModel, host_reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    never_generated = {"eos_token_id": len(tiny_llama.tokenizer) - 1}  # so every row runs its full length

    def generate(n_out: int) -> tuple[list[list[int]], int]:
        host_reads.clear()
        outputs = generate_greedy(
            tiny_llama, [prompt("a", 9, n_out, False), prompt("b", 5, n_out, False)], never_generated
        )
        assert [len(o) for o in outputs] == [n_out, n_out]
        return outputs, len(host_reads)

    # On the CPU a read is free and a decoding step past the end is not: one finish check per step.
    cpu_short, cpu_short_reads = generate(4)
    cpu_long, cpu_long_reads = generate(16)
    assert cpu_long_reads - cpu_short_reads == 16 - 4
    # On a GPU, one check every GPU_FINISH_CHECK_STEPS steps; the tokens read once, at the end.
    monkeypatch.setattr(generation, "steps_between_finish_checks", lambda device: GPU_FINISH_CHECK_STEPS)
    gpu_short, gpu_short_reads = generate(4)
    gpu_long, gpu_long_reads = generate(16)
    assert gpu_short_reads == 1  # four steps: no check before the end, one read of every token
    assert gpu_long_reads - gpu_short_reads == 16 // GPU_FINISH_CHECK_STEPS
    assert gpu_long == cpu_long and gpu_short == cpu_short
    assert all(long[:4] == short for long, short in zip(cpu_long, cpu_short, strict=True))
