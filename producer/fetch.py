"""Bring a run's files home from a results URL (`tokenlens fetch`), and list the runs there (`tokenlens runs`).

A fetch mirrors ``runs/<run_id>/...`` from storage into ``DEST/<run_id>/...``: parallel, atomic
per file (a file is either complete or absent), and resumable (files already there with the same
size and MD5 are skipped), so an interrupted fetch is finished by running it again.

At scale: at most `WINDOW_PER_JOB` downloads per thread are handed to the pool at a time (a
bounded window, so the cost per file does not grow with the run), and files are not fsynced one
by one. **Durability:** the destination's filesystem is synced (syncfs) every `SYNC_EVERY_FILES`
files and once at the end, before the fetch reports success; a crash before that can leave
recent files missing or short, and the next fetch, which compares size and MD5, fetches them again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import click

from storage_backends import (
    LocalStorage,
    NotFoundError,
    ObjectInfo,
    Storage,
    StorageError,
    StorageUnavailableError,
    open_storage,
)
from storage_backends.base import md5_hex
from tokenlens.cli_options import results_option
from tokenlens.errors import RunNotFoundError, RunUnreadableError, TokenLensError
from tokenlens.progress import read_progress, run_counts
from tokenlens.results import KINDS, RUNS_PREFIX, RunStore, list_run_ids
from tokenlens.settings import Settings

DEFAULT_JOBS = 8
MAX_JOBS = 64
#: How many failures the summary spells out; the rest are counted.
FAILURES_SHOWN = 10
#: Downloads handed to the pool at once, per thread: enough to keep every thread busy, few enough that
#: waiting for the next finished one costs the same at 100 files as at 100,000.
WINDOW_PER_JOB = 4
#: The destination is synced to disk after this many files (and at the end); see the module docstring.
SYNC_EVERY_FILES = 2000

FileStatus = Literal["downloaded", "skipped", "failed", "not attempted"]


@dataclass(frozen=True)
class FetchPlan:
    """What a fetch will consider: the run's objects of the chosen kinds, plus run.json and prompts.jsonl."""

    run_id: str
    objects: list[ObjectInfo]

    @property
    def total_bytes(self) -> int:
        return sum(info.size for info in self.objects)


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file."""

    key: str
    size: int
    status: FileStatus
    reason: str | None = None


@dataclass
class FetchSummary:
    """The fetch's tally, printed at the end; `ok` is False if any file is missing at the destination."""

    run_id: str
    run_dir: Path
    downloaded: int = 0
    skipped: int = 0
    bytes_downloaded: int = 0
    failures: list[FileOutcome] = field(default_factory=list)
    not_attempted: int = 0
    #: Set when the storage became unreachable and the fetch stopped early.
    stopped_because: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and not self.not_attempted

    def record(self, outcome: FileOutcome) -> None:
        if outcome.status == "downloaded":
            self.downloaded += 1
            self.bytes_downloaded += outcome.size
        elif outcome.status == "skipped":
            self.skipped += 1
        elif outcome.status == "not attempted":
            self.not_attempted += 1
        else:
            self.failures.append(outcome)


def plan_fetch(storage: Storage, run_id: str, kinds: Iterable[str] = KINDS) -> FetchPlan:
    """List what to fetch; `RunNotFoundError` (with a hint) if the run has no run.json there."""
    store = RunStore(storage, run_id)
    store.read_manifest(prompt_ids=False)  # an unknown run id fails here, before anything is written
    # The run's own files (run.json, prompts.jsonl) always come along with the chosen kinds.
    run_files = (store.manifest_key(), store.prompts_key())
    objects = [info for key in run_files for info in storage.list(key) if info.key == key]
    for kind in dict.fromkeys(kinds):
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        objects.extend(storage.list(f"{store.prefix}{kind}/"))
    return FetchPlan(run_id=run_id, objects=objects)


def _local_key(storage_key: str) -> str:
    # runs/<run_id>/results/p1.json -> <run_id>/results/p1.json
    return storage_key[len(RUNS_PREFIX) :]


def _fetch_one(storage: Storage, local: LocalStorage, info: ObjectInfo) -> FileOutcome:
    local_key = _local_key(info.key)
    path = local.root.joinpath(*local_key.split("/"))
    if path.is_file() and path.stat().st_size == info.size:
        remote_md5 = info.md5 or storage.md5(info.key)
        if local.md5(local_key) == remote_md5:
            return FileOutcome(info.key, info.size, "skipped")
    data = storage.get(info.key)
    if info.md5 is not None and md5_hex(data) != info.md5:
        return FileOutcome(
            info.key, info.size, "failed", "content changed since it was listed (MD5 differs); fetch again"
        )
    local.put(local_key, data)  # temp file + fsync + rename: never a partial file
    return FileOutcome(info.key, len(data), "downloaded")


