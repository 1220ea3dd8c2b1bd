"""How far a run is, by one rule for every reader: `tokenlens status`, `tokenlens runs` and the UI's HTTP API.

Storage alone decides (a flushed Redis loses nothing here):

- a prompt is **done** when it has a result file that is a valid TokenLens JSON file for its run and prompt;
- **corrupt** when it has a result file that is not (truncated, not JSON, breaks the contract,
  or names another run or prompt): never counted done, and attributed again on resume;
- **failed** when it has an error record and no result;
- **pending** otherwise.

`result_problem` is the one rule for "valid". Reading every result to apply it costs a
download per prompt, so counts apply it where a file is read anyway: resuming a run
(`stored_result_state`, in the skip check of the pipeline and of `submit`), opening a
result in the UI, and `read_progress(..., verify=True)` (`tokenlens status --verify`,
`tokenlens runs --verify`). Without `verify`, only what the listing shows for free is
checked: an empty result file is corrupt.

**The progress record** (runs/<run_id>/progress/) makes counting cheap: `run_counts` reads the
counts last rebuilt from storage (`base.json`) plus each writer's tally (`tokenlens.tally`),
one small object per writer, never a listing of the run's results, so `status`, `runs` and
the UI cost the same at 100 prompts as at 100,000. The record is rebuilt from a listing
(`read_progress`, which also stores what it found) when

- it is missing (a run older than the record, or storage written by hand);
- its counts are impossible (negative);
- the run has prompts pending and went quiet (no tally stored for `QUIET_S`) after its last
  rebuild: once per quiet spell, it catches up a writer that died between writing a result and
  storing its tally, and a rebuild that raced a writer (a result written while the listing ran
  can be missed, never counted twice: tallies are stored right after each change, and the
  tallies a rebuild includes are read after its listing). A finished run is never listed again;
- someone asks (`--verify`, a resumed submit).

A read-only storage can't keep a rebuilt record: every call then lists (correct, slower).

The prompt count is run.json's `prompt_count`, or the number of distinct prompt ids
known (listed in run.json or stored), whichever is larger: a run whose storage holds
more than its run.json lists (the seed API's run grows with every call) never shows a
negative or stale pending count.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import ValidationError

from storage_backends import NotFoundError, OutsideRootError, StorageError
from tokenlens.batch import describe_validation_error
from tokenlens.result_codec import decode_result
from tokenlens.results import RunStore
from tokenlens.schema import RunManifest
from tokenlens.tally import TALLY_PREFIX, progress_prefix

log = logging.getLogger(__name__)

#: Result files read at once by `read_progress(..., verify=True)` (S3 round trips dominate).
VERIFY_WORKERS = 16
ResultState = Literal["done", "corrupt", "missing"]
#: An unfinished run with no tally stored for this long is rebuilt from storage once (see the module docstring).
QUIET_S = 60.0
#: The counts last rebuilt from storage, in the run's progress folder.
BASE_NAME = "base.json"
#: Present while the run is cancelled (written by `tokenlens cancel`, removed by a resume).
CANCELLED_NAME = "cancelled.json"


@dataclass(frozen=True)
class RunCounts:
    """How many of a run's prompts are in each state."""

    prompt_count: int
    done: int
    failed: int
    corrupt: int = 0
    #: `tokenlens cancel` stopped the run (until a resume): readers stop waiting for it.
    cancelled: bool = False

    @property
    def pending(self) -> int:
        """Prompts with no outcome yet."""
        return max(self.prompt_count - self.done - self.failed - self.corrupt, 0)

    @property
    def complete(self) -> bool:
        """Every prompt has an outcome, and no result is corrupt (a corrupt one waits for a resume)."""
        return self.pending == 0 and self.corrupt == 0


@dataclass(frozen=True)
class RunProgress:
    """A run's manifest and which of its prompts are in each state, read from storage."""

    manifest: RunManifest
    done_ids: frozenset[str]
    failed_ids: frozenset[str]
    corrupt_ids: frozenset[str] = frozenset()
    cancelled: bool = False

    @property
    def counts(self) -> RunCounts:
        stored = self.done_ids | self.failed_ids | self.corrupt_ids
        known = len(set(self.manifest.prompt_ids) | stored)
        return RunCounts(
            prompt_count=max(self.manifest.prompt_count, known),
            done=len(self.done_ids),
            failed=len(self.failed_ids),
            corrupt=len(self.corrupt_ids),
            cancelled=self.cancelled,
        )

    def status_of(self, prompt_id: str) -> str:
        """ "done", "failed", "corrupt" or "pending"."""
        if prompt_id in self.done_ids:
            return "done"
        if prompt_id in self.failed_ids:
            return "failed"
        if prompt_id in self.corrupt_ids:
            return "corrupt"
        return "pending"


