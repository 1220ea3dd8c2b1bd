"""`tokenlens import PATH`: bring the seed project's data into runs, staged, then committed.

Two layouts are read under PATH (mixed freely):

- the seed's Inseq tree, ``<MODEL>/method_<METHOD>/data/*_inseq.json``: files Inseq's
  ``FeatureAttributionOutput.save`` wrote, loaded with Inseq itself. Their tensors keep a dimension per
  embedding unit (gradient methods) or per layer and head (attention); ``--aggregation`` reduces those
  dimensions as the seed did: ``sum``, ``mean``, ``l2_norm`` (the vector norm) or ``max_abs`` (the value
  of largest magnitude, sign kept);
- TokenLens JSON of any revision, seed 1.x files included (any other ``*.json``), read by
  `tokenlens.result_codec`.

Each (model, method) becomes one run: ``--run-id`` itself when PATH holds one, else ``RUN_ID-<model>-<method>``.
A prompt's id is its file name (made safe, made unique). Every file is converted before anything is
written; a file that can't be read is listed with the reason and left out. Results are written first and
run.json last, so a run shows up only once all of its results are in: nothing is half-imported. An
existing run id is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storage_backends import Storage
from tokenlens.batch import PromptRecord, is_safe_id
from tokenlens.errors import TokenLensError
from tokenlens.result_codec import ResultFormatError, decode_result
from tokenlens.results import RunStore
from tokenlens.schema import TOKENLENS_FORMAT, AnalysisData, AnalysisMetadata, AnalysisResult, RunManifest, TokenInfo
from tokenlens.words import annotate_groups

AGGREGATIONS = ("sum", "mean", "l2_norm", "max_abs")
INSEQ_SUFFIX = "_inseq.json"


class SeedImportError(TokenLensError):
    """An import that can't start: nothing readable, an existing run, an unknown aggregation."""


