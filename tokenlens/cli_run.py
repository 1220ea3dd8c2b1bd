"""`tokenlens run` (the embedded pipeline: one process, no Redis) and `tokenlens methods`."""

from __future__ import annotations

import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from tokenlens.engine.registry import ENGINES, list_methods, resolve_engine
from tokenlens.errors import TokenLensError
from tokenlens.models import DEFAULT_MODEL, DTYPES
from tokenlens.settings import Settings

#: Method options shared by `run` and `submit`: flag -> registry option name.
METHOD_OPTION_FLAGS = {
    "n_steps": "--n-steps",
    "attributed_fn": "--attributed-fn",
    "layers": "--layers",
    "heads": "--heads",
    "target_chunk": "--target-chunk",
}


RESULTS_HELP = "Results directory or URL (default: $TOKENLENS_RESULTS, else ./results)."


def _with_options(func: Any, decorators: list[Any]) -> Any:
    """Apply click options so that --help lists them in the order given."""
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def attribution_options(func: Any) -> Any:
    """What to attribute and how, shared by `run` and `submit`: method, engine, generation length, chat."""
    return _with_options(
        func,
        [
            click.option(
                "--method", default="saliency", show_default=True, help="Attribution method (`tokenlens methods`)."
            ),
            click.option(
                "--engine",
                type=click.Choice(ENGINES),
                default="auto",
                show_default=True,
                help="auto: TokenLens's native engine where the method has one, else Inseq. inseq: force Inseq.",
            ),
            click.option(
                "--max-new-tokens", type=int, default=64, show_default=True, help="Tokens to generate per prompt."
            ),
            click.option(
                "--chat/--no-chat", default=True, show_default=True, help="Apply the tokenizer's chat template."
            ),
        ],
    )


def method_options(func: Any) -> Any:
    """The method-option flags, added to a click command."""
    return _with_options(
        func,
        [
            click.option(
                "--n-steps", type=int, help="Integration steps (integrated_gradients and other IG-like methods)."
            ),
            click.option(
                "--attributed-fn",
                type=click.Choice(["probability", "logprob"]),
                help="What gradient methods differentiate: p or log p of each output token.",
            ),
            click.option("--layers", help="Attention layers to use, comma-separated (attention)."),
            click.option("--heads", help="Attention heads to use, comma-separated (attention)."),
            click.option(
                "--target-chunk",
                type=int,
                help="Output tokens per backward pass (native gradient methods); halved on out-of-memory.",
            ),
        ],
    )