def result_problem(raw: bytes, *, run_id: str, prompt_id: str, source: str | None = None) -> str | None:
    """What makes `raw` not a valid result of `prompt_id` in `run_id` (None: it is one). The one rule for corrupt.

    `source` names the file in the message (default: the prompt).
    """
    if not raw.strip():
        return "the result file is empty"
    try:
        # The one decoder (every format and revision TokenLens wrote, and the seed's files).
        result = decode_result(raw, source=source or f"result of {prompt_id}")
    except ValidationError as exc:
        return f"not a valid TokenLens result ({describe_validation_error(exc, limit=1)})"
    except ValueError as exc:  # ResultFormatError included
        return str(exc)
    if result.metadata.run_id not in (None, run_id) or result.metadata.prompt_id not in (None, prompt_id):
        return (
            f"the file is the result of run {result.metadata.run_id!r}, prompt {result.metadata.prompt_id!r}, "
            f"not of run {run_id!r}, prompt {prompt_id!r}"
        )
    return None


def stored_result_state(store: RunStore, prompt_id: str) -> ResultState:
    """ "done" (a valid result), "corrupt" (a result file that fails `result_problem`) or "missing"."""
    try:
        raw = store.read_result_bytes(prompt_id)
    except NotFoundError:
        return "missing"
    except OutsideRootError:  # a symlink planted out of the results directory is no result
        return "corrupt"
    return "corrupt" if result_problem(raw, run_id=store.run_id, prompt_id=prompt_id) is not None else "done"


def read_progress(store: RunStore, manifest: RunManifest | None = None, *, verify: bool = False) -> RunProgress:
    """The run's progress from storage (its run.json is read unless `manifest` is given).

    With `verify`, every result file is read and checked with `result_problem`; without, only an empty
    result file counts as corrupt (its size comes with the listing). Lists the whole run: readers that
    need counts only call `run_counts`. What it finds is stored as the run's progress record.
    """
    manifest = manifest if manifest is not None else store.read_manifest()
    sizes = store.sizes("results")
    if verify:
        with ThreadPoolExecutor(max_workers=VERIFY_WORKERS, thread_name_prefix="tokenlens-verify") as pool:
            states = dict(zip(sizes, pool.map(lambda pid: _verified_state(store, pid), sizes), strict=True))
        corrupt = {pid for pid, state in states.items() if state == "corrupt"}
        done = {pid for pid, state in states.items() if state == "done"}
    else:
        corrupt = {pid for pid, size in sizes.items() if size == 0}
        done = set(sizes) - corrupt
    failed = store.ids("errors") - done - corrupt
    progress = RunProgress(
        manifest=manifest,
        done_ids=frozenset(done),
        failed_ids=frozenset(failed),
        corrupt_ids=frozenset(corrupt),
    )
    # What was just listed is the truth: it becomes the run's record, with the tallies it already includes
    # (read after the listing, so a result written in between is missed, never counted twice; the
    # quiet-run rule catches it up).
    _base, tallies, cancelled = _read_record(store)
    _store_base(store, progress, tallies)
    return replace(progress, cancelled=cancelled)


def _verified_state(store: RunStore, prompt_id: str) -> ResultState:
    try:
        return stored_result_state(store, prompt_id)
    except StorageError:  # unreadable right now (removed since the listing, a link out of the root): not done
        return "corrupt"


def _store_base(store: RunStore, progress: RunProgress, tallies: dict[str, dict[str, Any]]) -> None:
    """Keep what a listing found as the run's record, with the tallies it already includes (best effort)."""
    counts = progress.counts
    body = {
        "done": counts.done,
        "failed": counts.failed,
        "corrupt": counts.corrupt,
        "known": counts.prompt_count,
        "rebuilt_at": time.time(),
        "tallies": {name: [t["done"], t["failed"], t["removed"]] for name, t in tallies.items()},
    }
    try:
        store.storage.put(progress_prefix(store.run_id) + BASE_NAME, json.dumps(body).encode())
    except StorageError as exc:  # a read-only results URL: counting still works, by listing each time
        log.debug("run %s: progress record not stored (%s)", store.run_id, exc)


