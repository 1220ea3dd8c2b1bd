"""Inseq's own `attribute()` on one prompt, timed: the reference side of every side-by-side benchmark.

`bench_engine.py` (CPU, `make bench`) and `gpu_check.py` (a bare GPU machine) both time Inseq this way, so the
two compare the native engine against the same Inseq call: greedy generation, Inseq's progress output silenced,
and our pad token kept distinct so Inseq drops no prompt token (`distinct_pad_token`).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from typing import Any


def timed_inseq_attribute(
    loaded: Any, method: str, text: str, max_new_tokens: int, sync: Callable[[], None] = lambda: None, **kwargs: Any
) -> tuple[Any, float]:
    """Inseq's attribution output for `text` and its wall seconds (`sync` waits for the GPU before each clock read)."""
    import inseq

    from tokenlens.engine.inseq_engine import distinct_pad_token

    with distinct_pad_token(loaded):
        model = inseq.load_model(loaded.model, method, tokenizer=loaded.tokenizer)
        sync()
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            output = model.attribute(
                text,
                generation_args={"max_new_tokens": max_new_tokens, "do_sample": False},
                show_progress=False,
                **kwargs,
            )
        sync()
        return output, time.perf_counter() - started
