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

The prompt count is run.json's `prompt_count`, or the number of distinct prompt ids
known (listed in run.json or stored), whichever is larger: a run whose storage holds
more than its run.json lists (the seed API's run grows with every call) never shows a
negative or stale pending count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from storage_backends import NotFoundError, OutsideRootError, StorageError
from tokenlens.batch import describe_validation_error
from tokenlens.result_codec import decode_result
from tokenlens.results import RunStore
from tokenlens.schema import RunManifest

#: Result files read at once by `read_progress(..., verify=True)` (S3 round trips dominate).
VERIFY_WORKERS = 16
ResultState = Literal["done", "corrupt", "missing"]


@dataclass(frozen=True)
class RunCounts:
    """How many of a run's prompts are in each state."""

    prompt_count: int
    done: int
    failed: int
    corrupt: int = 0

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

    @property
    def counts(self) -> RunCounts:
        stored = self.done_ids | self.failed_ids | self.corrupt_ids
        known = len(set(self.manifest.prompt_ids) | stored)
        return RunCounts(
            prompt_count=max(self.manifest.prompt_count, known),
            done=len(self.done_ids),
            failed=len(self.failed_ids),
            corrupt=len(self.corrupt_ids),
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
    result file counts as corrupt (its size comes with the listing).
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
    return RunProgress(
        manifest=manifest,
        done_ids=frozenset(done),
        failed_ids=frozenset(failed),
        corrupt_ids=frozenset(corrupt),
    )


def _verified_state(store: RunStore, prompt_id: str) -> ResultState:
    try:
        return stored_result_state(store, prompt_id)
    except StorageError:  # unreadable right now (removed since the listing, a link out of the root): not done
        return "corrupt"
