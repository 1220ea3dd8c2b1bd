"""The padded batch the native engine works on: which prompt sits in which row, where each target's logit is
read, how the teacher-forced pass is cut into segments, and what a batch pass hands back.

Shared by the gradient pass (engine/gradient_pass.py) and the attention method (engine/methods.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenlens.engine.generation import pad_token_id
from tokenlens.engine.types import PromptInput
from tokenlens.models import LoadedModel, input_device

#: At most this many forward segments per pass: each keeps its own copy of the keys and values it attended
#: to, so their number bounds the graph's memory; targets of a long segment take several backward calls.
MAX_SEGMENTS = 8
#: Shortest forward segment, in positions. Backward calls for a segment's targets run through all of it, so
#: a target wastes on average half a segment; shorter segments waste less but make more (and smaller) calls.
SEGMENT_POSITIONS = 16
#: Target positions whose vocabulary distribution is materialised at once (bounds a [n, vocab] buffer).
LM_HEAD_ROWS = 512


@dataclass
class Item:
    """One prompt ready to attribute: its tokens and continuation, and where it goes in the caller's list."""

    index: int
    prompt: PromptInput
    output_ids: list[int]
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return list(self.prompt.input_ids) + list(self.output_ids)


@dataclass
class BatchScores:
    """What one batch pass produced for each of its prompts, and its phase times."""

    scores: list[np.ndarray]
    probabilities: list[list[float]]
    forward_s: float
    backward_s: float
    #: The attention implementation the batch's passes ran ("eager", "sdpa", ...; engine/attention.py).
    attention: str | None = None


@dataclass
class Layout:
    """A left-padded batch and where each prompt's targets sit in it.

    Row b holds prompt b right-aligned in `width` positions, starting at `pads[b]`.
    Its output token k sits at position `starts[b] + k` and is predicted from the
    hidden state at the position before it (its logit position).
    """

    ids: Any  # LongTensor [B, width]
    mask: Any  # LongTensor [B, width]
    positions: Any  # LongTensor [B, width]
    pads: list[int]
    starts: list[int]
    n_out: list[int]
    #: Per row, the contrast token of each output token (contrastive attributed functions), else None.
    contrasts: list[list[int] | None] = field(default_factory=list)
    #: Per row, its output token ids, on the host: reading them from `ids` on a GPU would wait for the device
    #: several times per target.
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    @property
    def end(self) -> int:
        """Positions the pass runs over: the last token is never a source of any target."""
        return self.width - 1

    def targets_at(self, position: int) -> list[tuple[int, int, int]]:
        """(row, output index, token id) of every target whose logit is read at `position`."""
        found = []
        for row, (start, n_out) in enumerate(zip(self.starts, self.n_out, strict=True)):
            k = position + 1 - start
            if 0 <= k < n_out:
                found.append((row, k, self.outputs[row][k]))
        return found

    def contrast_of(self, row: int, k: int) -> int:
        """The contrast token of row's output token k (0 where the attributed function has none)."""
        contrast = self.contrasts[row] if self.contrasts else None
        return contrast[k] if contrast is not None else 0

    def empty_scores(self) -> list[np.ndarray]:
        return [np.zeros((n, self.width - pad), dtype=np.float64) for n, pad in zip(self.n_out, self.pads, strict=True)]

    def empty_probabilities(self) -> list[list[float]]:
        return [[0.0] * n for n in self.n_out]

    def segment_bounds(self, length: int) -> list[int]:
        """Forward segments over positions [0, end): the first ends `length` logit positions after the
        first target's, the rest are `length` long."""
        first = min(self.starts) - 1
        bounds = [0]
        cut = first + length
        while cut < self.end:
            bounds.append(cut)
            cut += length
        bounds.append(self.end)
        return bounds

    def segment_length(self, chunk: int) -> int:
        """SEGMENT_POSITIONS or `chunk` positions, or longer where that would make more than MAX_SEGMENTS."""
        targets = self.width - min(self.starts)
        return max(SEGMENT_POSITIONS, chunk, -(-targets // MAX_SEGMENTS))


def build_layout(loaded: LoadedModel, items: Sequence[Item]) -> Layout:
    import torch

    sequences = [item.ids for item in items]
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(items), width), pad_token_id(loaded), dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    pads = []
    for row, seq in enumerate(sequences):
        pad = width - len(seq)
        ids[row, pad:] = torch.tensor(seq, dtype=torch.long)
        mask[row, pad:] = 1
        pads.append(pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = input_device(loaded.model)
    n_out = [len(item.output_ids) for item in items]
    contrasts = [item.prompt.contrast_ids for item in items]
    outputs = [list(item.output_ids) for item in items]
    return Layout(
        ids.to(device),
        mask.to(device),
        positions.to(device),
        pads,
        [width - n for n in n_out],
        n_out,
        contrasts,
        outputs,
    )


def cache_kwarg(module: Any) -> str:
    """The name under which this transformers version's model body takes a KV cache."""
    parameters = inspect.signature(module.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
