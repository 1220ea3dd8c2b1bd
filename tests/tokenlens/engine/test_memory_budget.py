"""The CUDA memory budget counts what PyTorch caches but does not use (issue 14, item 2, first part).

No GPU here: the arithmetic is checked with the numbers a GPU reports, and the CPU budget path runs for real.
"""

from __future__ import annotations

from pathlib import Path

from tokenlens.engine.memory import CPU_MEMORY_BUDGET_BYTES, memory_model, usable_bytes
from tokenlens.models import load_model

GIB = 2**30


def test_cached_but_unallocated_memory_counts_as_usable() -> None:
    # After one long prompt: 2 GiB free on the device, 60 GiB reserved by PyTorch's cache, 16 GiB of it in use.
    assert usable_bytes(2 * GIB, 60 * GIB, 16 * GIB) == 46 * GIB
    # Nothing cached: only the driver's free memory.
    assert usable_bytes(30 * GIB, 16 * GIB, 16 * GIB) == 30 * GIB
    # allocated can briefly exceed reserved in the allocator's own counters: never a negative cache.
    assert usable_bytes(30 * GIB, 10 * GIB, 12 * GIB) == 30 * GIB


def test_cpu_budget_is_the_fixed_cpu_budget_at_most(tiny_gpt2_dir: Path) -> None:
    model = memory_model(load_model(str(tiny_gpt2_dir), device="cpu"))
    assert 0 < model.budget_bytes <= CPU_MEMORY_BUDGET_BYTES