def fetch_run(
    storage: Storage,
    plan: FetchPlan,
    dest: str | Path,
    *,
    jobs: int = DEFAULT_JOBS,
    on_file: Callable[[FileOutcome], None] | None = None,
) -> FetchSummary:
    """Download `plan` into ``dest/<run_id>/`` with `jobs` threads; never raises for a single file.

    If the storage becomes unreachable (after its own retries), files not yet started are left
    alone and counted as not attempted: the endpoint is gone, so hammering it helps nobody.
    `on_file` is called in this thread for each file as it finishes (progress bars, tests).
    """
    local = LocalStorage(dest, fsync=False)  # synced in batches (`_sync_filesystem`), not file by file
    try:
        local.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TokenLensError(f"can't create the destination {local.root} ({exc.strerror}); pass --dest DIR") from None
    if not os.access(local.root, os.W_OK):
        raise TokenLensError(f"destination {local.root} is not writable; pass --dest with a directory you can write to")
    summary = FetchSummary(run_id=plan.run_id, run_dir=local.root / plan.run_id)
    stop = threading.Event()

    def task(info: ObjectInfo) -> FileOutcome:
        if stop.is_set():
            return FileOutcome(info.key, info.size, "not attempted", "storage unavailable")
        try:
            return _fetch_one(storage, local, info)
        except StorageUnavailableError as exc:
            if not stop.is_set():
                summary.stopped_because = str(exc)
            stop.set()
            return FileOutcome(info.key, info.size, "failed", str(exc))
        except NotFoundError:
            return FileOutcome(info.key, info.size, "failed", "deleted from storage while fetching")
        except (StorageError, OSError) as exc:
            return FileOutcome(info.key, info.size, "failed", f"{type(exc).__name__}: {exc}")

    workers = max(1, min(jobs, MAX_JOBS))
    since_sync = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        window: set[Future[FileOutcome]] = set()
        objects = iter(plan.objects)
        try:
            while True:
                for info in objects:  # top the window up; the rest of the plan waits its turn
                    window.add(pool.submit(task, info))
                    if len(window) >= workers * WINDOW_PER_JOB:
                        break
                if not window:
                    break
                done, window = wait(window, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()
                    summary.record(outcome)
                    since_sync += outcome.status == "downloaded"
                    if on_file is not None:
                        on_file(outcome)
                if since_sync >= SYNC_EVERY_FILES:
                    _sync_filesystem(local.root)
                    since_sync = 0
        except BaseException:
            # Ctrl-C (or a failing callback): let only the downloads already running finish (each is
            # atomic), instead of the pool working through the whole queue before we can exit.
            stop.set()
            for future in window:
                future.cancel()
            raise
        finally:
            _sync_filesystem(local.root)
    return summary


def _sync_filesystem(directory: Path) -> None:
    """Flush everything written to `directory`'s filesystem to disk: syncfs(2) where libc has it, else sync."""
    syncfs = getattr(_libc, "syncfs", None) if _libc is not None else None
    if syncfs is None:
        os.sync()
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        os.sync()
        return
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name, use_errno=True) if _libc_name else None


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def summary_lines(summary: FetchSummary) -> list[str]:
    failed = len(summary.failures)
    lines = [
        f"run {summary.run_id} -> {summary.run_dir}: {summary.downloaded} downloaded "
        f"({_human_bytes(summary.bytes_downloaded)}), {summary.skipped} already there, "
        f"{failed} failed, {summary.not_attempted} not attempted"
    ]
    if summary.stopped_because:
        lines.append(f"stopped early: {summary.stopped_because}")
    for outcome in summary.failures[:FAILURES_SHOWN]:
        lines.append(f"  failed: {outcome.key}: {outcome.reason}")
    if failed > FAILURES_SHOWN:
        lines.append(f"  ... and {failed - FAILURES_SHOWN} more failures")
    if not summary.ok:
        lines.append("run the same command again to resume: files already fetched are skipped")
    return lines


def _open_for_reading(results_url: str | None) -> Storage:
    storage = open_storage(Settings.from_env(results_url=results_url).results_url)
    storage.check(for_writing=False)
    return storage


@click.command("fetch")
@click.argument("run_id")
@results_option()
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Local directory; files land in DEST/RUN_ID/ (run.json, results/, inseq/, errors/).",
)
@click.option(
    "--include",
    "kinds",
    type=click.Choice(KINDS),
    multiple=True,
    help="Which files besides run.json and prompts.jsonl (repeatable) [default: results, inseq, errors].",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, MAX_JOBS),
    default=DEFAULT_JOBS,
    show_default=True,
    help="Parallel downloads.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: when stderr is a terminal].")
