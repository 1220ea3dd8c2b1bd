"""Run-level views: what a whole run's results say, computed from the stored result files.

Four views answer the questions a researcher has about a finished (or running) run:

* **Token importance** — which input tokens receive the most attribution across the run. For one prompt, an
  input position j receives ``a(j) = mean over output rows i of |N[i, j]|``, where N is the row-normalised
  matrix (each row over its largest absolute value, so every row counts the same whatever the method's scale).
  Across the run, a token t (its clean text, stripped) has ``total(t) = sum of a(j)`` over its occurrences and
  ``count(t)`` occurrences. The raw total favours frequent tokens ("the", ","), the raw mean favours tokens seen
  once, so the frequency-corrected score is a shrunk lift::

      score(t) = ((total(t) + m * mu) / (count(t) + m)) / mu

  with ``mu`` the mean of a(j) over every occurrence in the run and ``m = IMPORTANCE_PRIOR_COUNT``. 1.0 means "an
  average token"; 2.0 means its occurrences draw twice the attribution of an average one, and a token seen
  once is pulled towards 1.0 so chance does not top the list. Template tokens are left out (they are the chat
  template, not the user's input). Each token lists the prompts where it scored highest. At word level
  (`tokenlens.words` groups tokens by their character spans), a word's occurrence receives the sum of its
  tokens' a(j) (the "sum" aggregation), and the same formula ranks the words.
* **Where attention goes** — for each output position, the mean share of a row's absolute attribution that
  falls on prompt tokens, template tokens and earlier generated tokens; and the distance profile: the mean
  share at distance d (d = 1 is the token just before the one being predicted), in doubling buckets.
* **Agreement** — for two runs on the same prompts (matched by prompt id, with the same input tokens), per
  prompt the mean Spearman rank correlation of |scores| over the rows both runs generated alike, and the mean
  top-k overlap; their distribution, and the prompts where the runs disagree most (`tokenlens.run_agreement`).
* **Performance** — seconds per prompt and per output token for each timing phase the engines record, per
  (model, method, device) across runs.

Everything is computed from `PromptDigest`s: one small summary per result file, made once (result files are
create-only) from the bytes through `tokenlens.result_codec`, so plain JSON, compact and seed files all work.
`RunViewCache` keeps a run's aggregate (and each prompt's cost) keyed by the result files seen (id and size): a
call that finds the same files answers from memory; new files are digested and added to the aggregate without
touching the rest (a removed file, which only happens to a corrupt one, makes the run be digested afresh). The
files are listed again only when the run's progress record moved (or after `RESULTS_RELIST_S`).
Nothing here imports the UI; ui/run_views_api.py serves these views over HTTP.
"""

from __future__ import annotations

import copy
import heapq
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from storage_backends import NotFoundError, Storage
from tokenlens.errors import TokenLensError
from tokenlens.progress import record_mark
from tokenlens.result_codec import ResultFormatError, load_document, upgrade_document
from tokenlens.results import RunStore, list_run_ids
from tokenlens.run_agreement import AGREEMENT_TOP_K, PromptAgreement, PromptMatrix, agreement_view, compare_prompts
from tokenlens.schema import TokenInfo
from tokenlens.words import group_tokens

#: The prior weight m (in occurrences) of the frequency-corrected importance score (see the module docstring).
IMPORTANCE_PRIOR_COUNT = 5.0
#: How many prompts each important token links to (where it scored highest).
TOP_PROMPTS_PER_TOKEN = 5
#: Distance buckets of the distance profile: [1], [2], [3, 4], [5, 8], ... doubling, the last open-ended.
DISTANCE_BUCKET_EDGES = (1, 2, 3, 5, 9, 17, 33, 65, 129, 257, 513)
LEVELS = ("token", "word")
#: How long the performance view reuses its list of runs: listing the runs walks every result file, and a
#: new run appears far less often than the page asks (each run's own results are listed on every call).
RUN_LIST_TTL_S = 10.0
#: A run's result files are listed again when its progress record moves (`tokenlens.progress.record_mark`), and
#: at least this often, for files put in storage some other way (by hand, a writer that keeps no tally).
RESULTS_RELIST_S = 30.0
T = TypeVar("T")


class ViewRequestError(TokenLensError):
    """A view asked for with an argument it can't take (an unknown level, a run compared with itself)."""


