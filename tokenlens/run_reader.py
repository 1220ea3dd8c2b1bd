"""Read runs for people: every run's summary, one page of a run's prompts with their status, one prompt across runs.

The UI's HTTP API (ui/http_api.py) serves what this reads; progress is counted by
`tokenlens.progress`, the same rule `tokenlens status` and `tokenlens runs` use, from the
run's progress record (`run_counts`), so the runs page and a run's counts cost the same at
100,000 prompts as at 100.

A run page (`run_page`) is one page of the prompt set's order, optionally searched (`q`, in
the prompts' text) and filtered by status. An unfiltered page within the first `HEAD_PAGE_ROWS`
rows reads only the head of prompts.jsonl (byte ranges, `Storage.get_range`) and checks only its
own rows: its cost does not grow with the run. Deeper pages and searches read the prompt set once
per run and remember it. A row's status costs one existence check the first time it is shown; a
done row stays done (results are create-only), any other is checked again once the run's counts
change. Filtering by status needs every prompt's status: one listing of the run, remembered
until its counts change.
Results are create-only (a stored result is never rewritten) and run.json is written once, so a
prompt's text and a run's manifest, once read, stay true: `RunReader` remembers them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from storage_backends import NotFoundError, Storage
from tokenlens.batch import check_safe_id
from tokenlens.errors import RunNotFoundError, TokenLensError
from tokenlens.progress import RunCounts, RunProgress, read_progress, result_problem, run_counts
from tokenlens.prompt_sets import parse_json_lines
from tokenlens.result_codec import ResultFormatError, read_metadata
from tokenlens.results import RunStore, list_run_ids
from tokenlens.schema import ErrorRecord, RunManifest

#: Storage reads in flight at once while building a run's prompt list (S3 round trips dominate).
READ_WORKERS = 8
#: The statuses a run page can be filtered by.
STATUSES = ("done", "failed", "pending", "corrupt")
#: Rows a run page holds at most.
MAX_PAGE_ROWS = 500
#: Unfiltered pages ending within this many rows are read from the head of prompts.jsonl, not the whole file.
HEAD_PAGE_ROWS = 1000
#: The first byte range of prompts.jsonl read for a page (doubled until the page's lines are in).
HEAD_FIRST_BYTES = 64 * 1024
#: A head longer than this (very long prompts) is not worth ranges: the whole prompt set is read instead.
HEAD_MAX_BYTES = 8 * 1024 * 1024


class PromptNotInRunError(TokenLensError):
    """A prompt id that has neither a result nor an error record in the run."""


class CorruptResultError(TokenLensError):
    """A stored result file that is not a valid TokenLens result (truncated, not JSON, breaks the contract)."""


def prompt_text_from_result(raw: bytes) -> str | None:
    """The ``metadata.prompt`` of a stored result file in any format, without decoding its (large) matrices."""
    try:
        prompt = read_metadata(raw).get("prompt")
    except ResultFormatError:
        return None
    return prompt if isinstance(prompt, str) else None


def _jsonl_objects(raw: bytes) -> list[object]:
    """Every line of a JSON Lines file, parsed in one pass (5x faster than line by line at 100k lines); if a
    line is unreadable, line by line, leaving that one out (its prompt then shows by id)."""
    lines = [line for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]
    parsed = parse_json_lines(lines)
    if parsed is not None:
        return list(parsed)
    objects = []
    for line in lines:
        try:
            objects.append(json.loads(line))
        except ValueError:
            continue
    return objects


def _id_texts(records: Iterable[object]) -> Iterator[tuple[str, str | None]]:
    """(id, prompt text) of each prompts.jsonl record (a light parse, for display: validated at submit)."""
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            yield record["id"], record["prompt"] if isinstance(record.get("prompt"), str) else None


@dataclass(frozen=True)
class RunSummary:
    """A run's manifest essentials and its progress, as storage alone knows it."""

    run_id: str
    model: str
    method: str
    engine: str
    mode: str
    source: str | None
    created_at: str
    prompt_count: int
    done: int
    failed: int
    corrupt: int
    pending: int
    complete: bool
    #: Stopped by `tokenlens cancel` until a resume: nothing more comes, so pages stop polling.
    cancelled: bool = False

    @classmethod
    def from_counts(cls, manifest: RunManifest, counts: RunCounts) -> RunSummary:
        return cls(
            run_id=manifest.run_id,
            model=manifest.model,
            method=manifest.method,
            engine=manifest.engine,
            mode=manifest.mode,
            source=manifest.source,
            created_at=manifest.created_at,
            prompt_count=counts.prompt_count,
            done=counts.done,
            failed=counts.failed,
            corrupt=counts.corrupt,
            pending=counts.pending,
            complete=counts.complete,
            cancelled=counts.cancelled,
        )


