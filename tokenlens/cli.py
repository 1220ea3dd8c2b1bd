"""The `tokenlens` command. Each subcommand lives with the folder that owns its job and is imported
only when used, so `tokenlens status` never pays for importing torch.

Errors are one line, never a traceback: a TokenLens, storage, configuration or OS error says what
went wrong and what to do (exit 2); anything else is reported as an internal error (exit 1).
`tokenlens --debug COMMAND` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any

import click

from tokenlens.errors import TokenLensError

#: name -> "module:attribute" of a click command, and its one-line help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("tokenlens.cli_run:run_command", "Attribute a prompt set in this process (no Redis needed)."),
    "methods": ("tokenlens.cli_run:methods_command", "List every attribution method and its options."),
    "submit": ("producer.cli:submit_command", "Validate a prompt set and queue it for workers."),
    "status": ("producer.cli:status_command", "Show a run's progress, throughput and ETA."),
    "cancel": ("producer.cli:cancel_command", "Remove a run's queued batches (results stay)."),
    "fetch": ("producer.fetch:fetch_command", "Download a run's files from a results URL."),
    "runs": ("producer.fetch:runs_command", "List the runs under a results URL."),
    "worker": ("worker.cli:worker_command", "Start a worker that attributes one model's queue."),
    "ui": ("ui.server:ui_command", "Serve the read-only web UI over a results URL."),
    "export": ("tokenlens.cli_data:export_command", "Write a run as Parquet or CSV tables (tokens, words, sentences)."),
    "import": ("tokenlens.cli_data:import_command", "Import the seed's Inseq tree or TokenLens JSON folders as runs."),
}


def _available(target: str) -> bool:
    module = target.split(":", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (target, _help) in COMMANDS.items() if _available(target)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None or not _available(entry[0]):
            return None
        module_name, attribute = entry[0].split(":", 1)
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokenlens")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error instead of one line.")
def cli(verbose: int, debug: bool) -> None:
    """TokenLens: which input tokens made the model write each output token?

    \b
    First try (one process, no Redis), on the bundled SmolLM2 model:
      tokenlens run examples/prompts.jsonl
    At scale (Redis + one worker per GPU):
      tokenlens submit prompts.jsonl --model M --method saliency --results s3://bucket/prefix
      tokenlens worker --model M --gpu 0
      tokenlens status RUN_ID --watch
    """
    global _debug
    _debug = debug
    level = logging.WARNING - 10 * (2 if debug else verbose)
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


#: Set by `tokenlens --debug`: errors show their traceback.
_debug = False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: every error prints as one clear line, not a traceback (unless --debug)."""
    try:
        return cli.main(args=argv, prog_name="tokenlens", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _debug:
            raise
        from storage_backends import StorageError

        if isinstance(exc, TokenLensError | StorageError):
            click.secho(f"error: {_one_line(exc)}", fg="red", err=True)
            sys.exit(2)
        if isinstance(exc, OSError):  # a file or network problem the user can fix: name it
            where = f" ({exc.filename})" if exc.filename else ""
            click.secho(f"error: {exc.strerror or _one_line(exc)}{where}", fg="red", err=True)
            sys.exit(2)
        click.secho(
            f"error: internal error {type(exc).__name__}: {_one_line(exc)} "
            "(this is a bug; run again with `tokenlens --debug ...` for the traceback and report it)",
            fg="red",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