# --- one prompt ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputUnit:
    """One input unit of a prompt (a token, or a word of tokens): its text and the score it received."""

    text: str
    score: float


@dataclass(frozen=True)
class PromptCost:
    """What one result cost, and on what (the performance view); kept per prompt while the cache lives."""

    model: str
    method: str
    device: str
    n_out: int
    timings_s: Mapping[str, float]


@dataclass(frozen=True)
class PromptDigest:
    """What the run views need of one result file. Added to the run's sums, then dropped but for its cost."""

    prompt_id: str
    cost: PromptCost
    #: Non-template input units with their scores (module docstring), per level ("token", "word").
    units: Mapping[str, tuple[InputUnit, ...]]
    #: Per output position: (prompt share, template share, generated share); None for an all-zero row.
    shares: tuple[tuple[float, float, float] | None, ...]
    #: Per distance bucket: the summed share over this prompt's non-zero rows.
    distance_sums: tuple[float, ...]
    distance_rows: int


def decode_prompt(raw: bytes, source: str) -> tuple[dict[str, Any], np.ndarray]:
    """A result file (any format `tokenlens.result_codec` reads) as its document and raw float matrix.

    `ResultFormatError` naming `source` if it can't be read or breaks the matrix shape.
    """
    document = upgrade_document(load_document(raw, source), source)
    data = document["data"]
    n_in, n_out = len(data["input_tokens"]), len(data["output_tokens"])
    matrix = np.asarray(data["association_matrix"], dtype=np.float64)
    if matrix.size == 0:
        matrix = matrix.reshape(n_out, n_in + n_out)
    if matrix.shape != (n_out, n_in + n_out):
        raise ResultFormatError(f"{source}: association_matrix is {matrix.shape}, expected ({n_out}, {n_in + n_out})")
    for name in ("input_tokens", "output_tokens"):
        if not all(isinstance(token, dict) for token in data[name]):
            raise ResultFormatError(f"{source}: data.{name} must be a list of token objects")
    return document, matrix


def token_text(token: TokenInfo) -> str:
    """A token's readable text for grouping across prompts: its clean text without surrounding whitespace."""
    return token.clean_token.strip() or token.token.strip() or "␣"


def input_units(
    tokens: list[TokenInfo], received: np.ndarray, level: str, prompt_text: str | None
) -> tuple[InputUnit, ...]:
    """The prompt's non-template input units and their scores at `level` ("token" or "word").

    A word is grouped by `tokenlens.words` (from the tokens' character spans in `prompt_text`) and receives the
    sum of its tokens' scores (the "sum" aggregation: what its tokens receive together). The one place a level
    is interpreted.
    """
    if level == "token":
        return tuple(
            InputUnit(token_text(token), float(score))
            for token, score in zip(tokens, received, strict=True)
            if not token.is_template
        )
    if level != "word":
        raise ViewRequestError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
    return tuple(
        InputUnit(
            group.text.strip() or "".join(tokens[j].token for j in group.tokens),
            float(sum(received[j] for j in group.tokens)),
        )
        for group in group_tokens(tokens, prompt_text, "word")
        if not group.is_template
    )


def distance_bucket_index(distance: np.ndarray) -> np.ndarray:
    """The `DISTANCE_BUCKET_EDGES` bucket of each distance (>= 1)."""
    return np.searchsorted(np.asarray(DISTANCE_BUCKET_EDGES), distance, side="right") - 1


def distance_bucket_labels() -> list[str]:
    labels = []
    for k, low in enumerate(DISTANCE_BUCKET_EDGES):
        high = DISTANCE_BUCKET_EDGES[k + 1] - 1 if k + 1 < len(DISTANCE_BUCKET_EDGES) else None
        labels.append(str(low) if high == low else f"{low}+" if high is None else f"{low}-{high}")
    return labels


