"""`tokenlens run` (the embedded pipeline: one process, no Redis) and `tokenlens methods`.

The run loop itself is library code in `tokenlens.embedded`; this module parses flags,
builds the `RunSpec`, plans the run and prints what happened.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tokenlens import defaults
from tokenlens.cli_options import (
    attribution_options,
    device_option,
    dry_run_options,
    dtype_option,
    method_flags,
    method_options,
    model_option,
    prompt_source,
    prompt_source_options,
    results_option,
    run_id_option,
)
from tokenlens.devices import DEVICES_HELP
from tokenlens.engine.registry import list_methods, refusal_reason, runnable_methods
from tokenlens.settings import Settings

if TYPE_CHECKING:
    from tokenlens.schema import AnalysisResult


@click.command("run")
@click.argument("prompts", type=click.Path(path_type=Path))
@prompt_source_options
@model_option(required=False)
@attribution_options
@results_option()
@run_id_option("Name the run; an existing run id is resumed (only prompts without a result run).")
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help=(
        f"Prompts attributed together (default: {defaults.ENGINE_BATCH_SIZES['native']} native, "
        f"{defaults.ENGINE_BATCH_SIZES['inseq']} Inseq)."
    ),
)
@device_option(defaults.DEVICE, f"{DEVICES_HELP}: several GPUs shard the model; auto: every visible GPU, else CPU")
@dtype_option()
@click.option(
    "--max-attempts",
    type=int,
    help=(
        "Tries per prompt before it becomes an error record "
        f"(default: $TOKENLENS_MAX_ATTEMPTS, else {defaults.MAX_ATTEMPTS})."
    ),
)
@click.option(
    "--show/--no-show", default=None, help="Print each prompt's strongest sources (default: for <= 10 prompts)."
)
@method_options
@dry_run_options
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
    result_format: str,
    device: str,
    dtype: str,
    max_attempts: int | None,
    show: bool | None,
    dry_run: bool,
    gpu_class: str,
    gpu_memory: float | None,
    **flags: Any,
) -> None:
    """Attribute every prompt in PROMPTS with one model, in this process, and store the results.

    PROMPTS is a .jsonl file (fields: prompt, optional id, target, max_new_tokens), a .csv file with a
    `prompt` column, a .txt file with one prompt per line, a .parquet or .arrow table, a Hugging Face
    `datasets` folder or hf:<dataset id> (--column, --id-column, --split, --limit). Everything is
    validated before the model loads. Results go to RESULTS/runs/<run_id>/ as one TokenLens JSON file
    per prompt; a prompt that fails is recorded in errors/ and the others go on (the exit code is then 1).

    \b
    Examples:
      tokenlens run examples/prompts.jsonl
      tokenlens run prompts.csv --method integrated_gradients --n-steps 16 --results s3://bucket/runs
      tokenlens run prompts.txt --model Qwen/Qwen2.5-0.5B-Instruct --device cuda --dtype bfloat16
    """
    from tokenlens.embedded import run_embedded
    from tokenlens.models import check_dtype_for_method, resolve_device, resolve_dtype_name
    from tokenlens.plan import plan_run
    from tokenlens.spec import RunSpec, new_run_id

    settings = Settings.from_env(results_url=results_url, max_attempts=max_attempts)
    source = prompt_source(prompts, flags)
    if dry_run:
        from tokenlens.estimate import dry_run_lines

        spec = RunSpec(
            run_id=run_id or new_run_id(method), model=model, results_url=settings.results_url, method=method,
            engine=engine, method_params=method_flags(flags), max_new_tokens=max_new_tokens, chat_template=chat,
            batch_size=batch_size, result_format=result_format,
        )  # fmt: skip
        check_dtype_for_method(dtype, method)
        lines = dry_run_lines(spec, source, gpu_class=gpu_class, gpu_memory_gb=gpu_memory, dtype=dtype)
        click.echo("\n".join(lines))
        return
    # Everything cheap is validated before the model loads (seconds to minutes). "auto" is resolved here, so
    # that the run's identity (and a resume's check) holds the dtype the model really computes in.
    dtype = resolve_dtype_name(dtype, resolve_device(device))
    check_dtype_for_method(dtype, method)
    spec = RunSpec(
        run_id=run_id or new_run_id(method), model=model, results_url=settings.results_url, method=method,
        engine=engine, method_params=method_flags(flags), max_new_tokens=max_new_tokens, chat_template=chat,
        dtype=dtype, batch_size=batch_size, result_format=result_format,
    )  # fmt: skip
    plan = plan_run(spec, source, mode="embedded")
    spec, records, storage = plan.spec, plan.records, plan.storage
    click.echo(f"run {spec.run_id}: {len(records)} prompts, {method} ({spec.resolved_engine} engine), model {model}")
    click.echo(f"loading {model} ...", err=True)
    from tokenlens.models import load_model

    # The model loads before run.json is written: a model or device that fails leaves nothing behind.
    loaded = load_model(model, device=device, dtype=dtype)
    click.echo(f"loaded in {loaded.load_time_s:.1f}s on {loaded.device}", err=True)
    plan.save_manifest()
    report = run_embedded(loaded, spec, records, storage=storage, max_attempts=settings.max_attempts)
    if show if show is not None else len(records) <= 10:
        for prompt_id in [r.id for r in records if r.id in report.results]:
            click.echo(describe_result(report.results[prompt_id]))
    where = f"{storage.url.rstrip('/')}/runs/{spec.run_id}"
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


def describe_result(result: AnalysisResult, top_k: int = 3, max_rows: int = 12) -> str:
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
    """List the attribution methods that run here, their engines and options; then the others, and why."""
    for spec in runnable_methods():
        engines = "native+inseq" if spec.has_native else "inseq"
        options = ", ".join(f"{name}={opt.default}" for name, opt in spec.options.items()) or "-"
        click.echo(f"{spec.name:34} [{engines:12}] {spec.summary}  (options: {options})")
    refused = [(spec.name, refusal_reason(spec.name)) for spec in list_methods()]
    refused = [(name, reason) for name, reason in refused if reason is not None]
    if refused:
        click.echo("not runnable here:")
        for name, reason in refused:
            click.echo(f"  {name:32} {reason}")