def reduce_dimensions(tensor: np.ndarray, how: str) -> np.ndarray:
    """Reduce every dimension after the first two (embedding units; layers and heads) with `how`."""
    if how not in AGGREGATIONS:
        raise SeedImportError(f"unknown aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")
    array = np.nan_to_num(np.asarray(tensor, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    while array.ndim > 2:
        if how == "sum":
            array = array.sum(axis=-1)
        elif how == "mean":
            array = array.mean(axis=-1)
        elif how == "l2_norm":
            array = np.sqrt((array**2).sum(axis=-1))
        else:
            strongest = np.abs(array).argmax(axis=-1)
            array = np.take_along_axis(array, strongest[..., None], axis=-1)[..., 0]
    return array


def _tensor(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if hasattr(value, "detach"):
        return np.asarray(value.detach().to("cpu").float().numpy())
    return np.asarray(value, dtype=np.float64)


def inseq_file_to_result(path: Path, model: str, method: str, how: str) -> AnalysisResult:
    """One seed Inseq file as a TokenLens result (rows: generated tokens; columns: prompt, then generated)."""
    import inseq

    loaded = inseq.FeatureAttributionOutput.load(str(path))
    if not loaded.sequence_attributions:
        raise ValueError("the file holds no attributed sequence")
    sequence = loaded.sequence_attributions[0]
    source = [(int(t.id), str(t.token)) for t in sequence.source]
    target = [(int(t.id), str(t.token)) for t in sequence.target]
    start = int(sequence.attr_pos_start)
    generated = target[start:]
    raw = _tensor(sequence.target_attributions)
    if raw is None:
        raw = _tensor(sequence.source_attributions)
    if raw is None or raw.ndim < 2:
        raise ValueError("the file holds no attribution tensor")
    matrix = reduce_dimensions(raw, how)  # positions (prompt, then generated) x generation steps
    n_in, n_out = len(source), len(generated)
    scores = np.zeros((n_out, n_in + n_out))
    steps = min(n_out, matrix.shape[1])
    visible = np.arange(n_in + n_out)[None, :] < (n_in + np.arange(steps))[:, None]
    width = min(matrix.shape[0], n_in + n_out)
    scores[:steps, :width] = np.where(visible[:, :width], matrix[:width, :steps].T, 0.0)
    info = loaded.info or {}
    metadata = AnalysisMetadata(
        llm_id=str(info.get("model_name") or model),
        prompt="".join(_readable(token) for _id, token in source),
        attribution_method=str(info.get("attribution_method") or method),
        engine="inseq",
        method_params={"aggregation": how, "imported_from": "seed inseq"},
        generation_params={"max_new_tokens": n_out},
    )
    data = AnalysisData(
        input_tokens=[TokenInfo(token=t, token_id=i, clean_token=_readable(t)) for i, t in source],
        output_tokens=[TokenInfo(token=t, token_id=i, clean_token=_readable(t)) for i, t in generated],
        association_matrix=scores.tolist(),
    )
    return AnalysisResult(metadata=metadata, data=data)


def _readable(token: str) -> str:
    # Inseq files keep vocabulary strings only; without the tokenizer, show byte-level and SentencePiece
    # spaces and newlines as text (what `clean_token` holds in files TokenLens writes).
    return token.replace("\u0120", " ").replace("\u010a", "\n").replace("\u2581", " ")


@dataclass
class StagedRun:
    """One run to be written: its results in file order."""

    run_id: str
    model: str
    method: str
    results: list[AnalysisResult] = field(default_factory=list)


@dataclass
class ImportReport:
    runs: dict[str, int]
    skipped: dict[str, str]


def _safe_id(stem: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "-", stem.removesuffix("_inseq")).strip(".-_")[:100] or "prompt"
    if not base[0].isalnum():
        base = "p" + base
    candidate, number = base, 2
    while candidate in taken or not is_safe_id(candidate):
        candidate = f"{base}-{number}"
        number += 1
    taken.add(candidate)
    return candidate


def _seed_tree_names(path: Path) -> tuple[str, str] | None:
    """(model, method) of a file at ``<MODEL>/method_<METHOD>/data/<file>``, else None."""
    parts = path.parts
    if len(parts) >= 4 and parts[-2] == "data" and parts[-3].startswith("method_"):
        return parts[-4], parts[-3].removeprefix("method_")
    return None


def stage_import(root: Path, how: str = "sum") -> tuple[list[tuple[str, str, AnalysisResult]], dict[str, str]]:
    """Every readable file under `root` as (model, method, result); unreadable ones with their reason."""
    reduce_dimensions(np.zeros((1, 1)), how)  # an unknown aggregation fails before any file is read
    if not root.exists():
        raise SeedImportError(
            f"{root}: no such file or folder; pass the seed's data folder or a folder of JSON results"
        )
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if p.is_file())
    staged, skipped = [], {}
    for path in files:
        names = _seed_tree_names(path)
        try:
            if path.name.endswith(INSEQ_SUFFIX):
                model, method = names or ("unknown-model", "unknown")
                result = inseq_file_to_result(path, model, method, how)
            else:
                result = decode_result(path.read_bytes(), source=str(path))
            staged.append((path.stem, str(result.metadata.llm_id), annotate_groups(result)))
        except ResultFormatError as exc:
            skipped[str(path)] = str(exc).removeprefix(f"{path}: ")
        except Exception as exc:  # Inseq's loader raises anything; the file is listed with the reason
            skipped[str(path)] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return [(stem, model, result) for stem, model, result in staged], skipped


def import_runs(
    root: Path, storage: Storage, run_id: str, *, how: str = "sum", on_file: Callable[[], None] | None = None
) -> ImportReport:
    """Stage every file under `root`, then write one run per (model, method); see the module docstring."""
    staged, skipped = stage_import(root, how)
    if not staged:
        raise SeedImportError(f"{root}: no readable result files ({len(skipped)} unreadable); nothing was imported")
    groups: dict[tuple[str, str], list[tuple[str, AnalysisResult]]] = {}
    for stem, model, result in staged:
        groups.setdefault((model, result.metadata.attribution_method), []).append((stem, result))
    runs: dict[str, StagedRun] = {}
    for (model, method), items in groups.items():
        name = run_id if len(groups) == 1 else _safe_id(f"{run_id}-{model.rsplit('/', 1)[-1]}-{method}", set(runs))
        run = runs[name] = StagedRun(name, model, method)
        taken: set[str] = set()
        for stem, result in items:
            prompt_id = _safe_id(stem, taken)
            result.metadata.run_id, result.metadata.prompt_id = name, prompt_id
            result.metadata.tokenlens_format = TOKENLENS_FORMAT  # written in the current layout from now on
            run.results.append(result)
    for name in runs:
        if RunStore(storage, name).exists():
            raise SeedImportError(f"run {name!r} already exists under {storage.url}; pick another --run-id")
    for run in runs.values():
        _commit(storage, run, root, on_file)
    return ImportReport({name: len(run.results) for name, run in runs.items()}, skipped)


def _commit(storage: Storage, run: StagedRun, root: Path, on_file: Callable[[], None] | None) -> None:
    store = RunStore(storage, run.run_id)
    ids = []
    for result in run.results:
        store.write_result(result, "auto")
        ids.append(str(result.metadata.prompt_id))
        if on_file is not None:
            on_file()
    store.write_prompts([PromptRecord(id=str(r.metadata.prompt_id), prompt=r.metadata.prompt) for r in run.results])
    # run.json last: until it exists the run is not listed, so an interrupted import shows nothing.
    store.write_manifest(
        RunManifest(
            run_id=run.run_id,
            model=run.model,
            method=run.method,
            engine="inseq" if all(r.metadata.engine == "inseq" for r in run.results) else "native",
            prompt_count=len(ids),
            prompt_ids=ids,
            source=str(root),
            mode="imported",
        )
    )