def _read_record(store: RunStore) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]], bool]:
    """The run's stored base counts (None if absent or unreadable), every writer's tally by name, and
    whether the run is cancelled."""
    prefix = progress_prefix(store.run_id)
    names = [info.key[len(prefix) :] for info in store.storage.list(prefix)]
    tally_names = [n for n in names if n.startswith(TALLY_PREFIX) and n.endswith(".json")]

    def read(name: str) -> dict[str, Any] | None:
        try:
            value = json.loads(store.storage.get(prefix + name))
        except (StorageError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    wanted = ([BASE_NAME] if BASE_NAME in names else []) + tally_names
    if len(wanted) > 2:
        with ThreadPoolExecutor(max_workers=VERIFY_WORKERS, thread_name_prefix="tokenlens-record") as pool:
            values = dict(zip(wanted, pool.map(read, wanted), strict=True))
    else:
        values = {name: read(name) for name in wanted}
    tallies = {}
    for name in tally_names:
        value = values.get(name)
        if value is not None and all(isinstance(value.get(f), int) for f in ("done", "failed", "removed")):
            tallies[name[: -len(".json")]] = value
    base = values.get(BASE_NAME)
    if base is not None and not all(isinstance(base.get(f), int) for f in ("done", "failed", "corrupt", "known")):
        base = None
    return base, tallies, CANCELLED_NAME in names


def _counts_from_record(
    manifest: RunManifest, base: dict[str, Any], tallies: dict[str, dict[str, Any]]
) -> RunCounts | None:
    """The counts the record says (None if they are impossible, so the record must be rebuilt)."""
    recorded = base.get("tallies")
    seen: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    done, failed, removed = base["done"], base["failed"], 0
    for name, tally in tallies.items():
        before = seen.get(name) or [0, 0, 0]
        done += tally["done"] - before[0]
        failed += tally["failed"] - before[1]
        removed += tally["removed"] - before[2]
    # A removed result was a corrupt one: counted corrupt in the base if the base saw it so, else done.
    corrupt = max(base["corrupt"] - removed, 0)
    done -= max(removed - base["corrupt"], 0)
    if min(done, failed, corrupt) < 0:
        return None
    # A run can hold outcomes for prompts its run.json does not list (the Python API's run grows).
    known = max(manifest.prompt_count, base["known"], done + failed + corrupt)
    return RunCounts(prompt_count=known, done=done, failed=failed, corrupt=corrupt)


def _went_quiet(base: dict[str, Any], tallies: dict[str, dict[str, Any]], now: float) -> bool:
    """The run's writers have been quiet for QUIET_S since their last change, and no rebuild followed."""
    last_change = max((float(t.get("updated_at", 0.0)) for t in tallies.values()), default=0.0)
    rebuilt_at = float(base.get("rebuilt_at", 0.0))
    return now - last_change >= QUIET_S and rebuilt_at < last_change + QUIET_S


def run_counts(store: RunStore, manifest: RunManifest | None = None) -> RunCounts:
    """The run's counts from its progress record: O(writers), not O(prompts); rebuilt by a listing when needed."""
    manifest = manifest if manifest is not None else store.read_manifest()
    base, tallies, cancelled = _read_record(store)
    counts = _counts_from_record(manifest, base, tallies) if base is not None else None
    if base is None or counts is None or (counts.pending > 0 and _went_quiet(base, tallies, time.time())):
        return read_progress(store, manifest).counts
    return replace(counts, cancelled=cancelled)


def mark_cancelled(store: RunStore, cancelled: bool) -> None:
    """Record in storage that the run is cancelled (or resumed), so readers without Redis stop waiting."""
    key = progress_prefix(store.run_id) + CANCELLED_NAME
    if cancelled:
        store.storage.put(key, json.dumps({"cancelled_at": time.time()}).encode())
    else:
        store.storage.delete(key)


def start_record(store: RunStore, manifest: RunManifest) -> None:
    """Give a brand-new run its progress record (nothing done yet), so it is never rebuilt by a listing."""
    empty = RunProgress(manifest=manifest, done_ids=frozenset(), failed_ids=frozenset())
    _store_base(store, empty, {})


def record_mark(store: RunStore) -> str | None:
    """A token that changes whenever the run's results may have: its stored counts and every writer's tally
    (each result created or removed moves one). O(writers): readers compare it instead of listing the results.
    None when the run has no record (storage written by hand): only a listing tells then."""
    base, tallies, _cancelled = _read_record(store)
    if base is None and not tallies:
        return None
    return json.dumps([base, tallies], sort_keys=True)