@dataclass(frozen=True)
class UnreadableRun:
    """A run listed under the results URL whose run.json can't be read."""

    run_id: str
    error: str


@dataclass(frozen=True)
class PromptError:
    """Why a failed prompt failed (from its error record)."""

    error_type: str
    message: str
    attempts: int
    timestamp: str


@dataclass(frozen=True)
class PromptEntry:
    """One prompt of a run: its status ("done", "failed", "corrupt" or "pending") and text, where known."""

    prompt_id: str
    prompt: str | None
    error: PromptError | None
    status: str


@dataclass(frozen=True)
class RunPage:
    """One page of a run: its summary, its manifest (without the prompt id list) and the rows asked for.

    `total` is how many prompts match the search and status filter (the pager's length).
    """

    run: RunSummary
    manifest: dict[str, object]
    prompts: list[PromptEntry]
    total: int
    offset: int
    limit: int


@dataclass(frozen=True)
class CompareEntry:
    """The same prompt in one run, and how it was matched ("self", "id" or "text")."""

    run_id: str
    prompt_id: str
    model: str
    method: str
    engine: str
    created_at: str
    matched_by: str
    status: str
    same_text: bool

    @classmethod
    def of(cls, manifest: RunManifest, prompt_id: str, matched_by: str, status: str, same_text: bool) -> CompareEntry:
        return cls(
            run_id=manifest.run_id,
            prompt_id=prompt_id,
            model=manifest.model,
            method=manifest.method,
            engine=manifest.engine,
            created_at=manifest.created_at,
            matched_by=matched_by,
            status=status,
            same_text=same_text,
        )


@dataclass(frozen=True)
class Comparison:
    """A prompt's runs: the asked-for run first, then every other run with the same prompt id, else text."""

    run_id: str
    prompt_id: str
    prompt: str | None
    entries: list[CompareEntry]