def digest_prompt(prompt_id: str, raw: bytes, source: str) -> PromptDigest:
    """The `PromptDigest` of one stored result file."""
    document, matrix = decode_prompt(raw, source)
    metadata, data = document["metadata"], document["data"]
    try:
        inputs = [TokenInfo.model_validate(token) for token in data["input_tokens"]]
    except ValueError as exc:
        raise ResultFormatError(
            f"{source}: an input token is not a valid token ({str(exc).splitlines()[-1]})"
        ) from None
    n_in, n_out = len(inputs), matrix.shape[0]
    magnitude = np.abs(matrix)
    peaks = magnitude.max(axis=1, keepdims=True) if matrix.size else np.zeros((n_out, 1))
    normalized = np.divide(magnitude, peaks, out=np.zeros_like(magnitude), where=peaks > 0)
    received = normalized[:, :n_in].mean(axis=0) if n_out else np.zeros(n_in)

    template = np.array([token.is_template for token in inputs], dtype=bool)
    row_totals = magnitude.sum(axis=1)
    on_template = magnitude[:, :n_in][:, template].sum(axis=1)
    on_prompt = magnitude[:, :n_in].sum(axis=1) - on_template
    on_generated = magnitude[:, n_in:].sum(axis=1)
    shares = tuple(
        (float(p / t), float(m / t), float(g / t)) if t > 0 else None
        for p, m, g, t in zip(on_prompt, on_template, on_generated, row_totals, strict=True)
    )

    distance_sums = np.zeros(len(DISTANCE_BUCKET_EDGES))
    live = row_totals > 0
    if n_out and live.any():
        columns = np.arange(n_in + n_out)
        distance = (n_in + np.arange(n_out))[:, None] - columns[None, :]
        buckets = distance_bucket_index(np.maximum(distance, 1))
        share = magnitude[live] / row_totals[live][:, None]
        valid = distance[live] >= 1
        np.add.at(distance_sums, buckets[live][valid], share[valid])

    timings = metadata.get("timings_s")
    prompt_text = metadata.get("prompt") if isinstance(metadata.get("prompt"), str) else None
    cost = PromptCost(
        model=str(metadata.get("llm_id") or "unknown"),
        method=str(metadata.get("attribution_method") or "unknown"),
        device=str(metadata.get("device") or "unknown"),
        n_out=n_out,
        timings_s={
            str(k): float(v)
            for k, v in (timings.items() if isinstance(timings, dict) else ())
            if isinstance(v, int | float) and math.isfinite(v)
        },
    )
    return PromptDigest(
        prompt_id=prompt_id,
        cost=cost,
        units={level: input_units(inputs, received, level, prompt_text) for level in LEVELS},
        shares=shares,
        distance_sums=tuple(float(v) for v in distance_sums),
        distance_rows=int(live.sum()),
    )


def prompt_matrix(raw: bytes, source: str) -> PromptMatrix:
    document, matrix = decode_prompt(raw, source)
    data = document["data"]
    return PromptMatrix(
        input_tokens=tuple(str(t.get("token", "")) for t in data["input_tokens"]),
        output_tokens=tuple(str(t.get("token", "")) for t in data["output_tokens"]),
        matrix=matrix.astype(np.float32),
    )


# --- aggregates (additive: a new digest is added without touching the others) -------------------------------


@dataclass
class UnitTally:
    total: float = 0.0
    count: int = 0
    #: (best score in the prompt, prompt id) of the prompts where it scored highest (a min-heap).
    best: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class ImportanceSums:
    """Token importance at one level: every unit's tally, and the sum and count over all occurrences."""

    total: float = 0.0
    count: int = 0
    units: dict[str, UnitTally] = field(default_factory=dict)

    def add(self, units: Iterable[InputUnit], prompt_id: str) -> None:
        best_here: dict[str, float] = {}
        for unit in units:
            tally = self.units.get(unit.text)
            if tally is None:
                tally = self.units[unit.text] = UnitTally()
            tally.total += unit.score
            tally.count += 1
            self.total += unit.score
            self.count += 1
            if unit.score > best_here.get(unit.text, -1.0):
                best_here[unit.text] = unit.score
        for text, score in best_here.items():
            best = self.units[text].best
            if len(best) < TOP_PROMPTS_PER_TOKEN:
                heapq.heappush(best, (score, prompt_id))
            elif (score, prompt_id) > best[0]:
                heapq.heapreplace(best, (score, prompt_id))


