"""How far a run is, by one rule for every reader: `tokenlens status`, `tokenlens runs` and the UI's HTTP API.

Storage alone decides (a flushed Redis loses nothing here):

- a prompt is **done** when it has a result file;
- **failed** when it has an error record and no result;
- **corrupt** when its result file can't be read (not detected yet: always empty);
- **pending** otherwise.

The prompt count is run.json's `prompt_count`, or the number of distinct prompt ids
known (listed in run.json or stored), whichever is larger: a run whose storage holds
more than its run.json lists (the seed API's run grows with every call) never shows a
negative or stale pending count.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenlens.results import RunStore
from tokenlens.schema import RunManifest


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
        """Every prompt has an outcome."""
        return self.pending == 0


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


def read_progress(store: RunStore, manifest: RunManifest | None = None) -> RunProgress:
    """The run's progress from storage (its run.json is read unless `manifest` is given)."""
    manifest = manifest if manifest is not None else store.read_manifest()
    done = store.ids("results")
    failed = store.ids("errors") - done
    return RunProgress(manifest=manifest, done_ids=frozenset(done), failed_ids=frozenset(failed))