class RunReader:
    """Reads the runs under one storage root, remembering the prompt text of each stored result."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        #: Texts read from result files, for prompts the run's prompts.jsonl does not give.
        self._texts: dict[tuple[str, str], str | None] = {}
        #: Each run's prompts.jsonl as {prompt id: text}, in the prompt set's order.
        self._prompt_sets: dict[str, dict[str, str | None]] = {}
        #: (run id, prompt id) of result files found corrupt when read; shown as corrupt from then on.
        self._corrupt: set[tuple[str, str]] = set()
        #: run.json is written once per run: each is parsed once.
        self._manifests: dict[str, RunManifest] = {}
        #: Each run's prompt ids in the prompt set's order (prompts.jsonl, else run.json), and the prompt count
        #: it was built for: built again only when a run holds more prompts than then (the API's run grows).
        self._order: dict[str, tuple[list[str], int]] = {}
        #: The last full listing of a run (for status filters), with the counts it was taken at.
        self._listings: dict[str, tuple[RunCounts, RunProgress]] = {}
        #: The head of each run's prompts.jsonl as {id: text} in order, and whether it is the whole file.
        self._heads: dict[str, tuple[dict[str, str | None], bool]] = {}
        #: Rows found done (results are create-only: they stay done, unless found corrupt).
        self._done_rows: dict[str, set[str]] = {}
        #: Statuses of rows found not done, with the counts they were checked at (true until those change).
        self._other_rows: dict[str, tuple[RunCounts, dict[str, str]]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=READ_WORKERS, thread_name_prefix="tokenlens-read")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def store(self, run_id: str) -> RunStore:
        """The run's store; `TokenLensError` if the id could name a key outside the run."""
        return RunStore(self.storage, run_id)

    def manifest(self, run_id: str) -> RunManifest:
        """The run's run.json, whole: `RunNotFoundError` if absent, `RunUnreadableError` if it can't be read."""
        return self.store(run_id).read_manifest()

    def header(self, run_id: str) -> RunManifest:
        """The run's run.json without its prompt id list (`RunStore.read_manifest(prompt_ids=False)`), read once
        (run.json is written once): what summaries and pages need, a few ms at any size. Errors as `manifest`."""
        with self._lock:
            known = self._manifests.get(run_id)
        if known is not None:
            return known
        manifest = self.store(run_id).read_manifest(prompt_ids=False)
        with self._lock:
            self._manifests[run_id] = manifest
        return manifest

    def counts(self, run_id: str, manifest: RunManifest) -> RunCounts:
        """The run's counts from its progress record, with the results this reader found corrupt counted so."""
        counts = run_counts(self.store(run_id), manifest)
        with self._lock:
            found = min(sum(1 for run, _pid in self._corrupt if run == run_id), counts.done)
        if not found:
            return counts
        return replace(counts, done=counts.done - found, corrupt=counts.corrupt + found)

    def summary(self, run_id: str) -> RunSummary | UnreadableRun | None:
        """The run's summary; None for a folder with no run.json (a run being created, a stray folder)."""
        try:
            manifest = self.header(run_id)
        except RunNotFoundError:
            return None
        except (TokenLensError, ValueError) as exc:
            return UnreadableRun(run_id=run_id, error=f"unreadable run.json: {exc}")
        return RunSummary.from_counts(manifest, self.counts(run_id, manifest))

    def progress(self, run_id: str, manifest: RunManifest) -> RunProgress:
        """The run's progress (tokenlens.progress), with the results this reader found corrupt counted so."""
        progress = read_progress(self.store(run_id), manifest)
        with self._lock:
            found = {pid for run, pid in self._corrupt if run == run_id} & progress.done_ids
        if not found:
            return progress
        return replace(progress, done_ids=progress.done_ids - found, corrupt_ids=progress.corrupt_ids | found)

    def result_bytes(self, run_id: str, prompt_id: str) -> bytes:
        """A stored result, checked with `tokenlens.progress.result_problem`; `CorruptResultError` if it fails."""
        store = self.store(run_id)
        raw = store.read_result_bytes(check_safe_id("prompt id", prompt_id))
        problem = result_problem(raw, run_id=run_id, prompt_id=prompt_id, source=store.key("results", prompt_id))
        if problem is not None:
            with self._lock:
                self._corrupt.add((run_id, prompt_id))
            raise CorruptResultError(
                f"the result of prompt {prompt_id!r} in run {run_id!r} is corrupt: {problem}; resuming the run "
                f"(tokenlens run/submit --run-id {run_id}) attributes it again"
            )
        return raw

    def runs(self) -> list[RunSummary | UnreadableRun]:
        """Every run under the root, newest first (the run a person just started and wants to watch)."""
        found = self._pool.map(self.summary, sorted(list_run_ids(self.storage)))
        summaries = [summary for summary in found if summary is not None]
        summaries.sort(key=lambda s: (getattr(s, "created_at", ""), s.run_id), reverse=True)
        return summaries

    def prompt_texts(self, run_id: str, prompt_ids: Iterable[str]) -> dict[str, str | None]:
        """The text of each given prompt: from the run's prompts.jsonl, else from its stored result.

        Read once, then remembered (a run's prompt set and its results never change).
        """
        store = self.store(run_id)
        wanted = list(prompt_ids)
        from_file = self._prompt_set(run_id)
        with self._lock:
            missing = [pid for pid in wanted if from_file.get(pid) is None and (run_id, pid) not in self._texts]

        def read(prompt_id: str) -> tuple[str, str | None]:
            try:
                return prompt_id, prompt_text_from_result(self.storage.get(store.key("results", prompt_id)))
            except NotFoundError:
                return prompt_id, None

        for prompt_id, text in self._pool.map(read, missing):
            if text is not None:
                with self._lock:
                    self._texts[(run_id, prompt_id)] = text
        with self._lock:
            return {pid: from_file.get(pid) or self._texts.get((run_id, pid)) for pid in wanted}

    def _prompt_set(self, run_id: str, *, again: bool = False) -> dict[str, str | None]:
        """The run's prompts.jsonl as {id: text} in its order (empty if it has none), read once (`again`: re-read).

        A light parse (ids and texts, for display): the file was validated when the run was submitted.
        """
        with self._lock:
            known = self._prompt_sets.get(run_id)
        if known is not None and not again:
            return known
        try:
            raw = self.storage.get(self.store(run_id).prompts_key())
        except NotFoundError:
            raw = b""
        texts = dict(_id_texts(_jsonl_objects(raw)))
        with self._lock:
            self._prompt_sets[run_id] = texts
        return texts

    def errors(self, run_id: str, prompt_ids: Iterable[str]) -> dict[str, ErrorRecord | None]:
        store = self.store(run_id)

        def read(prompt_id: str) -> tuple[str, ErrorRecord | None]:
            try:
                return prompt_id, store.read_error(prompt_id)
            except NotFoundError:  # cleared by a retry since the listing
                return prompt_id, None
            except ValueError as exc:
                record = ErrorRecord(
                    run_id=run_id, prompt_id=prompt_id, prompt="", error_type="UnreadableErrorRecord", message=str(exc)
                )
                return prompt_id, record

        return dict(self._pool.map(read, list(prompt_ids)))

    def _prompt_order(self, run_id: str, manifest: RunManifest, counts: RunCounts) -> list[str]:
        """The run's prompt ids in the prompt set's order, then any stored prompt it does not list.

        prompts.jsonl is read once (a light parse: ids and texts, for display); read again only when
        the counts say the run holds more prompts than known (the Python API's run grows).
        """
        with self._lock:
            cached = self._order.get(run_id)
        if cached is not None and cached[1] >= counts.prompt_count:
            return cached[0]
        texts = self._prompt_set(run_id, again=cached is not None)
        order = list(texts)
        if len(order) < counts.prompt_count:  # no or a partial prompts.jsonl: run.json's list, read whole
            order += [pid for pid in self.manifest(run_id).prompt_ids if pid not in texts]
        if len(order) < counts.prompt_count:  # stored prompts no list names: one listing finds them
            known = set(order)
            progress = self._listing(run_id, manifest, counts)
            order += sorted((progress.done_ids | progress.failed_ids | progress.corrupt_ids) - known)
        with self._lock:
            self._order[run_id] = (order, counts.prompt_count)
        return order

    def _listing(self, run_id: str, manifest: RunManifest, counts: RunCounts) -> RunProgress:
        """Every prompt's status from one listing of the run, remembered until the run's counts change."""
        with self._lock:
            cached = self._listings.get(run_id)
        if cached is not None and cached[0] == counts:
            return cached[1]
        progress = self.progress(run_id, manifest)
        with self._lock:
            self._listings[run_id] = (counts, progress)
        return progress

    def _row_statuses(self, run_id: str, prompt_ids: list[str], counts: RunCounts) -> dict[str, str]:
        """The status of each prompt shown: an existence check per row not known yet (none when all are done)."""
        with self._lock:
            corrupt = {pid for pid in prompt_ids if (run_id, pid) in self._corrupt}
            done_rows = self._done_rows.setdefault(run_id, set())
            known = {pid: "done" for pid in prompt_ids if pid in done_rows}
            checked_at, others = self._other_rows.get(run_id, (None, {}))
            if checked_at == counts:
                known.update({pid: others[pid] for pid in prompt_ids if pid in others})
        if counts.done == counts.prompt_count:
            return {pid: "corrupt" if pid in corrupt else "done" for pid in prompt_ids}
        store = self.store(run_id)

        def status(prompt_id: str) -> str:
            if prompt_id in known:
                return known[prompt_id]
            if store.has_result(prompt_id):
                return "done"
            return "failed" if self.storage.exists(store.key("errors", prompt_id)) else "pending"

        statuses = dict(zip(prompt_ids, self._pool.map(status, prompt_ids), strict=True))
        with self._lock:
            done_rows.update(pid for pid, found in statuses.items() if found == "done")
            if checked_at != counts:
                others = {}
                self._other_rows[run_id] = (counts, others)
            others.update({pid: found for pid, found in statuses.items() if found != "done"})
        return {pid: "corrupt" if pid in corrupt else found for pid, found in statuses.items()}

    def _head(self, run_id: str, manifest: RunManifest, counts: RunCounts, rows: int) -> dict[str, str | None] | None:
        """The first `rows` prompts of the run as {id: text}, from the head of its prompts.jsonl alone; None when
        the head can't tell (no prompts.jsonl, a page deeper than `HEAD_PAGE_ROWS`, a run holding prompts its
        run.json does not count, a very long head): the caller reads the whole prompt set instead."""
        if rows > HEAD_PAGE_ROWS or counts.prompt_count != manifest.prompt_count:
            return None
        with self._lock:
            known = self._heads.get(run_id)
        if known is not None and (len(known[0]) >= rows or known[1]):
            return known[0]
        key, length = self.store(run_id).prompts_key(), HEAD_FIRST_BYTES
        while True:
            try:
                raw = self.storage.get_range(key, 0, length)
            except NotFoundError:
                return None
            whole = len(raw) < length
            objects = _jsonl_objects(raw if whole else raw[: raw.rfind(b"\n") + 1])
            if len(objects) >= rows or whole:
                break
            if length >= HEAD_MAX_BYTES:
                return None
            length *= 2
        head = dict(_id_texts(objects))
        if whole and len(head) != counts.prompt_count:  # a prompt set that is not the run's whole list
            return None
        with self._lock:
            self._heads[run_id] = (head, whole)
        return head

    def run_page(
        self,
        run_id: str,
        *,
        offset: int = 0,
        limit: int = 100,
        status: str | None = None,
        q: str | None = None,
        counts: RunCounts | None = None,
    ) -> RunPage:
        """Rows `offset` to `offset + limit` of the run's prompts matching `q` (in the text or id) and `status`.

        `counts`: the run's counts if the caller has just read them (`counts`), else read here."""
        if status is not None and status not in STATUSES:
            raise TokenLensError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        offset, limit = max(offset, 0), min(max(limit, 0), MAX_PAGE_ROWS)
        manifest = self.header(run_id)
        counts = counts if counts is not None else self.counts(run_id, manifest)
        with self._lock:
            order_known = run_id in self._order
        head = None if q or status is not None or order_known else self._head(run_id, manifest, counts, offset + limit)
        if head is not None:  # the first rows, from the head of the prompt set: the cost of the page alone
            page_ids = list(head)[offset : offset + limit]
            return self._page(run_id, manifest, counts, page_ids, self._row_statuses(run_id, page_ids, counts),
                              total=counts.prompt_count, offset=offset, limit=limit, texts=head)  # fmt: skip
        rows = self._prompt_order(run_id, manifest, counts)
        if q:
            needle = q.casefold()
            from_file = self._prompt_set(run_id)
            with self._lock:
                texts = {pid: from_file.get(pid) or self._texts.get((run_id, pid)) or "" for pid in rows}
            rows = [pid for pid in rows if needle in pid.casefold() or needle in texts[pid].casefold()]
        statuses: dict[str, str]
        if status is not None:
            listing = self._listing(run_id, manifest, counts)
            rows = [pid for pid in rows if listing.status_of(pid) == status]
            page_ids = rows[offset : offset + limit]
            statuses = {pid: status for pid in page_ids}
        else:
            page_ids = rows[offset : offset + limit]
            statuses = self._row_statuses(run_id, page_ids, counts)
        return self._page(
            run_id, manifest, counts, page_ids, statuses, total=len(rows), offset=offset, limit=limit,
            texts=self.prompt_texts(run_id, page_ids),
        )  # fmt: skip

    def _page(
        self, run_id: str, manifest: RunManifest, counts: RunCounts, page_ids: list[str], statuses: dict[str, str],
        *, total: int, offset: int, limit: int, texts: dict[str, str | None],
    ) -> RunPage:  # fmt: skip
        """The page of `page_ids`, with the error record of each failed row."""
        errors = self.errors(run_id, [pid for pid in page_ids if statuses[pid] == "failed"])
        prompts = []
        for prompt_id in page_ids:
            text, error = texts.get(prompt_id), None
            record = errors.get(prompt_id)
            if record is not None:
                text = text or record.prompt or None
                error = PromptError(record.error_type, record.message, record.attempts, record.timestamp)
            prompts.append(PromptEntry(prompt_id, text, error, statuses[prompt_id]))
        return RunPage(
            run=RunSummary.from_counts(manifest, counts),
            manifest=manifest.model_dump(mode="json", exclude={"prompt_ids"}),
            prompts=prompts,
            total=total,
            offset=offset,
            limit=limit,
        )

    def prompt_text(self, run_id: str, prompt_id: str) -> tuple[str | None, str | None]:
        """(text, status) of one prompt of a run; status None if the run has neither a result nor an error."""
        store = self.store(run_id)
        if store.has_result(prompt_id):
            return self.prompt_texts(run_id, [prompt_id])[prompt_id], "done"
        try:
            return store.read_error(prompt_id).prompt or None, "failed"
        except NotFoundError:
            return None, None
        except ValueError:
            return None, "failed"

    def compare(self, run_id: str, prompt_id: str) -> Comparison:
        """The prompt's runs: this one first, then every other run that has the same prompt id, else the same text."""
        base_manifest = self.manifest(run_id)
        check_safe_id("prompt id", prompt_id)
        text, status = self.prompt_text(run_id, prompt_id)
        if status is None:
            raise PromptNotInRunError(f"run {run_id!r} has no result or error for prompt {prompt_id!r}")
        entries = [CompareEntry.of(base_manifest, prompt_id, "self", status, same_text=True)]
        for other_id in sorted(list_run_ids(self.storage)):
            if other_id == run_id:
                continue
            other = self.store(other_id)
            try:
                manifest = self.header(other_id)
            except (TokenLensError, ValueError):
                continue
            other_text, other_status = self.prompt_text(other_id, prompt_id)
            if other_status is not None:
                same = text is not None and other_text == text
                entries.append(CompareEntry.of(manifest, prompt_id, "id", other_status, same_text=same))
                continue
            if text is None:
                continue
            done = sorted(other.ids("results"))
            texts = self.prompt_texts(other_id, done)
            match = next((pid for pid in done if texts.get(pid) == text), None)
            if match is not None:
                entries.append(CompareEntry.of(manifest, match, "text", "done", same_text=True))
        return Comparison(run_id=run_id, prompt_id=prompt_id, prompt=text, entries=entries)