@dataclass
class RunAggregate:
    """The run's sums over every digest added so far."""

    prompts: int = 0
    importance: dict[str, ImportanceSums] = field(default_factory=lambda: {level: ImportanceSums() for level in LEVELS})
    #: Per output position: [prompt, template, generated] share sums and the number of rows.
    position_sums: list[list[float]] = field(default_factory=list)
    position_rows: list[int] = field(default_factory=list)
    distance_sums: list[float] = field(default_factory=lambda: [0.0] * len(DISTANCE_BUCKET_EDGES))
    distance_rows: int = 0

    def add(self, digest: PromptDigest) -> None:
        self.prompts += 1
        for level, importance in self.importance.items():
            importance.add(digest.units[level], digest.prompt_id)
        for position, share in enumerate(digest.shares):
            if position >= len(self.position_rows):
                self.position_sums.append([0.0, 0.0, 0.0])
                self.position_rows.append(0)
            if share is not None:
                sums = self.position_sums[position]
                for k in range(3):
                    sums[k] += share[k]
                self.position_rows[position] += 1
        for k, value in enumerate(digest.distance_sums):
            self.distance_sums[k] += value
        self.distance_rows += digest.distance_rows


def importance_view(aggregate: RunAggregate, level: str, limit: int) -> dict[str, Any]:
    """The top `limit` units at `level` by frequency-corrected score (module docstring), with their links."""
    sums = aggregate.importance[level]
    mu = sums.total / sums.count if sums.count else 0.0
    prior = IMPORTANCE_PRIOR_COUNT
    rows = []
    for text, tally in sums.units.items():
        score = ((tally.total + prior * mu) / (tally.count + prior)) / mu if mu > 0 else 0.0
        rows.append((score, tally.total, text, tally))
    rows.sort(key=lambda row: (-row[0], -row[1], row[2]))
    return {
        "level": level,
        "formula": "score = ((total + m*mu) / (count + m)) / mu; total = sum over occurrences of the mean |normalized "
        "attribution| the token (a word: its tokens together) receives per output token; mu = mean over all "
        "occurrences",
        "prior_count": prior,
        "mean_per_occurrence": mu,
        "distinct_tokens": len(sums.units),
        "tokens": [
            {
                "token": text,
                "score": score,
                "total": total,
                "count": tally.count,
                "mean": total / tally.count,
                "top_prompts": [
                    {"prompt_id": pid, "score": value} for value, pid in sorted(tally.best, key=lambda b: (-b[0], b[1]))
                ],
            }
            for score, total, text, tally in rows[:limit]
        ],
    }


def attention_view(aggregate: RunAggregate) -> dict[str, Any]:
    """Mean shares by output position and the distance profile."""
    positions = []
    for position, (sums, rows) in enumerate(zip(aggregate.position_sums, aggregate.position_rows, strict=True)):
        if rows:
            prompt, template, generated = (value / rows for value in sums)
            positions.append(
                {"position": position, "rows": rows, "prompt": prompt, "template": template, "generated": generated}
            )
    rows_total = sum(aggregate.position_rows)
    overall = [sum(sums[k] for sums in aggregate.position_sums) / rows_total if rows_total else 0.0 for k in range(3)]
    return {
        "overall": {"prompt": overall[0], "template": overall[1], "generated": overall[2], "rows": rows_total},
        "by_position": positions,
        "distance": [
            {"bucket": label, "share": value / aggregate.distance_rows if aggregate.distance_rows else 0.0}
            for label, value in zip(distance_bucket_labels(), aggregate.distance_sums, strict=True)
        ],
    }


# --- performance -------------------------------------------------------------------------------------------

#: (model, method, device): what the performance view groups by.
CostKey = tuple[str, str, str]


@dataclass
class CostSums:
    """One (model, method, device)'s prompts and, per phase, [seconds, prompts that timed it, their outputs]."""

    prompts: int = 0
    output_tokens: int = 0
    phases: dict[str, list[float]] = field(default_factory=dict)

    def add(self, cost: PromptCost) -> None:
        self.prompts += 1
        self.output_tokens += cost.n_out
        timings = dict(cost.timings_s)
        if timings and "total" not in timings:
            timings["total"] = sum(timings.values())
        for phase, seconds in timings.items():
            self._add_phase(phase, seconds, 1, cost.n_out)

    def merge(self, other: CostSums) -> None:
        self.prompts += other.prompts
        self.output_tokens += other.output_tokens
        for phase, (seconds, prompts, tokens) in other.phases.items():
            self._add_phase(phase, seconds, prompts, tokens)

    def _add_phase(self, phase: str, seconds: float, prompts: float, output_tokens: float) -> None:
        sums = self.phases.setdefault(phase, [0.0, 0.0, 0.0])
        sums[0] += seconds
        sums[1] += prompts
        sums[2] += output_tokens


