"""Every click option that more than one command takes, declared once (like rq's ``cli/helpers.py``).

`run`, `submit`, `status`, `cancel`, `fetch`, `runs`, `worker` and `ui` decorate
themselves with these instead of declaring their own `--results`, `--broker`,
`--model`, ... so a flag is spelled, typed, defaulted (from `tokenlens.defaults`)
and documented the same way everywhere. Importing this module imports neither
torch nor Inseq, so `tokenlens status --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from tokenlens import defaults
from tokenlens.engine.options import ATTRIBUTED_FNS
from tokenlens.engine.registry import ENGINES
from tokenlens.models import DTYPE_CHOICES
from tokenlens.prompt_sets import PromptSource
from tokenlens.result_codec import FORMAT_CHOICES

F = TypeVar("F", bound=Callable[..., Any])

RESULTS_HELP = (
    "Results: a directory, file:///path or s3://bucket/prefix "
    f"(default: $TOKENLENS_RESULTS, else {defaults.RESULTS_URL})."
)
BROKER_HELP = f"Redis URL (default: $TOKENLENS_BROKER_URL, else {defaults.BROKER_URL})."
MODEL_HELP = "Alias, Hugging Face id, local dir or .gguf"

#: Method options shared by `run` and `submit`: registry option name -> flag.
METHOD_OPTION_FLAGS: Mapping[str, str] = {
    "n_steps": "--n-steps",
    "attributed_fn": "--attributed-fn",
    "layers": "--layers",
    "heads": "--heads",
    "target_chunk": "--target-chunk",
}


def stack(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """Apply click options so that --help lists them in the order given."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def results_option(help: str = RESULTS_HELP) -> Callable[[F], F]:
    """`--results URL` -> `results_url` (None: `Settings` decides)."""
    return click.option("--results", "results_url", metavar="URL", default=None, help=help)


def broker_option() -> Callable[[F], F]:
    """`--broker URL` -> `broker_url` (None: `Settings` decides)."""
    return click.option("--broker", "broker_url", metavar="URL", default=None, help=BROKER_HELP)


def model_option(*, required: bool, help: str = f"{MODEL_HELP}.") -> Callable[[F], F]:
    """`--model/-m`: required for the distributed commands, the bundled model for `run`."""
    if required:
        return click.option("--model", "-m", required=True, help=help)
    return click.option("--model", "-m", default=defaults.MODEL, show_default=True, help=help)


def run_id_option(help: str) -> Callable[[F], F]:
    return click.option("--run-id", help=help)


def device_option(default: str | None, help: str) -> Callable[[F], F]:
    return click.option("--device", default=default, show_default=default is not None, help=help)


def dtype_option(default: str | None = defaults.DTYPE, help_suffix: str = "") -> Callable[[F], F]:
    """`--dtype`: auto is bfloat16 on CUDA and float32 on the CPU; results record the resolved dtype."""
    return click.option(
        "--dtype",
        type=click.Choice(DTYPE_CHOICES),
        default=default,
        show_default=default is not None,
        help=(
            "Weights and activations: auto = bfloat16 on CUDA, float32 on CPU (float16 is refused for gradients)"
            f"{help_suffix}."
        ),
    )


def attribution_options(func: F) -> F:
    """What to attribute and how, shared by `run` and `submit`: method, engine, generation length, chat, format."""
    return stack(
        click.option(
            "--method", default=defaults.METHOD, show_default=True, help="Attribution method (`tokenlens methods`)."
        ),
        click.option(
            "--engine",
            type=click.Choice(ENGINES),
            default=defaults.ENGINE,
            show_default=True,
            help="auto: TokenLens's native engine where the method has one, else Inseq. inseq: force Inseq.",
        ),
        click.option(
            "--max-new-tokens",
            type=int,
            default=defaults.MAX_NEW_TOKENS,
            show_default=True,
            help="Tokens to generate per prompt.",
        ),
        click.option(
            "--chat/--no-chat",
            default=defaults.CHAT_TEMPLATE,
            show_default=True,
            help="Apply the tokenizer's chat template.",
        ),
        click.option(
            "--format",
            "result_format",
            type=click.Choice(FORMAT_CHOICES),
            default=defaults.RESULT_FORMAT,
            show_default=True,
            help=(
                "How results are written: json (plain TokenLens JSON), compact (gzip, float16 rows), or auto: "
                f"compact above {defaults.COMPACT_ABOVE_CELLS:,} matrix cells. Every TokenLens reader opens both."
            ),
        ),
    )(func)


def method_options(func: F) -> F:
    """The method-option flags (validated later against the method)."""
    return stack(
        click.option("--n-steps", type=int, help="Integration steps (integrated_gradients and other IG-like methods)."),
        click.option(
            "--attributed-fn",
            type=click.Choice(ATTRIBUTED_FNS),
            help=(
                "What gradient methods differentiate for each output token: its probability, log-probability or "
                "logit, or (contrast_prob, contrast_logit) those of the prompt's contrast_target token instead."
            ),
        ),
        click.option("--layers", help="Attention layers to use, comma-separated (attention)."),
        click.option("--heads", help="Attention heads to use, comma-separated (attention)."),
        click.option(
            "--target-chunk",
            type=int,
            help="Output tokens per backward pass (native gradient methods); halved on out-of-memory.",
        ),
    )(func)


GPU_CLASS_CHOICES = ("h100", "h200", "a100", "l4", "cpu")


def dry_run_options(func: F) -> F:
    """`--dry-run` (estimate, run nothing), `--gpu-class` and `--gpu-memory`, shared by `run` and `submit`."""
    return stack(
        click.option(
            "--dry-run",
            is_flag=True,
            help="Tokenize the prompts and print an estimate (tokens, FLOPs, time, memory, result bytes); run nothing.",
        ),
        click.option(
            "--gpu-class",
            type=click.Choice(GPU_CLASS_CHOICES),
            default="h100",
            show_default=True,
            help="Device the --dry-run estimate is for (cpu: this machine, measured).",
        ),
        click.option(
            "--gpu-memory",
            type=click.FloatRange(min=0, min_open=True),
            metavar="GIB",
            help="Memory per device for the --dry-run estimate (default: the class's, e.g. 80 for h100).",
        ),
    )(func)


def method_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The method options given on the command line, by registry name (None where not given)."""
    return {name: flags.get(name) for name in METHOD_OPTION_FLAGS}


def prompt_source_options(func: F) -> F:
    """`--column`, `--id-column`, `--split`, `--limit`: which part of a table or dataset prompt set to read."""
    return stack(
        click.option("--column", default="prompt", show_default=True, help="Tables and datasets: the prompt column."),
        click.option("--id-column", default=None, help="Tables and datasets: the id column (default: id, if any)."),
        click.option("--split", default=None, help="Datasets: the split to read (default: train, or the only one)."),
        click.option(
            "--limit", type=click.IntRange(min=1), default=None, help="Tables and datasets: the first N rows."
        ),
    )(func)


def prompt_source(path: Path, flags: dict[str, Any]) -> PromptSource:
    """The prompt set a command was given, with the table options popped from its `flags`."""
    return PromptSource(
        str(path),
        column=flags.pop("column"),
        id_column=flags.pop("id_column"),
        split=flags.pop("split"),
        limit=flags.pop("limit"),
    )
