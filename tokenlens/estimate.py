"""What a run will cost, before it runs: tokens, FLOPs, time on a GPU class, peak memory per prompt, result bytes.

`tokenlens run --dry-run` and `tokenlens submit --dry-run` call `estimate_run`: the prompt set is tokenized with
the model's tokenizer, and the model is built from its config on PyTorch's meta device (shapes and parameter
counts, no weights, no memory), so nothing runs and nothing is written.

Where each number comes from:

- **Tokens**: the real tokenizer and chat template. Output tokens are a forced target's length, else
  `max_new_tokens`: an upper bound, since generation may stop early at an end-of-sequence token.
- **FLOPs**: what the native engine does (docs/architecture.md, "Engines"). Greedy generation (2 x parameters
  per token); one teacher-forced forward pass over prompt + output (2 x non-embedding parameters per token, plus
  causal attention, 2 x layers x width x length^2); per output token one input-gradient backward pass over its
  prefix (the same again: no weight gradients), plus the closed-form LM head (4 x vocabulary x width); integrated
  gradients repeats forward and backward per step. Inseq methods are estimated as Inseq runs its gradient
  methods (a forward and a backward pass per output token); perturbation methods cost more and are marked.
- **Time** = attribution FLOPs / (peak x efficiency) + generation time. Peak throughput is the vendor's dense
  figure for the dtype (`GPU_CLASSES`, datasheets), or for `cpu` a float32 matmul measured here and now.
  Efficiency is the fraction of peak the engine reached in a benchmark (`EFFICIENCY`, with its source).
  Generation is bound by reading the weights once per step, shared by the prompts decoded together: weight
  bytes / memory bandwidth per step.
- **Peak memory** for one prompt alone (the engine's minimum; batches only add): weights, the forward graph kept
  for the backward passes (activations, keys and values per segment; no L^2 attention term, as the gradient
  passes run SDPA; the `attention` method's eager weights: L^2 per head in float32 plus a copy), one backward
  call's transient memory, the LM-head rows, and integrated gradients'
  float32 accumulator. A prompt above `--gpu-memory` will not fit whatever the batch size.
- **Result bytes**: results encoded by `tokenlens.result_codec` itself (a sample of prompts with scores of the
  right shape; the rest scaled by matrix cells).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenlens.batch import PromptRecord
from tokenlens.errors import TokenLensError
from tokenlens.models import GRADIENT_METHODS, LoadedModel, resolve_dtype_name, text_config

if TYPE_CHECKING:
    from tokenlens.prompt_sets import PromptSource
    from tokenlens.spec import RunSpec


@dataclass(frozen=True)
class GpuClass:
    """A device class: dense peak throughput per dtype, memory and bandwidth, and where the figures come from."""

    name: str
    peak_tflops: dict[str, float]
    memory_gb: float
    bandwidth_gb_s: float
    source: str


#: Vendor datasheet figures (dense, no sparsity; float32 without TF32, as TokenLens runs it).
GPU_CLASSES: dict[str, GpuClass] = {
    "h100": GpuClass(
        "NVIDIA H100 SXM", {"bfloat16": 989, "float16": 989, "float32": 67}, 80, 3350, "NVIDIA H100 datasheet"
    ),
    "h200": GpuClass(
        "NVIDIA H200 SXM", {"bfloat16": 989, "float16": 989, "float32": 67}, 141, 4800, "NVIDIA H200 datasheet"
    ),
    "a100": GpuClass(
        "NVIDIA A100 80GB SXM", {"bfloat16": 312, "float16": 312, "float32": 19.5}, 80, 2039, "NVIDIA A100 datasheet"
    ),
    "l4": GpuClass("NVIDIA L4", {"bfloat16": 121, "float16": 121, "float32": 30.3}, 24, 300, "NVIDIA L4 datasheet"),
}
CLASS_CHOICES = (*GPU_CLASSES, "cpu")

#: Fraction of peak FLOPs the engine's attribution phase reaches, and where that was measured.
EFFICIENCY: dict[str, tuple[float, str]] = {
    "cpu": (0.5, "make bench on SmolLM2-135M, 2 CPU cores: 49-53% of the measured matmul rate (bench/results.md)"),
    "gpu": (
        0.3,
        "assumed: no GPU measurement yet (bench/gpu.sh writes the measured efficiency; issue 14's goal is 50%)",
    ),
}
#: Seconds of kernel launches per layer per pass on a GPU (about 20 kernels of ~10 us): what bounds small models,
#: whose matrix multiplies take less. Assumed, not measured; each decoding step and each backward call pays it
#: once for all the prompts batched together.
GPU_LAUNCH_S_PER_LAYER = 2e-4
#: Prompts batched together on a GPU (`defaults.GPU_ENGINE_BATCH_SIZES`) and targets per backward call.
GPU_BATCH = 64
TARGETS_PER_CALL = 16
#: Fraction of memory bandwidth a decoding step reaches (reading every weight once per step).
GENERATION_BANDWIDTH_EFFICIENCY = 0.6
#: Prompts decoded together when the engine batches generation (its default generation batch).
GENERATION_BATCH = 16
#: Forward segments the engine keeps keys and values for (each its own copy), and LM-head rows at once.
KV_COPIES = 9
LM_HEAD_ROWS = 512
#: Result files actually encoded; the others are scaled from them by matrix cells.
RESULT_SAMPLES = 12


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model: its sizes, read from the config of a weightless (meta) copy."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_dim: int
    vocab: int
    total_params: int
    body_params: int

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        config = text_config(model.config)

        def first(*names: str, default: int = 0) -> int:
            for name in names:
                value = getattr(config, name, None)
                if isinstance(value, int) and value > 0:
                    return value
            return default

        hidden = first("hidden_size", "n_embd", "d_model")
        heads = first("num_attention_heads", "n_head", default=1)
        kv_heads = first("num_key_value_heads", default=heads)
        head_dim = first("head_dim", default=hidden // heads)
        embedding = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        total = sum(p.numel() for p in model.parameters())
        body = total - embedding.numel()
        if head is not None and head.weight is not embedding:
            body -= head.weight.numel()
        return cls(
            layers=first("num_hidden_layers", "n_layer", "num_layers", default=1),
            hidden=hidden,
            intermediate=first("intermediate_size", "n_inner", default=4 * hidden),
            heads=heads,
            kv_dim=kv_heads * head_dim,
            vocab=int(embedding.shape[0]),
            total_params=int(total),
            body_params=int(body),
        )


@dataclass
class PromptEstimate:
    prompt_id: str
    input_tokens: int
    output_tokens: int
    flops: float
    seconds: float
    peak_bytes: int
    result_bytes: int = 0

    @property
    def cells(self) -> int:
        return self.output_tokens * (self.input_tokens + self.output_tokens)


@dataclass
class RunEstimate:
    """The whole prompt set's estimate and the assumptions behind it."""

    model: str
    method: str
    dtype: str
    gpu_class: str
    gpu_memory_bytes: int
    peak_flops: float
    efficiency: float
    prompts: list[PromptEstimate]
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.prompts)

    @property
    def too_big(self) -> list[PromptEstimate]:
        return [p for p in self.prompts if p.peak_bytes > self.gpu_memory_bytes]

    def lines(self) -> list[str]:
        """What `--dry-run` prints."""
        prompts = self.prompts
        n_in = sum(p.input_tokens for p in prompts)
        n_out = sum(p.output_tokens for p in prompts)
        flops = sum(p.flops for p in prompts)
        size = sum(p.result_bytes for p in prompts)
        peak = max((p.peak_bytes for p in prompts), default=0)
        hours = self.seconds / 3600
        rate = f", {len(prompts) / hours:,.0f} prompts/hour" if hours > 0 else ""
        lines = [
            f"dry run: {len(prompts)} prompts, {self.method} in {self.dtype} on {self.gpu_class} (nothing ran)",
            f"  tokens: {n_in:,} input, up to {n_out:,} output (max_new_tokens is an upper bound)",
            f"  compute: {flops / 1e12:,.2f} TFLOP; peak {self.peak_flops / 1e12:,.3g} TFLOP/s x efficiency "
            f"{self.efficiency:.0%}",
            f"  estimated time: {_duration(self.seconds)}{rate}",
            f"  peak memory per prompt: up to {_gib(peak)} (largest prompt alone); --gpu-memory "
            f"{_gib(self.gpu_memory_bytes)}",
            f"  results: {_mib(size)} in all ({size:,} bytes)",
        ]
        too_big = self.too_big
        if too_big:
            lines.append(f"  {len(too_big)} prompt(s) will not fit in {_gib(self.gpu_memory_bytes)}:")
            lines += [
                f"    {p.prompt_id}: {p.input_tokens} + {p.output_tokens} tokens need {_gib(p.peak_bytes)}"
                for p in too_big[:20]
            ]
            if len(too_big) > 20:
                lines.append(f"    ... {len(too_big) - 20} more")
        for prompt_id, reason in list(self.failed.items())[:20]:
            lines.append(f"  {prompt_id}: would fail: {reason}")
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def _gib(value: float) -> str:
    return f"{value / 2**30:,.1f} GiB"


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:,.0f} ms"
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def measured_cpu_flops(repeats: int = 3) -> float:
    """Best float32 matmul rate of this machine's CPU, in FLOP/s (a fraction of a second to measure)."""
    import torch

    best = 0.0
    for size in (512, 1024, 1536):
        a, b, product = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
        torch.matmul(a, b, out=product)  # warm-up, and the output's pages touched (not timed below)
        for _ in range(repeats):
            started = time.perf_counter()
            torch.matmul(a, b, out=product)
            best = max(best, 2 * size**3 / (time.perf_counter() - started))
    return best