def performance_rows(sums_by_run: Mapping[str, Mapping[CostKey, CostSums]]) -> list[dict[str, Any]]:
    """Seconds per prompt and per output token for each phase, per (model, method, device), with its runs.

    A phase's per-prompt figure is its mean over the prompts that recorded it; per output token, its sum over
    those prompts divided by their output tokens.
    """
    groups: dict[CostKey, CostSums] = {}
    runs: dict[CostKey, set[str]] = {}
    for run_id, run_sums in sums_by_run.items():
        for key, sums in run_sums.items():
            groups.setdefault(key, CostSums()).merge(sums)
            runs.setdefault(key, set()).add(run_id)
    rows = []
    for (model, method, device), group in sorted(groups.items()):
        phases = {
            phase: {
                "per_prompt_s": seconds / prompts,
                "per_output_token_s": seconds / tokens if tokens else None,
                "prompts": int(prompts),
            }
            for phase, (seconds, prompts, tokens) in sorted(group.phases.items())
        }
        rows.append(
            {
                "model": model,
                "method": method,
                "device": device,
                "runs": sorted(runs[(model, method, device)]),
                "prompts": group.prompts,
                "output_tokens": group.output_tokens,
                "phases": phases,
            }
        )
    return rows


# --- the cache ---------------------------------------------------------------------------------------------


@dataclass
class RunState:
    """One run's sums, and the result files (id -> size) they were made from.

    Memory grows with the run's vocabulary and output length, not with its prompts' matrices: a digest is added
    to the sums and dropped.
    """

    seen: dict[str, int] = field(default_factory=dict)
    digested: set[str] = field(default_factory=set)
    costs: dict[CostKey, CostSums] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    aggregate: RunAggregate = field(default_factory=RunAggregate)


@dataclass
class AgreementState:
    seen: tuple[dict[str, int], dict[str, int]] = field(default_factory=lambda: ({}, {}))
    prompts: dict[str, PromptAgreement] = field(default_factory=dict)


