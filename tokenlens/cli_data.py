"""`tokenlens export` and `tokenlens import`: a run out as tables, the seed's data in as runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tokenlens.cli_options import results_option, run_id_option
from tokenlens.settings import Settings


def _progress_bar(total: int, unit: str, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=label, file=sys.stderr, disable=None)


@click.command("export")
@click.argument("run_id")
@results_option()
@click.option("--dest", required=True, metavar="PATH", help="A folder or s3://bucket/prefix/export/ to write into.")
@click.option("--format", "export_format", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True)
@click.option(
    "--level", type=click.Choice(["token", "word", "sentence"]), default="token", show_default=True,
    help="Rows per token, or per word or sentence (scores summed over each group's tokens).",
)  # fmt: skip
@click.option(
    "--jobs", type=click.IntRange(min=1), default=None,
    help="Processes exporting at once, each taking slices of the prompts into part files of its own "
    "[default: the CPUs this process may use].",
)  # fmt: skip
def export_command(
    run_id: str, results_url: str | None, dest: str, export_format: str, level: str, jobs: int | None
) -> None:
    """Write RUN_ID's results as tables: DEST/attributions/ (one row per output x source) and DEST/prompts/.

    \b
    Read them with DuckDB, pandas or Polars, e.g.:
      duckdb -c "SELECT source_clean_token, sum(score) FROM 'DEST/attributions/*.parquet' GROUP BY 1"
    """
    from storage_backends import open_storage
    from tokenlens.export import export_run
    from tokenlens.results import RunStore

    settings = Settings.from_env(results_url=results_url)
    store = RunStore(open_storage(settings.results_url), run_id)
    total = store.read_manifest(prompt_ids=False).prompt_count
    bar = _progress_bar(total, "prompt", f"export {run_id}")
    report = export_run(
        settings.results_url, run_id, dest, export_format=export_format, level=level,
        jobs=jobs, on_progress=bar.update,
    )  # fmt: skip
    bar.close()
    click.echo(f"{report.rows['attributions']} attribution rows, {report.rows['prompts']} prompts -> {dest}")
    for name in report.files:
        click.echo(f"  {dest.rstrip('/')}/{name}")
    for prompt_id, reason in report.unreadable.items():
        click.secho(f"  left out {prompt_id}: {reason}", fg="yellow", err=True)


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@results_option()
@run_id_option("The run to create (one per model and method: RUN_ID-<model>-<method> when PATH holds several).")
@click.option(
    "--aggregation", type=click.Choice(["sum", "mean", "l2_norm", "max_abs"]), default="sum", show_default=True,
    help="How Inseq files' per-dimension tensors are reduced (embedding units; layers and heads).",
)  # fmt: skip
def import_command(path: Path, results_url: str | None, run_id: str | None, aggregation: str) -> None:
    """Import the seed's data under PATH as runs: its MODEL/method_X/data/*_inseq.json tree and TokenLens JSON.

    Files that can't be read are listed and left out; a run appears only once all its results are written.
    """
    from storage_backends import open_storage
    from tokenlens.seed_import import import_runs

    if not run_id:
        raise click.UsageError("--run-id is required: the name of the run to create")
    settings = Settings.from_env(results_url=results_url)
    storage = open_storage(settings.results_url)
    report = import_runs(path, storage, run_id, how=aggregation)
    for name, count in report.runs.items():
        click.echo(f"run {name}: {count} results imported")
    for file, reason in report.skipped.items():
        click.secho(f"  not imported {file}: {reason}", fg="yellow", err=True)
    click.echo(f"explore: tokenlens ui --results {storage.url}")