def measured_cpu_bandwidth() -> float:
    """Bytes per second this machine copies a 128 MiB tensor at (what a CPU decoding step reads weights at).

    The copy goes into a buffer touched beforehand: a fresh allocation would time the kernel's page faults
    instead, which after a memory-heavy process (no huge pages left) measured 1.2 GB/s on a machine that copies
    at 8.8 GB/s, and made the estimate 3x too long."""
    import torch

    source = torch.empty(32 << 20, dtype=torch.float32).fill_(1.0)
    destination = torch.zeros_like(source)
    best = 0.0
    for _ in range(4):
        started = time.perf_counter()
        destination.copy_(source)
        best = max(best, 2 * source.numel() * 4 / (time.perf_counter() - started))
    return best


def attribution_flops(shape: ModelShape, n_in: int, n_out: int, method: str, n_steps: int) -> float:
    """FLOPs of one prompt's teacher-forced forward and per-target backward passes (see the module docstring)."""
    length = n_in + n_out

    def pass_over(tokens: int) -> float:  # one forward (or input-only backward) pass over `tokens` positions
        return 2.0 * shape.body_params * tokens + 2.0 * shape.layers * shape.hidden * tokens * tokens

    forward = pass_over(length)
    if method == "attention":
        return forward
    backward = sum(pass_over(n_in + t) for t in range(n_out)) + 4.0 * shape.vocab * shape.hidden * n_out
    steps = n_steps if method == "integrated_gradients" else 1
    return steps * (forward + backward) + (forward if steps > 1 else 0.0)


