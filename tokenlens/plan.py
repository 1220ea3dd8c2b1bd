"""Plan a run before any work: validate the prompt set and settings, open the results URL, write run.json.

`tokenlens run` (embedded) and `tokenlens submit` (distributed) start the same
way, so they share this: everything that can be checked is checked here,
before a model loads or a batch is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage_backends import Storage, open_storage
from tokenlens.batch import PromptRecord
from tokenlens.engine.registry import get_method, resolve_engine, validate_options
from tokenlens.errors import TokenLensError
from tokenlens.models import check_model_spec
from tokenlens.prompt_sets import read_prompt_set
from tokenlens.results import RunStore
from tokenlens.schema import RunManifest


@dataclass(frozen=True)
class RunPlan:
    """A validated run: its prompts, resolved engine and options, and where it is stored."""

    records: list[PromptRecord]
    engine: str
    options: dict[str, Any]
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
            self.store.write_manifest(self.manifest)


def model_for_manifest(model: str) -> str:
    """The model as workers must load it: a local directory or file becomes its absolute path."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def check_resumable(previous: RunManifest, manifest: RunManifest) -> None:
    """A resumed run must be the same run: same prompts, model, method and settings."""
    fields = ("model", "method", "engine", "method_params", "generation_params", "chat_template")
    for name in fields:
        if getattr(previous, name) != getattr(manifest, name):
            raise TokenLensError(
                f"run {manifest.run_id!r} already exists with {name}={getattr(previous, name)!r}, not "
                f"{getattr(manifest, name)!r}; pass the same settings to resume it, or a new --run-id"
            )
    if previous.prompt_ids and previous.prompt_ids != manifest.prompt_ids:
        raise TokenLensError(
            f"run {manifest.run_id!r} already exists with a different prompt set ({previous.prompt_count} prompts); "
            "pass the same prompt file to resume it, or a new --run-id"
        )


def plan_run(
    prompts_path: str | Path,
    *,
    model: str,
    method: str,
    engine: str,
    method_params: dict[str, Any] | None,
    max_new_tokens: int,
    chat_template: bool,
    results_url: str,
    run_id: str,
    mode: str,
) -> RunPlan:
    """Validate everything cheap and check a resumed run matches; nothing is written (see `save_manifest`)."""
    records = read_prompt_set(prompts_path)
    get_method(method)
    chosen_engine = resolve_engine(method, engine)
    options = validate_options(method, method_params or {})
    check_model_spec(model)
    if max_new_tokens < 1:
        raise TokenLensError(f"--max-new-tokens {max_new_tokens} must be at least 1")
    storage = open_storage(results_url)
    storage.check()
    manifest = RunManifest(
        run_id=run_id,
        model=model_for_manifest(model),
        method=method,
        engine=chosen_engine,
        method_params=options,
        generation_params={"max_new_tokens": max_new_tokens},
        chat_template=chat_template,
        prompt_count=len(records),
        prompt_ids=[r.id for r in records],
        source=str(prompts_path),
        mode=mode,
    )
    store = RunStore(storage, run_id)
    resumed = store.exists()
    if resumed:
        check_resumable(store.read_manifest(), manifest)
    return RunPlan(
        records=records, engine=chosen_engine, options=options, manifest=manifest, storage=storage, store=store,
        resumed=resumed,
    )  # fmt: skip
