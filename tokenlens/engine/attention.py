"""Which attention implementation each pass of the native engine runs.

Models load with eager attention: Inseq and the `attention` method need the attention weights, which only
eager attention returns. Every other pass only needs attention's output, and eager attention keeps the
O(L^2) probabilities of every head (in float32, plus a copy in the model's dtype) in the autograd graph;
PyTorch's scaled_dot_product_attention (SDPA: flash / memory-efficient kernels on CUDA, a flash kernel on
CPU) saves only the query, key, value, output and one log-sum-exp per head and position. So generation and
the gradient passes switch to SDPA for their duration; an implementation the user chose (flash attention,
say) is kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

#: Attention implementations that keep no O(L^2) per-head tensor in the autograd graph.
MEMORY_EFFICIENT = frozenset({"sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"})


def current_attention(model: Any) -> str | None:
    """The attention implementation the model runs now (None: the model doesn't say)."""
    return getattr(model.config, "_attn_implementation", None)


def memory_efficient_attention(model: Any) -> str | None:
    """What to switch to for a pass that needs no attention weights: "sdpa" where the model runs eager attention
    and supports SDPA, else None (leave it as it is)."""
    if current_attention(model) == "eager" and getattr(model, "_supports_sdpa", False):
        return "sdpa"
    return None


def saves_attention_weights(model: Any) -> bool:
    """Whether a gradient pass of this model keeps the O(L^2) attention probabilities per head in its graph."""
    name = memory_efficient_attention(model) or current_attention(model)
    return name not in MEMORY_EFFICIENT


@contextlib.contextmanager
def attention_implementation(model: Any, name: str | None) -> Iterator[str | None]:
    """Run the block with the model's attention implementation set to `name` (None: leave it as it is); yields
    the implementation in effect."""
    current = current_attention(model)
    if name is None or current is None or current == name or not hasattr(model, "set_attn_implementation"):
        yield current
        return
    model.set_attn_implementation(name)
    try:
        yield current_attention(model)
    finally:
        model.set_attn_implementation(current)