def graph_bytes(shape: ModelShape, length: int, element_bytes: int, attention_weights: bool = False) -> int:
    """What a forward pass over `length` positions keeps: activations, and with `attention_weights` (eager
    attention: the `attention` method) every head's probabilities (float32, plus a copy in the model's dtype).
    The gradient passes run SDPA, which keeps no L^2 tensor per head (tokenlens/engine/attention.py)."""
    activations = shape.layers * length * element_bytes * (12 * shape.hidden + 4 * shape.intermediate)
    if not attention_weights:
        return activations
    return activations + shape.layers * shape.heads * length * length * (4 + element_bytes)


def peak_bytes(shape: ModelShape, n_in: int, n_out: int, method: str, element_bytes: int) -> int:
    """One prompt's peak memory attributed alone (see the module docstring)."""
    length = n_in + n_out
    weights = shape.total_params * element_bytes
    if method == "attention":
        return weights + graph_bytes(shape, length, element_bytes, attention_weights=True)
    graph = graph_bytes(shape, length, element_bytes)
    keys_values = shape.layers * KV_COPIES * 2 * shape.kv_dim * length * element_bytes
    backward = length * element_bytes * (2 * shape.intermediate + 4 * shape.hidden + 2 * shape.heads)
    head_rows = min(n_out, LM_HEAD_ROWS) * shape.vocab * 4 * 3
    accumulator = 4 * n_out * length * shape.hidden if method == "integrated_gradients" else 0
    return weights + graph + keys_values + backward + head_rows + accumulator


