"""`tokenlens submit`, `tokenlens status` and `tokenlens cancel`: distributed runs from the user's side.

None of these imports torch or Celery: they talk to Redis and storage directly.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from tokenlens import defaults
from tokenlens.cli_options import (
    attribution_options,
    broker_option,
    dry_run_options,
    method_flags,
    method_options,
    model_option,
    prompt_source,
    prompt_source_options,
    results_option,
    run_id_option,
)
from tokenlens.settings import Settings


@click.command("submit")
@click.argument("prompts", type=click.Path(path_type=Path))
@prompt_source_options
@model_option(required=True, help="Alias, Hugging Face id, local dir or .gguf; workers use the same.")
@attribution_options
@results_option()
@broker_option()
@run_id_option("Name the run; an existing run id is resumed (only prompts without a result are queued).")
@click.option(
    "--batch-size", type=int, default=defaults.SUBMIT_BATCH_SIZE, show_default=True, help="Prompts per queued batch."
)
@method_options
@dry_run_options
def submit_command(
    prompts: Path,
    model: str,
    method: str,
    engine: str,
    results_url: str | None,
    broker_url: str | None,
    run_id: str | None,
    batch_size: int,
    max_new_tokens: int,
    chat: bool,
    result_format: str,
    dry_run: bool,
    gpu_class: str,
    gpu_memory: float | None,
    **flags: Any,
) -> None:
    """Validate PROMPTS and queue them, in batches, for workers running MODEL.

    Nothing is queued unless the prompt set, method, options, results URL and
    broker are all fine. Workers must be able to write to the results URL (use
    S3, or a directory they share). Submitting an existing --run-id again
    resumes it: only prompts without a result are queued.

    \b
    Example:
      tokenlens submit prompts.jsonl --model smollm2-135m-instruct --results s3://bucket/tokenlens
      tokenlens worker --model smollm2-135m-instruct          # on each GPU node, one per GPU (--gpu N)
      tokenlens status RUN_ID --watch
    """
    from producer.submit import submit_run
    from tokenlens.broker_url import redact_url
    from tokenlens.spec import RunSpec, new_run_id

    settings = Settings.from_env(results_url=results_url, broker_url=broker_url)
    source = prompt_source(prompts, flags)
    spec = RunSpec(
        run_id=run_id or new_run_id(method), model=model, results_url=settings.results_url, method=method,
        engine=engine, method_params=method_flags(flags), max_new_tokens=max_new_tokens, chat_template=chat,
        batch_size=batch_size, result_format=result_format,
    )  # fmt: skip
    if dry_run:  # the workers' dtype decides; "auto" is theirs by default (bfloat16 on a GPU)
        from tokenlens.estimate import dry_run_lines

        lines = dry_run_lines(spec, source, gpu_class=gpu_class, gpu_memory_gb=gpu_memory, dtype=defaults.DTYPE)
        click.echo("\n".join(lines))
        return
    report = submit_run(spec, source, broker_url=settings.broker_url, signing_key=settings.queue_key)
    verb = "resumed" if report.resumed else "submitted"
    click.echo(
        f"{verb} run {report.run_id}: {report.enqueued_prompts} prompts in {report.enqueued_batches} batches "
        f"on queue {report.queue}"
        + (f" ({report.already_done} already done)" if report.already_done else "")
        + f" in {report.elapsed_s:.1f}s"
    )
    broker_flag = f" --broker {redact_url(settings.broker_url)}" if broker_url else ""
    results_flag = f" --results {results_url}" if results_url else ""
    click.echo(f"start workers:  tokenlens worker --model {model}{broker_flag}")
    click.echo(f"watch it:       tokenlens status {report.run_id}{results_flag}{broker_flag} --watch")
    # The run id alone on the last line, for scripts: RUN=$(tokenlens submit ... | tail -1)
    click.echo(report.run_id)


def _duration(seconds: float | None) -> str:
    """Seconds as 1h02m03s / 2m03s / 3s."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def describe_status(status: Any) -> list[str]:
    """The lines `tokenlens status` prints."""
    counts, manifest, queue = status.counts, status.manifest, status.queue
    lines = [
        f"run {status.run_id}: {manifest.method} on {manifest.model} ({manifest.mode})",
        f"  done       {counts.done}/{counts.prompt_count}",
        f"  failed     {counts.failed}",
    ]
    if counts.corrupt:
        shown = ", ".join(sorted(status.corrupt_ids)[:5]) + (" ..." if counts.corrupt > 5 else "")
        lines.append(f"  corrupt    {counts.corrupt} ({shown}); resubmitting the run attributes them again")
    if queue is not None:
        lines += [
            f"  queued     {queue.queued_prompts} prompts ({queue.queued_batches} batches)",
            f"  in flight  {queue.in_flight_prompts} prompts ({queue.in_flight_batches} batches)",
        ]
        rate = status.throughput_per_s()
        lines.append(f"  throughput {rate:.2f} prompts/s" if rate is not None else "  throughput -")
        lines.append(f"  ETA        {_duration(status.eta_s()) if not status.finished else 'finished'}")
        if queue.cancelled:
            lines.append("  cancelled: queued batches were removed; `tokenlens submit` with this --run-id resumes it")
    else:
        lines.append(f"  note: {status.queue_note}")
    letters = status.dead_letters
    if letters is not None and letters.count:
        lines.append(f"  dead letters {letters.count}: messages for this run that workers refused; latest:")
        lines += [f"    - {letter.kind}: {letter.reason}" for letter in letters.latest]
    return lines