class RunViewCache:
    """Run views over one storage root, cached per run and brought up to date with the result files on each call.

    Thread-safe: one lock per run, so two runs are digested at once but one run never twice.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._runs: dict[str, RunState] = {}
        self._agreements: dict[tuple[str, str], AgreementState] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._run_list: tuple[float, list[str]] | None = None
        #: Per run: the progress mark and time of its last listing, and the files it found.
        self._listings: dict[str, tuple[str | None, float, dict[str, int]]] = {}

    def _run_ids(self) -> list[str]:
        """Every run under the root, listed again at most every `RUN_LIST_TTL_S` (the listing walks every file)."""
        now = time.monotonic()
        with self._guard:
            if self._run_list is not None and now - self._run_list[0] < RUN_LIST_TTL_S:
                return self._run_list[1]
        run_ids = sorted(list_run_ids(self.storage))
        with self._guard:
            self._run_list = (now, run_ids)
        return run_ids

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _result_files(self, run_id: str) -> tuple[RunStore, dict[str, int]]:
        """The run's result files (id -> size): listed again only when its progress record moved (a few small
        reads instead of a listing of every result), or after `RESULTS_RELIST_S`."""
        store = RunStore(self.storage, run_id)
        store.read_manifest(prompt_ids=False)  # RunNotFoundError / RunUnreadableError for a run that isn't one
        mark = record_mark(store)  # read before listing: a result written in between moves it for next time
        now = time.monotonic()
        with self._guard:
            listed = self._listings.get(run_id)
        if listed is not None and mark is not None and listed[0] == mark and now - listed[1] < RESULTS_RELIST_S:
            return store, dict(listed[2])
        files = store.sizes("results")
        with self._guard:
            self._listings[run_id] = (mark, now, files)
        return store, dict(files)

    def run_state(self, run_id: str) -> RunState:
        """The run's state, up to date (for tests: no lock is held while the caller reads it)."""
        return self._read(run_id, lambda state: state)

    def _read(self, run_id: str, read: Callable[[RunState], T]) -> T:
        """`read` of the run's state, brought up to date, under the run's lock (a view never sees half an update)."""
        store, files = self._result_files(run_id)
        with self._lock(f"run:{run_id}"):
            return read(self._refresh(run_id, store, files))

    def _refresh(self, run_id: str, store: RunStore, files: dict[str, int]) -> RunState:
        """The run's state, digesting the result files that are new (or changed) since the last call."""
        state = self._runs.get(run_id) or RunState()
        if files == state.seen:
            return state
        if any(files.get(pid) != size for pid, size in state.seen.items()):
            # A result removed or replaced (a corrupt one, before it is attributed again; never a valid one):
            # sums can't subtract a digest no longer kept, so the run is digested afresh.
            state = RunState()
        for pid in sorted(files):
            if pid in state.digested or pid in state.unreadable:
                continue
            key = store.key("results", pid)
            try:
                digest = digest_prompt(pid, self.storage.get(key), key)
            except NotFoundError:
                files.pop(pid)  # removed since the listing; seen next time if it comes back
                continue
            except ResultFormatError as exc:
                state.unreadable[pid] = str(exc)
                continue
            state.digested.add(pid)
            cost = digest.cost
            state.costs.setdefault((cost.model, cost.method, cost.device), CostSums()).add(cost)
            state.aggregate.add(digest)
        state.seen = files
        self._runs[run_id] = state
        return state

    def _summary(self, run_id: str, state: RunState) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "prompts": len(state.digested),
            "unreadable": [{"prompt_id": pid, "error": error} for pid, error in sorted(state.unreadable.items())],
        }

    def importance(self, run_id: str, level: str = "token", limit: int = 50) -> dict[str, Any]:
        if level not in LEVELS:
            raise ViewRequestError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
        return self._read(
            run_id, lambda state: {**self._summary(run_id, state), **importance_view(state.aggregate, level, limit)}
        )

    def attention(self, run_id: str) -> dict[str, Any]:
        return self._read(run_id, lambda state: {**self._summary(run_id, state), **attention_view(state.aggregate)})

    def performance(self, run_ids: Iterable[str] | None = None) -> dict[str, Any]:
        """Performance across `run_ids` (default: every run under the root whose run.json reads)."""
        chosen = self._run_ids() if run_ids is None else list(run_ids)
        costs: dict[str, dict[CostKey, CostSums]] = {}
        skipped = []
        for run_id in chosen:
            try:
                costs[run_id] = self._read(run_id, lambda state: copy.deepcopy(state.costs))
            except (TokenLensError, ValueError) as exc:
                if run_ids is not None:
                    raise
                skipped.append({"run_id": run_id, "error": str(exc)})
        return {"groups": performance_rows(costs), "skipped_runs": skipped}

    def agreement(self, run_id: str, other_run_id: str) -> dict[str, Any]:
        if run_id == other_run_id:
            raise ViewRequestError(f"agreement compares two runs; pick a run other than {run_id!r}")
        first_store, first_files = self._result_files(run_id)
        second_store, second_files = self._result_files(other_run_id)
        with self._lock(f"agreement:{run_id}:{other_run_id}"):
            state = self._agreements.get((run_id, other_run_id)) or AgreementState()
            shared = sorted(set(first_files) & set(second_files))
            old_first, old_second = state.seen
            for pid in shared:
                unchanged = old_first.get(pid) == first_files[pid] and old_second.get(pid) == second_files[pid]
                if unchanged and pid in state.prompts:
                    continue
                state.prompts[pid] = self._compare(pid, first_store, second_store)
            for pid in set(state.prompts) - set(shared):
                del state.prompts[pid]
            state.seen = (first_files, second_files)
            self._agreements[(run_id, other_run_id)] = state
            agreements = [state.prompts[pid] for pid in shared if pid in state.prompts]
        return agreement_view(
            run_id,
            other_run_id,
            agreements,
            only_first=len(set(first_files) - set(second_files)),
            only_second=len(set(second_files) - set(first_files)),
        )

    def _compare(self, prompt_id: str, first_store: RunStore, second_store: RunStore) -> PromptAgreement:
        matrices = []
        for store in (first_store, second_store):
            key = store.key("results", prompt_id)
            try:
                matrices.append(prompt_matrix(self.storage.get(key), key))
            except (NotFoundError, ResultFormatError) as exc:
                return PromptAgreement(prompt_id, 0, None, None, f"unreadable in {store.run_id}: {type(exc).__name__}")
        return compare_prompts(prompt_id, matrices[0], matrices[1], AGREEMENT_TOP_K)
