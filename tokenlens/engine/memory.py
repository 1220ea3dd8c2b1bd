"""How much the native engine may hold at once, and what to do when that was too much.

Batches, integration-step groups and target chunks are sized from a memory budget before anything runs,
because on Linux running out of RAM usually means the OOM killer, not a MemoryError to recover from. An
out-of-memory error that still happens is recognised here and the engine (engine/native.py) retries smaller.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenlens.engine.attention import saves_attention_weights
from tokenlens.engine.layout import LM_HEAD_ROWS, MAX_SEGMENTS
from tokenlens.errors import MethodOptionError
from tokenlens.models import LoadedModel

#: Memory the engine plans to use on CPU (at most a quarter of the machine's RAM). On CUDA it plans with half
#: the free memory.
CPU_MEMORY_BUDGET_BYTES = 4 << 30
#: On CPU, at most this many target slots x rows per backward call. Measured on SmolLM2-135M, 2 cores,
#: integrated gradients (8 step rows) on 64 targets: 64 slot-rows took 42-47 s, 128 took 51 s, 32 took 49 s;
#: larger calls make the backward's memory-bound elementwise work slower. GPUs take the full `target_chunk`.
CPU_SLOT_ROWS = 64


@dataclass(frozen=True)
class MemoryModel:
    """Rough bytes per token of one row (a prompt, or a prompt at one integration step), to size work up front.

    Calibrated on SmolLM2-135M in float32 (measured: ~2.6 MB per token-row of graph); deliberately on the
    safe side. Out-of-memory errors that still happen halve chunk and batch.
    """

    budget_bytes: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    element_bytes: int
    vocab: int = 0
    #: The most the device can give the engine at all (0: the budget). A prompt whose smallest pieces need
    #: more is refused before anything runs (engine/native.py); the budget above only sizes the pieces.
    capacity_bytes: int = 0
    #: Whether the gradient passes run eager attention, which keeps every head's O(L^2) probabilities in the
    #: graph; SDPA keeps one log-sum-exp per head and position instead (engine/attention.py).
    saves_attention_weights: bool = True

    def graph_bytes(self, width: int) -> int:
        """Saved activations of one token-row through the whole model (keys/values once per segment)."""
        per_layer = 12 * self.hidden + 4 * self.intermediate + 2 * (MAX_SEGMENTS + 1) * self.hidden
        return self.layers * self.element_bytes * (per_layer + self.gradient_attention_elements(width))

    def backward_bytes(self, width: int) -> int:
        """Transient gradient memory of one target slot for one token-row (one layer at a time)."""
        return self.element_bytes * (2 * self.intermediate + 4 * self.hidden + self.gradient_attention_elements(width))

    def gradient_attention_elements(self, width: int) -> int:
        """Attention's own saved (or transient) elements per token-row and layer in a gradient pass: every head's
        probabilities over `width` keys under eager attention; one float32 log-sum-exp per head under SDPA."""
        return 2 * self.heads * (width if self.saves_attention_weights else 1)

    def attention_bytes(self, width: int) -> int:
        """One row's attention weights (every layer and head, kept until averaged) and forward activations."""
        return self.element_bytes * self.layers * width * (self.heads * width + 4 * self.hidden + self.intermediate)

    def head_bytes(self, rows: int) -> int:
        """The closed-form head's buffers for `rows` targets (engine/head_gradient.py, at most LM_HEAD_ROWS at
        once): logits in the model's dtype, the softmax and its masked copy in float32, that copy in the model's
        dtype again for the product with the head's weight."""
        return min(rows, LM_HEAD_ROWS) * self.vocab * (2 * self.element_bytes + 8)

    def accumulator_bytes(self, prompts: int, n_out: int, width: int) -> int:
        """Integrated gradients' float32 sum over integration-step groups: every target x prompt x position x
        embedding (engine/gradient_pass.py, allocated only when the steps take more than one pass)."""
        return 4 * n_out * prompts * width * self.hidden

    def rows_that_fit(self, width: int, reserved_bytes: int = 0) -> int:
        """Token-rows of `width` whose graph fits in two thirds of the budget, less `reserved_bytes` held beside
        it (integrated gradients' accumulator)."""
        return max(1, (2 * self.budget_bytes // 3 - reserved_bytes) // (width * self.graph_bytes(width)))

    def slots_that_fit(self, rows: int, width: int, reserved_bytes: int = 0) -> int:
        """Target slots per backward call that fit in a third of the budget, for `rows` rows of `width`, less
        `reserved_bytes` held beside them (the head's rows)."""
        return max(1, (self.budget_bytes // 3 - reserved_bytes) // (rows * width * self.backward_bytes(width)))

    @property
    def limit_bytes(self) -> int:
        """What a prompt's smallest pieces may need at most: the device's capacity, else the budget."""
        return self.capacity_bytes or self.budget_bytes


def layer_head_counts(loaded: LoadedModel) -> tuple[int, int]:
    config = loaded.model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not layers or not heads:
        raise MethodOptionError(f"can't tell the layer and head counts of {loaded.model_id}; use --engine inseq")
    return int(layers), int(heads)


def memory_model(loaded: LoadedModel) -> MemoryModel:
    import torch

    config = loaded.model.config
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0) or 1024)
    intermediate = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
    layers, heads = layer_head_counts(loaded)
    embeddings = loaded.model.get_input_embeddings().weight
    element_bytes = torch.finfo(embeddings.dtype).bits // 8
    vocab = int(getattr(config, "vocab_size", None) or embeddings.shape[0])
    budget = budget_bytes(loaded.model)
    if any(torch.device(device).type == "cuda" for device in layer_devices(loaded.model)):
        capacity = 2 * budget  # the budget is half of what the devices can give
    else:
        capacity = cpu_available_bytes()
    return MemoryModel(
        int(budget),
        layers,
        hidden,
        intermediate,
        heads,
        element_bytes,
        vocab,
        capacity,
        saves_attention_weights(loaded.model),
    )


def cpu_available_bytes() -> int:
    """RAM a new allocation can still get (Linux's MemAvailable), else the machine's RAM; 0 if unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 0


def budget_bytes(model: Any) -> int:
    """The budget of the whole pass, read from every device holding decoder layers.

    A pass's graph is per layer, and a sharded model's layers sit on several devices (tokenlens.models loads it
    with accelerate's balanced device map), each holding the graph of its own layers. The pass fits when every
    device's budget covers its share, so the budget is the smallest of budget(device) x layers / layers on it:
    for two GPUs holding 16 of 32 layers each, twice the smaller GPU's budget. One device: its own budget.
    """
    counts = Counter(str(device) for device in layer_devices(model))
    total = sum(counts.values())
    return min(device_budget_bytes(name) * total // count for name, count in counts.items())


def layer_devices(model: Any) -> list[Any]:
    """The device of each decoder layer's weights (the input embedding's, for a model without a layer list)."""
    import torch

    lists = [child for child in model.base_model.children() if isinstance(child, torch.nn.ModuleList)]
    layers: Any = max(lists, key=len, default=[])
    devices = [next(layer.parameters()).device for layer in layers if any(True for _ in layer.parameters())]
    return devices or [model.get_input_embeddings().weight.device]


def device_budget_bytes(device: str) -> int:
    """Memory the engine plans to use on one device: half the usable CUDA memory, or the CPU budget."""
    import torch

    if torch.device(device).type == "cuda":
        return cuda_budget_bytes(torch.device(device))
    budget = CPU_MEMORY_BUDGET_BYTES
    with contextlib.suppress(ValueError, OSError, AttributeError):
        budget = min(budget, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    return budget


def cuda_budget_bytes(device: Any) -> int:
    """Half of what this process could allocate on `device`: the driver's free memory plus what PyTorch's
    caching allocator holds reserved but not allocated (after one long prompt that cache is large, and counting
    only the driver's free memory shrank every later batch to one prompt for the worker's life)."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return usable_bytes(free, torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)) // 2


def usable_bytes(driver_free: int, reserved: int, allocated: int) -> int:
    """Memory a new allocation can use: free on the device, plus cached by PyTorch and not in use."""
    return driver_free + max(0, reserved - allocated)


#: Where in a batch an out-of-memory error happened (`out_of_memory_phase`): building the rows' forward graph,
#: the plain forward pass for p(y) of integrating methods, or (the default) a backward call or the head.
FORWARD, PREPARE, BACKWARD = "forward", "prepare", "backward"
_PHASE_ATTRIBUTE = "tokenlens_memory_phase"


@contextlib.contextmanager
def out_of_memory_phase(phase: str) -> Iterator[None]:
    """Mark an out-of-memory error raised in the block with `phase` (the innermost mark wins): a forward pass
    that ran out can't be helped by smaller backward calls, so the engine splits the rows instead."""
    try:
        yield
    except BaseException as exc:
        if is_out_of_memory(exc) and not hasattr(exc, _PHASE_ATTRIBUTE):
            setattr(exc, _PHASE_ATTRIBUTE, phase)
        raise


def failed_phase(exc: BaseException) -> str:
    """The phase `out_of_memory_phase` marked on `exc`; BACKWARD when none did."""
    return str(getattr(exc, _PHASE_ATTRIBUTE, BACKWARD))


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover - torch always has it
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory() -> None:
    """Free what a failed attempt held. Call it outside the `except` block: until that block ends, the
    exception's traceback keeps the failed attempt's frames, and with them its graph, alive."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