def fetch_command(
    run_id: str, results_url: str | None, dest: Path, kinds: Sequence[str], jobs: int, progress: bool | None
) -> None:
    """Download RUN_ID's files from a results URL into DEST/RUN_ID/.

    Resumable: files already in DEST with the same size and MD5 are skipped, and each file is
    written atomically, so an interrupted fetch is completed by running it again. Exits non-zero
    if any file could not be fetched.
    """
    from tqdm import tqdm

    storage = _open_for_reading(results_url)
    plan = plan_fetch(storage, run_id, kinds or KINDS)
    show_bar = sys.stderr.isatty() if progress is None else progress
    # Counted in files, so the bar's rate is files/s and its ETA the time left; bytes go in the postfix.
    with tqdm(
        total=len(plan.objects), unit="file", desc=f"fetch {run_id}", disable=not show_bar, file=sys.stderr
    ) as bar:
        fetched_bytes = 0

        def advance(outcome: FileOutcome) -> None:
            nonlocal fetched_bytes
            fetched_bytes += outcome.size
            bar.update(1)
            if bar.n % 50 == 0 or bar.n == bar.total:
                bar.set_postfix_str(f"{_human_bytes(fetched_bytes)} of {_human_bytes(plan.total_bytes)}", refresh=False)

        summary = fetch_run(storage, plan, dest, jobs=jobs, on_file=advance)
    first, *details = summary_lines(summary)
    click.echo(first)
    for line in details:  # only there when something went wrong
        click.echo(line, err=True)
    if not summary.ok:
        raise click.exceptions.Exit(1)


@dataclass(frozen=True)
class RunRow:
    """One line of `tokenlens runs`."""

    run_id: str
    model: str | None = None
    method: str | None = None
    engine: str | None = None
    mode: str | None = None
    prompts: int | None = None
    results: int | None = None
    errors: int | None = None
    corrupt: int | None = None
    #: Prompts with no outcome yet (`tokenlens.progress`: the UI calls the same count "pending").
    remaining: int | None = None
    created_at: str | None = None
    #: Why the row is incomplete (an unreadable run.json), else None.
    problem: str | None = None


def describe_run(storage: Storage, run_id: str, *, verify: bool = False) -> RunRow | None:
    """The run's row (its counts from the progress record; `verify`: every result read); None without run.json."""
    store = RunStore(storage, run_id)
    try:
        manifest = store.read_manifest(prompt_ids=False)  # counts need the prompt count, not the list
        counts = read_progress(store, manifest, verify=True).counts if verify else run_counts(store, manifest)
    except (ValueError, RunUnreadableError) as exc:
        first_line = str(exc).splitlines()[0]
        return RunRow(run_id=run_id, problem=f"unreadable run.json: {first_line}")
    except RunNotFoundError:  # a folder under runs/ with no run.json: a run being created, or not a run
        return None
    return RunRow(
        run_id=run_id,
        model=manifest.model,
        method=manifest.method,
        engine=manifest.engine,
        mode=manifest.mode,
        prompts=counts.prompt_count,
        results=counts.done,
        errors=counts.failed,
        corrupt=counts.corrupt,
        remaining=counts.pending,
        created_at=manifest.created_at,
    )


def describe_runs(storage: Storage, jobs: int = DEFAULT_JOBS, *, verify: bool = False) -> list[RunRow]:
    """Every run under the storage root, oldest first (`verify`: every result file read and checked)."""
    run_ids = list(list_run_ids(storage))
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="runs") as pool:
        found = pool.map(lambda run_id: describe_run(storage, run_id, verify=verify), run_ids)
        rows = [row for row in found if row is not None]
    return sorted(rows, key=lambda row: (row.created_at or "", row.run_id))


def format_table(rows: Sequence[RunRow]) -> list[str]:
    header = ("RUN ID", "MODEL", "METHOD", "PROMPTS", "RESULTS", "ERRORS", "CORRUPT", "CREATED")

    def cells(row: RunRow) -> tuple[str, ...]:
        if row.problem:
            return (row.run_id, f"({row.problem})", "", "", "", "", "", "")
        values = (row.run_id, row.model, row.method, row.prompts, row.results, row.errors, row.corrupt, row.created_at)
        return tuple("-" if value is None else str(value) for value in values)

    table = [header, *(cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    numeric = {3, 4, 5, 6}
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(line)
        ).rstrip()
        for line in table
    ]


@click.command("runs")
@results_option()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--verify", is_flag=True, help="Read and check every result file; corrupt ones are not counted done.")
def runs_command(results_url: str | None, as_json: bool, verify: bool) -> None:
    """List the runs under a results URL: model, method, prompts, results, errors, corrupt results, creation time.

    Without --verify an empty result file counts as corrupt; --verify reads and checks every result file.
    """
    storage = _open_for_reading(results_url)
    rows = describe_runs(storage, verify=verify)
    if as_json:
        click.echo(json.dumps([asdict(row) for row in rows], indent=2))
        return
    if not rows:
        click.echo(f"no runs under {storage.url}")
        return
    for line in format_table(rows):
        click.echo(line)
