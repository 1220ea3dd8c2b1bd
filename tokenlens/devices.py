"""The devices a model runs on, as the command line names them: `--device` and the worker's `--gpu`.

Syntax only, without torch: the worker reads `--gpu` before torch is first imported (CUDA_VISIBLE_DEVICES must be
set before that). `tokenlens.models.resolve_device` checks a parsed device against the GPUs torch sees.

- `--device cpu`, `cuda` (the current GPU), `cuda:N` (one GPU), `cuda:N,M,...` (the model sharded over those
  GPUs with accelerate's device map), `auto` (every visible GPU: one GPU as `cuda`, several sharded; else CPU).
- `--gpu N` or `--gpu N,M,...` (the worker): the GPUs, as nvidia-smi numbers them, this process may see.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenlens.errors import ConfigError

DEVICES_HELP = "auto|cpu|cuda|cuda:N|cuda:N,M,..."
GPU_LIST_HELP = "N or N,M,... (GPU indices as nvidia-smi numbers them)"


@dataclass(frozen=True)
class DeviceRequest:
    """A `--device` value, parsed: its kind ("auto", "cpu" or "cuda") and the GPU indices it lists."""

    kind: str
    #: The GPUs named by `cuda:N,M,...`; empty for auto, cpu and a bare "cuda".
    indices: tuple[int, ...] = ()

    @property
    def sharded(self) -> bool:
        return len(self.indices) > 1


def parse_device(device: str) -> DeviceRequest:
    """Parse a `--device` value; raises ConfigError naming the value and what would work."""
    text = device.strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return DeviceRequest(text)
    if text.startswith("cuda:"):
        try:
            return DeviceRequest("cuda", parse_gpu_list(text[5:], what=f"device {device!r}"))
        except ConfigError as exc:
            raise ConfigError(f"{exc}; e.g. --device cuda:0 or --device cuda:0,1") from None
    raise ConfigError(f"unknown device {device!r}; use one of {DEVICES_HELP}")


def parse_gpu_list(text: str, *, what: str = "--gpu") -> tuple[int, ...]:
    """GPU indices from "N" or "N,M,...": each a whole number at least 0, each once."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts):
        raise ConfigError(f"{what} names no GPU; use {GPU_LIST_HELP}")
    indices: list[int] = []
    for part in parts:
        if not (part.isascii() and part.isdigit()):  # "²".isdigit() is true, yet int("²") raises
            raise ConfigError(f"{what}: {part!r} is not a GPU index (a whole number at least 0); use {GPU_LIST_HELP}")
        index = int(part)
        if index in indices:
            raise ConfigError(f"{what} lists GPU {index} twice; list each GPU once")
        indices.append(index)
    return tuple(indices)


def cuda_device(indices: tuple[int, ...] | list[int]) -> str:
    """The `--device` value for these GPUs: `cuda:N` for one, `cuda:N,M,...` (sharded) for several."""
    return "cuda:" + ",".join(str(index) for index in indices)


def visible_gpus_device(count: int) -> str:
    """The device of a process that sees `count` GPUs (a worker after `--gpu`): `cuda`, or all of them sharded."""
    return "cuda" if count == 1 else cuda_device(list(range(count)))
