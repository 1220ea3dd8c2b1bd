"""The memory model (issue 14, item 2): the CUDA budget counts what PyTorch caches but does not use, and the
buffers it adds beside the graph are the sizes the engine really allocates.

No GPU here: the budget arithmetic is checked with the numbers a GPU reports, the CPU budget path runs for
real, and buffer sizes are measured on the CPU tensors the engine creates.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from tokenlens.engine import gradient_pass
from tokenlens.engine.head_gradient import HeadGradient
from tokenlens.engine.layout import LM_HEAD_ROWS, Item
from tokenlens.engine.memory import CPU_MEMORY_BUDGET_BYTES, MemoryModel, memory_model, usable_bytes
from tokenlens.engine.methods import NATIVE_METHODS
from tokenlens.engine.registry import validate_options
from tokenlens.engine.types import PromptInput
from tokenlens.models import load_model

GIB = 2**30


def forced_item(index: int, n_in: int, n_out: int) -> Item:
    ids = [100 + (7 * i) % 400 for i in range(n_in)]
    target = [300 + (11 * i) % 400 for i in range(n_out)]
    return Item(index, PromptInput(f"p{index}", "", ids, [False] * n_in, n_out, target_ids=target), target)


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


# --------------------------------------------------------------------------- the buffers the memory model adds


def test_accumulator_bytes_are_the_tensor_integrated_gradients_allocates(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    created: list[torch.Tensor] = []
    real_zeros = gradient_pass._zeros

    def zeros(shape: tuple[int, ...], device: Any) -> Any:
        created.append(real_zeros(shape, device))
        return created[-1]

    monkeypatch.setattr(gradient_pass, "_zeros", zeros)
    items = [forced_item(0, 9, 5), forced_item(1, 12, 7)]
    options = validate_options("integrated_gradients", {"n_steps": 4})
    method = NATIVE_METHODS["integrated_gradients"]
    method.attribute_batch(loaded, items, options, 2, 2)  # two steps per pass: the sum over passes is needed
    accumulator = [tensor for tensor in created if tensor.dim() == 4]
    assert len(accumulator) == 1
    end = max(len(item.ids) for item in items) - 1  # the pass never runs over the last token
    model = memory_model(loaded)
    assert accumulator[0].nbytes == model.accumulator_bytes(len(items), 7, end)


def is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


class LiveVocabTensors(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch leaves the mode untyped
    """The most bytes of vocabulary-sized tensors alive at once while the mode is on (no autograd inside)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.vocab, self.live, self.peak = vocab, 0, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs)) if is_tensor(t)}
        for tensor in pytree.tree_leaves(out):
            if is_tensor(tensor) and tensor.dim() and tensor.shape[-1] == self.vocab:
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in inputs:  # a view (the weight transposed) holds no memory of its own
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(tensor, self._free, storage.nbytes())
        return out

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, LM_HEAD_ROWS + 3])
def test_head_bytes_bound_what_the_closed_form_head_holds(tiny_llama_dir: Path, dtype: torch.dtype, rows: int) -> None:
    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    head = HeadGradient(loaded, "probability")
    hidden = torch.randn(rows, loaded.model.config.hidden_size, dtype=dtype)
    tokens = torch.randint(0, vocab, (rows,))
    with torch.no_grad(), LiveVocabTensors(vocab) as meter:
        head(hidden, tokens)
    modelled = memory_model(loaded).head_bytes(rows)
    assert meter.peak <= modelled <= 2 * meter.peak


def llama3_8b(element_bytes: int, capacity_bytes: int, saves_attention_weights: bool = False) -> MemoryModel:
    """Llama-3-8B's shape (config.json of meta-llama/Meta-Llama-3-8B) with a device that can give it this much;
    gradient passes run SDPA unless `saves_attention_weights` (eager attention)."""
    return MemoryModel(
        capacity_bytes // 2, 32, 4096, 14336, 32, element_bytes, 128256, capacity_bytes, saves_attention_weights
    )


@pytest.mark.parametrize("eager", [False, True], ids=["sdpa", "eager"])
def test_the_issue_prompt_fits_an_h200_in_bfloat16_and_float32_is_refused_on_an_h100(eager: bool) -> None:
    """2,000 + 512 tokens on the 8B shape must run without a failed attempt on an H200 (141 GB, 16 GB of it
    bfloat16 weights); in float32 on an H100 (80 GB, 32 GB of it weights) it can never run and is refused,
    with SDPA in the gradient passes (as they run) and with eager attention alike. SDPA needs less than eager."""
    saliency = NATIVE_METHODS["saliency"]
    options = validate_options("saliency", {})
    h200 = llama3_8b(2, 141 * 10**9 - 16 * 10**9, eager)
    assert saliency.alone_bytes(h200, 2512, 512, options) <= h200.limit_bytes
    h100 = llama3_8b(4, 80 * 10**9 - 32 * 10**9, eager)
    assert saliency.alone_bytes(h100, 2512, 512, options) > h100.limit_bytes
    if eager:
        sdpa = llama3_8b(2, 141 * 10**9 - 16 * 10**9, False)
        assert saliency.alone_bytes(sdpa, 2512, 512, options) < saliency.alone_bytes(h200, 2512, 512, options)
    ig = NATIVE_METHODS["integrated_gradients"]
    ig_options = validate_options("integrated_gradients", {})
    # integrated gradients adds its float32 accumulator: 4 bytes x 512 targets x 2,512 positions x 4,096 (~21 GB)
    extra = ig.alone_bytes(h200, 2512, 512, ig_options) - saliency.alone_bytes(h200, 2512, 512, options)
    assert extra == 4 * 512 * 2512 * 4096
