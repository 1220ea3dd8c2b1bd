"""Plan a run before any work: read the prompt set, open the results URL, check a resumed run, write run.json.

`tokenlens run` (embedded) and `tokenlens submit` (distributed) start the same
way, so they share this: the `RunSpec` was validated when it was built, and
everything else that can be checked is checked here, before a model loads or a
batch is queued.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from storage_backends import Storage, open_storage
from tokenlens.batch import PromptRecord
from tokenlens.errors import TokenLensError
from tokenlens.progress import start_record
from tokenlens.prompt_sets import PromptSource, read_prompt_set
from tokenlens.results import RunStore
from tokenlens.schema import RunManifest
from tokenlens.spec import RunSpec

#: What makes a resumed run the same run (besides its prompt set): everything that changes its numbers or files.
RESUME_IDENTITY = (
    "model",
    "method",
    "engine",
    "method_params",
    "generation_params",
    "chat_template",
    "dtype",
    "result_format",
)
#: Identity fields that may be unknown (None): `submit` leaves the dtype to its workers' `--dtype`.
OPTIONAL_IDENTITY = ("dtype",)


@dataclass(frozen=True)
class RunPlan:
    """A validated run: its spec (with the results URL as storage names it), prompts, and where it is stored."""

    spec: RunSpec
    records: list[PromptRecord]
    manifest: RunManifest
    storage: Storage
    store: RunStore
    #: The run id existed already: only prompts without a result need work.
    resumed: bool

    def save_manifest(self) -> None:
        """Write run.json and prompts.jsonl for a new run (a resumed run keeps its own).

        Call once every check has passed. run.json goes last: a run is listed only once it is whole.
        """
        if not self.resumed:
            self.store.write_prompts(self.records)
            start_record(self.store, self.manifest)  # counts start at zero, never rebuilt by a listing
            self.store.write_manifest(self.manifest)


def identity_mismatch(previous: RunManifest, manifest: RunManifest) -> str | None:
    """How `manifest` differs from the existing run's `previous` in what makes a run's numbers; None if it doesn't."""
    for name in RESUME_IDENTITY:
        before, now = getattr(previous, name), getattr(manifest, name)
        if name in OPTIONAL_IDENTITY and (before is None or now is None):
            continue
        if before != now:
            return f"{name}={before!r}, not {now!r}"
    return None


def check_resumable(previous: RunManifest, manifest: RunManifest, previous_ids: list[str]) -> None:
    """A resumed run must be the same run: same prompts (`previous_ids`, the run's stored prompt ids; empty if it
    kept none), model, method and settings (dtype included)."""
    mismatch = identity_mismatch(previous, manifest)
    if mismatch is not None:
        raise TokenLensError(
            f"run {manifest.run_id!r} already exists with {mismatch}; "
            "pass the same settings to resume it, or a new --run-id"
        )
    if previous_ids and previous_ids != manifest.prompt_ids:
        raise TokenLensError(
            f"run {manifest.run_id!r} already exists with a different prompt set ({previous.prompt_count} prompts); "
            "pass the same prompt file to resume it, or a new --run-id"
        )


def plan_run(spec: RunSpec, prompts_path: str | Path | PromptSource, *, mode: str) -> RunPlan:
    """Read the prompt set, open storage and check a resumed run matches; nothing is written (see `save_manifest`)."""
    records = read_prompt_set(prompts_path, contrastive=spec.contrastive)
    storage = open_storage(spec.results_url)
    storage.check()
    spec = replace(spec, results_url=storage.url)
    manifest = spec.manifest([r.id for r in records], mode=mode, source=str(prompts_path))
    store = RunStore(storage, spec.run_id)
    resumed = store.exists()
    if resumed:
        previous = store.read_manifest(prompt_ids=False)
        check_resumable(previous, manifest, store.prompt_ids(previous))
    return RunPlan(spec=spec, records=records, manifest=manifest, storage=storage, store=store, resumed=resumed)