def method_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The method options given on the command line (validated later against the method)."""
    return {name: flags.get(name) for name in METHOD_OPTION_FLAGS}


def new_run_id(method: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{method.replace('_', '-')}-{uuid.uuid4().hex[:6]}"


@click.command("run")
@click.argument("prompts", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Alias, Hugging Face id, local dir or .gguf."
)
@attribution_options
@click.option("--results", "results_url", help=RESULTS_HELP)
@click.option("--run-id", help="Name the run; an existing run id is resumed (only prompts without a result run).")
@click.option("--batch-size", type=int, default=None, help="Prompts attributed together (default: 8 native, 1 Inseq).")
@click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda|cuda:N")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--max-attempts", type=int, help="Tries per prompt before it becomes an error record (default 3).")
@click.option(
    "--show/--no-show", default=None, help="Print each prompt's strongest sources (default: for <= 10 prompts)."
)
@method_options
def run_command(
    prompts: Path,
    model: str,
    method: str,
    engine: str,
    results_url: str | None,
    run_id: str | None,
    max_new_tokens: int,
    batch_size: int | None,
    chat: bool,
    device: str,
    dtype: str,
    max_attempts: int | None,
    show: bool | None,
    **flags: Any,
) -> None:
    """Attribute every prompt in PROMPTS with one model, in this process, and store the results.

    PROMPTS is a .jsonl file (fields: prompt, optional id, target, max_new_tokens), a .csv file with a
    `prompt` column, or a .txt file with one prompt per line. Everything is validated before the model
    loads. Results go to RESULTS/runs/<run_id>/ as one TokenLens JSON file per prompt; a prompt that
    fails is recorded in errors/ and the others go on (the exit code is then 1).

    \b
    Examples:
      tokenlens run examples/prompts.jsonl
      tokenlens run prompts.csv --method integrated_gradients --n-steps 16 --results s3://bucket/runs
      tokenlens run prompts.txt --model Qwen/Qwen2.5-0.5B-Instruct --device cuda --dtype bfloat16
    """
    from tokenlens.plan import plan_run

    settings = Settings.from_env(results_url=results_url, max_attempts=max_attempts)
    if batch_size is not None and batch_size < 1:
        raise TokenLensError(f"--batch-size {batch_size} must be at least 1")
    # Everything cheap is validated before the model loads (seconds to minutes).
    run_id = run_id or new_run_id(method)
    plan = plan_run(
        prompts, model=model, method=method, engine=engine,
        method_params=method_flags(flags), max_new_tokens=max_new_tokens,
        chat_template=chat, results_url=settings.results_url, run_id=run_id, mode="embedded",
    )  # fmt: skip
    plan.save_manifest()
    records, storage, options, chosen_engine = plan.records, plan.storage, plan.options, plan.engine
    click.echo(f"run {run_id}: {len(records)} prompts, {method} ({chosen_engine} engine), model {model}")
    click.echo(f"loading {model} ...", err=True)
    from tokenlens.models import load_model

    loaded = load_model(model, device=device, dtype=dtype)
    click.echo(f"loaded in {loaded.load_time_s:.1f}s on {loaded.device}", err=True)
    report = run_embedded(
        loaded, records, run_id=run_id, results_url=storage.url, method=method, engine=engine,
        options=options, max_new_tokens=max_new_tokens, chat=chat, batch_size=batch_size,
        max_attempts=settings.max_attempts, storage=storage,
    )  # fmt: skip
    if show if show is not None else len(records) <= 10:
        for prompt_id in [r.id for r in records if r.id in report.results]:
            click.echo(describe_result(report.results[prompt_id]))
    where = f"{storage.url.rstrip('/')}/runs/{run_id}"
    click.echo(
        f"\n{len(report.done)} done, {len(report.skipped)} already done, {len(report.failed)} failed "
        f"in {report.timings_s.get('total', 0):.1f}s"
    )
    for prompt_id in report.failed:
        click.secho(f"  failed {prompt_id}: {report.reasons.get(prompt_id, '')}", fg="red", err=True)
    click.echo(f"results: {where}/results/")
    click.echo(f"explore: tokenlens ui --results {storage.url}")
    if report.failed:
        sys.exit(1)


def run_embedded(
    loaded: Any,
    records: list[Any],
    *,
    run_id: str,
    results_url: str,
    method: str,
    engine: str,
    options: dict[str, Any],
    max_new_tokens: int,
    chat: bool,
    batch_size: int | None,
    max_attempts: int,
    storage: Any,
    progress: bool = True,
) -> Any:
    """Run the pipeline in-process over all records, retrying failed prompts up to `max_attempts`."""
    from tqdm import tqdm

    from tokenlens.batch import BatchTask
    from tokenlens.pipeline import DEFAULT_ENGINE_BATCH, BatchReport, process_batch

    chosen = resolve_engine(method, engine)
    size = batch_size or DEFAULT_ENGINE_BATCH.get(chosen, 1)
    total = BatchReport()
    started = time.perf_counter()
    attempts: dict[str, int] = {}
    with tqdm(total=len(records), unit="prompt", desc="attributing", disable=not progress, file=sys.stderr) as bar:

        def settle(_prompt_id: str, outcome: str) -> None:
            if outcome != "retry":
                bar.update(1)

        pending = list(records)
        while pending:
            for record in pending:
                attempts[record.id] = attempts.get(record.id, 0) + 1
            retry_ids: list[str] = []
            for start in range(0, len(pending), size):
                task = BatchTask(
                    run_id=run_id, results_url=results_url, model=loaded.model_id, method=method, engine=engine,
                    method_params=options, max_new_tokens=max_new_tokens, chat_template=chat,
                    prompts=pending[start : start + size],
                )  # fmt: skip
                report = process_batch(
                    loaded, task, storage=storage, attempts=attempts, max_attempts=max_attempts,
                    engine_batch_size=size, on_prompt_finished=settle,
                )  # fmt: skip
                retry_ids += report.retry
                report.retry = []  # retried below; only the final outcome counts
                total.merge(report)
            pending = [r for r in pending if r.id in set(retry_ids)]
    for prompt_id in total.done + total.skipped:
        total.reasons.pop(prompt_id, None)
    total.timings_s["total"] = time.perf_counter() - started
    return total


def describe_result(result: Any, top_k: int = 3, max_rows: int = 12) -> str:
    """A few lines a person can read: the output, and each output token's strongest input tokens."""
    data = result.data
    n_in = len(data.input_tokens)
    shown = "".join(t.clean_token for t in data.output_tokens)
    lines = [f"\n[{result.metadata.prompt_id}] {result.metadata.prompt!r}", f"  -> {shown!r}"]
    for i, (token, row) in enumerate(zip(data.output_tokens, data.normalized_association, strict=True)):
        if i >= max_rows:
            lines.append(f"  ... {len(data.output_tokens) - max_rows} more output tokens")
            break
        sources = sorted(
            (
                (abs(row[j]), data.input_tokens[j].clean_token)
                for j in range(n_in)
                if not data.input_tokens[j].is_template
            ),
            reverse=True,
        )[:top_k]
        tops = ", ".join(f"{text.strip() or repr(text)} {score:.2f}" for score, text in sources)
        lines.append(f"  {token.clean_token!r:>14} <- {tops}")
    return "\n".join(lines)


@click.command("methods")
def methods_command() -> None:
    """List every attribution method, the engines that run it, and its options."""
    for spec in list_methods():
        engines = "native+inseq" if spec.has_native else "inseq"
        options = ", ".join(f"{name}={opt.default}" for name, opt in spec.options.items()) or "-"
        click.echo(f"{spec.name:34} [{engines:12}] {spec.summary}  (options: {options})")