@click.command("status")
@click.argument("run_id")
@results_option()
@broker_option()
@click.option("--watch", is_flag=True, help="Show a live progress bar until the run finishes (Ctrl+C to leave).")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between updates with --watch.")
@click.option("--verify", is_flag=True, help="Read and check every result file; corrupt ones are not counted done.")
def status_command(
    run_id: str, results_url: str | None, broker_url: str | None, watch: bool, interval: float, verify: bool
) -> None:
    """Show RUN_ID's progress: done, failed, corrupt, queued, in flight, throughput, ETA and dead letters.

    Done and failed come from the results URL, so they are right even when Redis
    was flushed or is down (the command says so); queued, in flight and the
    messages workers refused (dead letters) come from Redis. An empty result file
    counts as corrupt; --verify reads and checks every result file.
    """
    from producer.submit import run_status

    settings = Settings.from_env(results_url=results_url, broker_url=broker_url)
    status = run_status(run_id, results_url=settings.results_url, broker_url=settings.broker_url, verify=verify)
    if not watch:
        click.echo("\n".join(describe_status(status)))
        return
    from tqdm import tqdm

    total = status.counts.prompt_count
    finished = status.counts.done + status.counts.failed
    # Start the bar where the run is, so its rate and ETA measure progress made while watching.
    with tqdm(total=total, initial=finished, unit="prompt", desc=run_id, file=sys.stdout, dynamic_ncols=True) as bar:
        while True:
            now_finished = status.counts.done + status.counts.failed
            bar.update(now_finished - finished)
            finished = now_finished
            postfix: dict[str, Any] = {"failed": status.counts.failed}
            if status.queue is not None:
                postfix.update(queued=status.queue.queued_prompts, in_flight=status.queue.in_flight_prompts)
                eta = status.eta_s()
                if eta is not None:
                    postfix["eta"] = _duration(eta)
            else:
                postfix["redis"] = "n/a"
            bar.set_postfix(postfix)
            if status.finished or (status.queue is not None and status.queue.cancelled):
                break  # nothing more will come: a cancelled run waits for a resume
            time.sleep(interval)
            status = run_status(run_id, results_url=settings.results_url, broker_url=settings.broker_url)
    click.echo("\n".join(describe_status(status)))


@click.command("cancel")
@click.argument("run_id")
@broker_option()
@results_option(help="Results URL, to find the run's queue if Redis has forgotten it.")
def cancel_command(run_id: str, broker_url: str | None, results_url: str | None) -> None:
    """Remove RUN_ID's queued batches; workers drop its batches they already hold. Results stay.

    `tokenlens submit` with the same --run-id resumes the run later.
    """
    from producer.submit import cancel_run

    settings = Settings.from_env(broker_url=broker_url, results_url=results_url)
    report = cancel_run(run_id, broker_url=settings.broker_url, results_url=settings.results_url)
    click.echo(
        f"cancelled run {run_id}: removed {report.removed_batches} queued batches from {report.queue} (workers drop "
        f"them as they reach them); {report.in_flight_batches} running batches stop at their next sub-batch. "
        "Finished results stay."
    )
