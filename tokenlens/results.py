"""The storage layout of a run, in one place: every read and write of TokenLens files goes through `RunStore`.

runs/<run_id>/run.json                   the run (RunManifest), a few hundred bytes: no prompt id list (runs
                                         written before it moved out kept one; `prompt_ids` reads either)
runs/<run_id>/prompts.jsonl              the run's prompt set, one PromptRecord a line: its ids in order
runs/<run_id>/results/<prompt_id>.json   TokenLens JSON (AnalysisResult), plain or compact (`tokenlens.result_codec`)
runs/<run_id>/inseq/<prompt_id>.json     Inseq's native output, where Inseq ran
runs/<run_id>/errors/<prompt_id>.json    a prompt that failed for good (ErrorRecord)
runs/<run_id>/progress/                  the run's progress record: each writer's tally (`tokenlens.tally`) and
                                         the counts last rebuilt from storage (`tokenlens.progress`)

Every write that changes a prompt's outcome is counted in this process's tally of the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from pydantic import ValidationError

from storage_backends import AlreadyExistsError, NotFoundError, Storage
from tokenlens import defaults, tally
from tokenlens.batch import PromptRecord, check_safe_id, describe_validation_error, is_safe_id
from tokenlens.errors import RunNotFoundError, RunUnreadableError
from tokenlens.result_codec import decode_result, encode_result
from tokenlens.schema import AnalysisResult, ErrorRecord, RunManifest

RUNS_PREFIX = "runs/"
KINDS = ("results", "inseq", "errors")


class RunStore:
    """One run's files under a storage root."""

    def __init__(self, storage: Storage, run_id: str) -> None:
        self.storage = storage
        self.run_id = check_safe_id("run id", run_id)
        self.prefix = f"{RUNS_PREFIX}{run_id}/"

    # keys ---------------------------------------------------------------
    def manifest_key(self) -> str:
        return f"{self.prefix}run.json"

    def key(self, kind: str, prompt_id: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
        return f"{self.prefix}{kind}/{check_safe_id('prompt id', prompt_id)}.json"

    # manifest -------------------------------------------------------------
    def write_manifest(self, manifest: RunManifest) -> None:
        """Write run.json without the prompt id list: prompts.jsonl holds the ids (write it first), so reading a
        run's summary (`status`, `runs`, the UI) costs the same at 100,000 prompts as at 100."""
        self.storage.put(self.manifest_key(), manifest.model_dump_json(indent=2, exclude={"prompt_ids"}).encode())

    def read_manifest(self, *, prompt_ids: bool = True) -> RunManifest:
        """The run's run.json. With ``prompt_ids=False`` its list of prompt ids is skipped unparsed (it is
        left empty): reading a 100,000-prompt run's summary then costs a few ms, not 30 (`status`, `runs`)."""
        try:
            raw = self.storage.get(self.manifest_key())
        except NotFoundError:
            raise RunNotFoundError(
                f"run {self.run_id!r} not found under {self.storage.url} (no {self.manifest_key()}); "
                "`tokenlens runs --results URL` lists the runs there"
            ) from None
        if not prompt_ids:
            light = _without_prompt_ids(raw)
            if light is not None:
                try:
                    return RunManifest.model_validate_json(light)
                except ValidationError:
                    pass  # read whole below, for the error message
        try:
            return RunManifest.model_validate_json(raw)
        except ValidationError as exc:  # truncated, edited, or not ours
            raise RunUnreadableError(
                f"run {self.run_id!r} has an unreadable {self.manifest_key()} under {self.storage.url} "
                f"({describe_validation_error(exc, limit=1)}); restore it or start a new --run-id"
            ) from None

    def exists(self) -> bool:
        return self.storage.exists(self.manifest_key())

    # prompts ----------------------------------------------------------------
    def prompts_key(self) -> str:
        return f"{self.prefix}prompts.jsonl"

    def write_prompts(self, records: list[PromptRecord]) -> None:
        """Keep the prompt set with the run, so pending and failed prompts can be shown by their text."""
        lines = (record.model_dump_json(exclude_none=True) for record in records)
        self.storage.put(self.prompts_key(), ("\n".join(lines) + "\n").encode("utf-8"))

    def prompt_ids(self, manifest: RunManifest | None = None) -> list[str]:
        """The run's prompt ids in the prompt set's order: prompts.jsonl's, else (a run older than prompts.jsonl)
        the list its run.json kept (`manifest`, read whole if not given); empty if neither has one."""
        try:
            raw = self.storage.get(self.prompts_key())
        except NotFoundError:
            return list((manifest if manifest is not None and manifest.prompt_ids else self.read_manifest()).prompt_ids)
        return prompt_ids_of_jsonl(raw)

    def read_prompts(self) -> dict[str, PromptRecord]:
        """The run's prompts by id; empty for runs written before prompts.jsonl existed."""
        try:
            raw = self.storage.get(self.prompts_key())
        except NotFoundError:
            return {}
        records = (PromptRecord.model_validate_json(line) for line in raw.decode("utf-8").splitlines() if line)
        return {record.id: record for record in records}

    # results --------------------------------------------------------------
    def write_result(self, result: AnalysisResult, result_format: str = defaults.RESULT_FORMAT) -> bool:
        """Create the prompt's result in `result_format`; False if one already exists (it is never overwritten)."""
        prompt_id = result.metadata.prompt_id
        if prompt_id is None:
            raise ValueError("a stored result needs metadata.prompt_id")
        encoded = encode_result(result, result_format)
        try:
            self.storage.put(
                self.key("results", prompt_id),
                encoded.body,
                if_absent=True,
                content_type=encoded.content_type,
                content_encoding=encoded.content_encoding,
            )
        except AlreadyExistsError:
            return False
        tally.note(self.storage, self.run_id, done=1)
        return True

    def read_result(self, prompt_id: str) -> AnalysisResult:
        """The prompt's result, whatever format or revision it was written in (`ResultFormatError` if unreadable)."""
        key = self.key("results", prompt_id)
        return decode_result(self.read_result_bytes(prompt_id), source=f"{self.storage.url.rstrip('/')}/{key}")

    def read_result_bytes(self, prompt_id: str) -> bytes:
        """The stored result file as it is (`tokenlens.progress.result_problem` says whether it is valid)."""
        return self.storage.get(self.key("results", prompt_id))

    def delete_result(self, prompt_id: str) -> None:
        """Remove a result, only ever a corrupt one: a valid result is never rewritten."""
        self.storage.delete(self.key("results", prompt_id))
        tally.note(self.storage, self.run_id, removed=1)

    def has_result(self, prompt_id: str) -> bool:
        return self.storage.exists(self.key("results", prompt_id))

    def write_inseq(self, prompt_id: str, native_json: str) -> None:
        # Written before the TokenLens result, and overwritable: a redelivered
        # batch may redo it, and only the result marks the prompt done.
        self.storage.put(self.key("inseq", prompt_id), native_json.encode("utf-8"))

    def read_inseq(self, prompt_id: str) -> bytes:
        return self.storage.get(self.key("inseq", prompt_id))

    def write_error(self, record: ErrorRecord) -> None:
        key = self.key("errors", record.prompt_id)
        new = not self.storage.exists(key)  # a rewritten error record is still one failed prompt
        self.storage.put(key, record.model_dump_json(indent=2).encode())
        if new:
            tally.note(self.storage, self.run_id, failed=1)

    def read_error(self, prompt_id: str) -> ErrorRecord:
        return ErrorRecord.model_validate_json(self.storage.get(self.key("errors", prompt_id)))

    def clear_error(self, prompt_id: str) -> None:
        """Forget the prompt's error record, if it has one (a look-up where there is none, no delete)."""
        key = self.key("errors", prompt_id)
        if self.storage.exists(key):
            self.storage.delete(key)
            tally.note(self.storage, self.run_id, failed=-1)

    def flush_progress(self) -> None:
        """Store this process's tally of the run now (`tokenlens.tally`); call at the end of a batch."""
        tally.flush_run(self.storage, self.run_id)

    # listing ----------------------------------------------------------------
    def ids(self, kind: str) -> set[str]:
        return set(self.sizes(kind))

    def sizes(self, kind: str) -> dict[str, int]:
        """The prompt ids that have a file of `kind`, with each file's size in bytes."""
        prefix = f"{self.prefix}{kind}/"
        return {
            info.key[len(prefix) : -len(".json")]: info.size
            for info in self.storage.list(prefix)
            if info.key.endswith(".json")
        }


_PROMPT_IDS_KEY = b'"prompt_ids":'
#: A prompts.jsonl line as `write_prompts` writes it: the id first, a safe id (no quote or backslash).
_ID_FIRST = re.compile(rb'^\{"id":"([^"\\]*)"[,}]', re.MULTILINE)


def prompt_ids_of_jsonl(raw: bytes) -> list[str]:
    """The ids of a prompts.jsonl in order, without parsing its prompts (one regex pass; 100k ids in ~30 ms).

    A file not laid out as `write_prompts` writes it (edited by hand) is parsed line by line instead.
    """
    ids = [match.decode("utf-8") for match in _ID_FIRST.findall(raw)]
    if len(ids) == sum(1 for line in raw.split(b"\n") if line.strip()):
        return ids
    parsed = (json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip())
    return [str(obj["id"]) for obj in parsed if isinstance(obj, dict) and "id" in obj]


def _without_prompt_ids(raw: bytes) -> bytes | None:
    """run.json with its "prompt_ids" list cut out, or None if it can't be cut safely.

    Prompt ids are safe ids (no quote, bracket or backslash), so the list's first ']' closes it.
    """
    start = raw.find(_PROMPT_IDS_KEY)
    if start < 0 or raw.find(_PROMPT_IDS_KEY, start + 1) >= 0:
        return None
    opening = raw.find(b"[", start)
    closing = raw.find(b"]", opening)
    if opening < 0 or closing < 0 or raw[start + len(_PROMPT_IDS_KEY) : opening].strip():
        return None
    return raw[:opening] + b"[]" + raw[closing + 1 :]


def list_run_ids(storage: Storage) -> Iterator[str]:
    """Every folder under runs/ whose name is a valid run id: one directory read or delimiter listing.

    A folder without a run.json (a run being created, a stray folder) is listed too; reading its
    manifest then raises `RunNotFoundError`, and readers leave it out.
    """
    for name in storage.list_dirs(RUNS_PREFIX):
        if is_safe_id(name):
            yield name