def estimate_run(
    loaded: LoadedModel,
    records: Sequence[PromptRecord],
    *,
    method: str,
    engine: str,
    method_params: dict[str, Any],
    max_new_tokens: int,
    chat_template: bool,
    gpu_class: str,
    gpu_memory_gb: float | None,
    dtype: str,
    result_format: str,
) -> RunEstimate:
    """The estimate of attributing `records` with `loaded` (a model built on the meta device is enough)."""
    from tokenlens.tokenization import prepare_prompt

    if gpu_class not in CLASS_CHOICES:
        raise TokenLensError(f"unknown --gpu-class {gpu_class!r}; use one of {', '.join(CLASS_CHOICES)}")
    shape = ModelShape.of(loaded.model)
    dtype = resolve_dtype_name(dtype, "cpu" if gpu_class == "cpu" else "cuda")
    element_bytes = 4 if dtype == "float32" else 2
    notes: list[str] = []
    if gpu_class == "cpu":
        peak, bandwidth = measured_cpu_flops(), measured_cpu_bandwidth()
        efficiency, source = EFFICIENCY["cpu"]
        memory = gpu_memory_gb * 2**30 if gpu_memory_gb else _cpu_memory_bytes()
        notes.append(f"cpu: {peak / 1e9:,.0f} GFLOP/s float32 matmul and {bandwidth / 1e9:,.1f} GB/s measured now")
    else:
        device = GPU_CLASSES[gpu_class]
        peak, bandwidth = device.peak_tflops[dtype] * 1e12, device.bandwidth_gb_s * 1e9
        efficiency, source = EFFICIENCY["gpu"]
        memory = (gpu_memory_gb or device.memory_gb) * 2**30
        notes.append(f"{gpu_class}: {device.name}, peak and bandwidth from the {device.source}")
        notes.append(f"kernel launches: {GPU_LAUNCH_S_PER_LAYER * 1e3:.1f} ms per layer per pass, assumed")
    notes.append(f"efficiency {efficiency:.0%}: {source}")
    n_steps = int(method_params.get("n_steps") or 1)  # validated options: integrated gradients' default filled in
    if engine == "inseq" and method not in GRADIENT_METHODS and method != "attention":
        notes.append(f"{method} runs on Inseq and is not a gradient method: its cost is not modelled (a lower bound)")

    estimates: list[PromptEstimate] = []
    failed: dict[str, str] = {}
    prepared = []
    for record in records:
        try:
            prompt = prepare_prompt(loaded, record, chat_template=chat_template, max_new_tokens=max_new_tokens)
        except TokenLensError as exc:
            failed[record.id] = str(exc)
            continue
        prepared.append((record, prompt))
        n_in, n_out = len(prompt.input_ids), prompt.max_new_tokens
        flops = attribution_flops(shape, n_in, n_out, method, n_steps)
        if engine == "inseq":  # one forward and one backward pass per output token, over its prefix
            flops = sum(2 * 2.0 * shape.body_params * (n_in + t) for t in range(n_out)) * max(n_steps, 1)
        seconds = flops / (peak * efficiency)
        if prompt.target_ids is None:
            step_s = shape.total_params * element_bytes / (bandwidth * GENERATION_BANDWIDTH_EFFICIENCY)
            batch = min(GENERATION_BATCH, len(records)) if engine == "native" else 1
            seconds += n_out * step_s / batch + 2.0 * shape.total_params * (n_in + n_out) / (peak * efficiency)
        if gpu_class != "cpu":
            batch = min(GPU_BATCH, len(records)) if engine == "native" else 1
            calls = n_out + (-(-n_out // TARGETS_PER_CALL) if engine == "native" else n_out)
            seconds += calls * shape.layers * GPU_LAUNCH_S_PER_LAYER * n_steps / batch
        estimates.append(
            PromptEstimate(
                record.id, n_in, n_out, flops, seconds, peak_bytes(shape, n_in, n_out, method, element_bytes)
            )
        )
    _fill_result_bytes(loaded, prepared, estimates, method, result_format)
    return RunEstimate(
        model=loaded.model_id, method=method, dtype=dtype, gpu_class=gpu_class, gpu_memory_bytes=int(memory),
        peak_flops=peak, efficiency=efficiency, prompts=estimates, failed=failed, notes=notes,
    )  # fmt: skip


def dry_run_lines(
    spec: RunSpec, prompts_path: str | Path | PromptSource, *, gpu_class: str, gpu_memory_gb: float | None, dtype: str
) -> list[str]:
    """What `run --dry-run` and `submit --dry-run` print: the prompt set read, the model's shapes loaded, no run."""
    from tokenlens.engine.registry import validate_options
    from tokenlens.models import load_shape_only
    from tokenlens.prompt_sets import read_prompt_set

    records = read_prompt_set(prompts_path)
    loaded = load_shape_only(spec.model)
    estimate = estimate_run(
        loaded, records, method=spec.method, engine=spec.resolved_engine,
        method_params=validate_options(spec.method, spec.method_params), max_new_tokens=spec.max_new_tokens,
        chat_template=spec.chat_template, gpu_class=gpu_class, gpu_memory_gb=gpu_memory_gb, dtype=dtype,
        result_format=spec.result_format,
    )  # fmt: skip
    return estimate.lines()


def _cpu_memory_bytes() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - every Linux has both
        return 16 << 30


def _fill_result_bytes(
    loaded: LoadedModel,
    prepared: list[tuple[PromptRecord, Any]],
    estimates: list[PromptEstimate],
    method: str,
    result_format: str,
) -> None:
    """Encode a sample of results with the real encoder; scale the others by their matrix cells."""
    from tokenlens.engine.types import AttributionOutput
    from tokenlens.pipeline import build_result
    from tokenlens.result_codec import encode_result

    if not estimates:
        return
    order = sorted(range(len(estimates)), key=lambda i: estimates[i].cells)
    picks = sorted({order[round(k * (len(order) - 1) / max(RESULT_SAMPLES - 1, 1))] for k in range(RESULT_SAMPLES)})
    rng = np.random.default_rng(0)
    measured: list[tuple[int, int]] = []
    for index in picks:
        record, prompt = prepared[index]
        n_in, n_out = len(prompt.input_ids), prompt.max_new_tokens
        output_ids = list(prompt.target_ids or [])
        if not output_ids:  # generated text is unknown: stand-in tokens from the prompt itself
            output_ids = [prompt.input_ids[i % n_in] for i in range(n_out)]
        scores = np.tril(rng.random((n_out, n_in + n_out), dtype=np.float32), k=n_in - 1)
        output = AttributionOutput(
            record.id, list(prompt.input_ids), output_ids, scores, [0.5] * n_out, "native", {}, {"total": 1.0}
        )
        result = build_result(loaded, record, prompt, output, method=method, run_id="dry-run", generation_params={})
        size = len(encode_result(result, result_format).body)
        estimates[index].result_bytes = size
        measured.append((estimates[index].cells, size))
    for index, estimate in enumerate(estimates):
        if index not in picks:  # bytes per cell of the sampled prompt closest in size (same format under "auto")
            cells, size = min(measured, key=lambda sample: abs(sample[0] - estimate.cells))
            estimate.result_bytes = math.ceil(estimate.cells * size / max(cells, 1))
