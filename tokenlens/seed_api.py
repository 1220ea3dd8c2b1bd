"""The seed project's Python API, on top of the TokenLens pipeline.

    from tokenlens import ModelManager, TokenAnalyzer, TokenAnalysisStorage, visualize

    manager = ModelManager.initialize({"llm_id": "smollm2-135m-instruct", "device": "auto", "torch_dtype": "float32"})
    storage = TokenAnalysisStorage(base_path="output")            # a directory or s3://bucket/prefix
    analyze = TokenAnalyzer(manager).create_analysis_pipeline(storage)
    result = analyze("Your prompt here")                           # or a list of prompts
    visualize(result, storage=storage)

Results are stored in the same layout as `tokenlens run` (runs/<run_id>/... with run.json and
prompts.jsonl), one run per analyzer setting, so `tokenlens ui` and `tokenlens fetch` see them
and a stored result is reused only by the settings that made it.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, overload

from storage_backends import Storage, open_storage
from tokenlens import defaults
from tokenlens.batch import PromptRecord, check_safe_id
from tokenlens.engine.options import CONTRASTIVE_FNS
from tokenlens.engine.registry import resolve_engine, validate_options
from tokenlens.errors import TokenLensError
from tokenlens.models import LoadedModel, load_model
from tokenlens.pipeline import BatchReport, process_batch
from tokenlens.plan import RESUME_IDENTITY, identity_mismatch
from tokenlens.progress import start_record
from tokenlens.result_codec import FORMAT_CHOICES, decode_result
from tokenlens.results import RunStore
from tokenlens.schema import AnalysisResult
from tokenlens.spec import RunSpec, build_batches

DEFAULT_API_RUN_ID = "notebook"


class ModelManager:
    """A loaded model and tokenizer (`.model`, `.tokenizer`), made from the seed's config dict."""

    def __init__(self, loaded: LoadedModel, config: dict[str, Any]) -> None:
        self.loaded = loaded
        self.config = dict(config)

    @classmethod
    def initialize(cls, config: dict[str, Any]) -> ModelManager:
        """Load the model named by `config["llm_id"]` (alias, hub id, directory or .gguf).

        Keys: llm_id, device (auto|cpu|cuda|cuda:N; "mps" is not supported), torch_dtype
        (float32|float16|bfloat16).
        """
        unknown = sorted(set(config) - {"llm_id", "device", "torch_dtype"})
        if unknown:
            raise TokenLensError(
                f"unknown ModelManager config key(s) {', '.join(unknown)}; use llm_id, device, torch_dtype"
            )
        loaded = load_model(
            config.get("llm_id", defaults.MODEL),
            device=config.get("device", defaults.DEVICE),
            dtype=config.get("torch_dtype", defaults.DTYPE),
        )
        return cls(loaded, config)

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def llm_id(self) -> str:
        return self.loaded.model_id


class TokenAnalysisStorage:
    """Where analyses go: a results directory or URL, and how results are written ("auto", "json", "compact").

    Each analyzer setting gets a run of its own under `base_path` (``notebook-<method>-<digest>``, the digest of
    model, method, engine, options, generation parameters, chat template, dtype and format), so a stored result
    is only ever reused by the same settings. Pass `run_id` to name the run yourself; it must then always be
    used with the same settings. A run's run.json is written once, when the run is created.
    """

    def __init__(
        self,
        base_path: str | Path = "output",
        format: str = defaults.RESULT_FORMAT,
        run_id: str | None = None,
    ):
        if format not in FORMAT_CHOICES:
            raise TokenLensError(f"unsupported storage format {format!r}; use one of {', '.join(FORMAT_CHOICES)}")
        if run_id is not None:
            check_safe_id("run id", run_id)
        self.base_path = str(base_path)
        self.result_format = format
        self.storage: Storage = open_storage(self.base_path)
        self.fixed_run_id = run_id
        #: The run the last analysis went to: `load`, `list_prompt_ids` and `save_bytes` default to it.
        self.last_run_id: str | None = run_id
        #: Prompt ids known to be in each run's prompts.jsonl (read once, then kept up to date here).
        self._known_prompts: dict[str, dict[str, PromptRecord]] = {}

    @property
    def run_id(self) -> str | None:
        """The run the last analysis went to (or the one named at construction); None before any."""
        return self.last_run_id

    def _run(self, run_id: str | None) -> RunStore:
        chosen = run_id or self.last_run_id
        if chosen is None:
            raise TokenLensError(
                "no run yet: analyze something with this storage first, or pass run_id= (a result's "
                "metadata.run_id names its run)"
            )
        return RunStore(self.storage, chosen)

    def prepare_run(self, spec: RunSpec, records: list[PromptRecord]) -> RunStore:
        """The run for `spec`: created with run.json on first use, else checked to hold the same settings.

        `records` are added to the run's prompts.jsonl (only when some are new), so the UI shows them by text.
        """
        store = RunStore(self.storage, spec.run_id)
        manifest = spec.manifest([record.id for record in records], mode="api")
        if spec.run_id not in self._known_prompts:
            if store.exists():
                mismatch = identity_mismatch(store.read_manifest(), manifest)
                if mismatch is not None:
                    raise TokenLensError(
                        f"run {spec.run_id!r} under {self.storage.url} holds results made with {mismatch}; "
                        "leave run_id unset (each setting then gets a run of its own) or pass another run_id"
                    )
                self._known_prompts[spec.run_id] = store.read_prompts()
            else:
                store.write_prompts(records)
                start_record(store, manifest)  # counts come from the progress record, never a listing
                store.write_manifest(manifest)  # last: a run is listed once it is whole
                self._known_prompts[spec.run_id] = {record.id: record for record in records}
        known = self._known_prompts[spec.run_id]
        new = [record for record in records if record.id not in known]
        if new:
            # Read again before adding: another process may have added prompts to the same run meanwhile.
            known.update(store.read_prompts())
            known.update({record.id: record for record in new})
            store.write_prompts(list(known.values()))
        self.last_run_id = spec.run_id
        return store

    def save(self, result: AnalysisResult) -> str:
        """Store a result in its run (create-only) and return its key."""
        store = self._run(result.metadata.run_id)
        store.write_result(result, self.result_format)
        return store.key("results", result.metadata.prompt_id or "")

    def load(self, prompt_id: str | Path, run_id: str | None = None) -> AnalysisResult:
        """A stored result by prompt id (in `run_id`, default the last run), or any result file by its path.

        Files of every TokenLens format and revision and the seed project's files all load
        (`tokenlens.result_codec.decode_result`).
        """
        path = Path(prompt_id)
        if isinstance(prompt_id, Path) or len(path.parts) > 1 or path.suffix == ".json":
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise TokenLensError(f"can't read result file {path}: {exc.strerror}") from None
            return decode_result(raw, source=str(path))
        return self._run(run_id).read_result(str(prompt_id))

    def list_prompt_ids(self, run_id: str | None = None) -> list[str]:
        return sorted(self._run(run_id).ids("results"))

    def save_bytes(self, key: str, data: bytes, run_id: str | None = None) -> str:
        """Store an extra file (a PNG) under a run (default the last one); returns its key."""
        full_key = f"{self._run(run_id).prefix}{key}"
        self.storage.put(full_key, data, content_type=mimetypes.guess_type(key)[0])
        return full_key


def prompt_id_for(text: str, contrast_target: str | None = None) -> str:
    """A stable id for an API prompt: the same text (and contrast target) maps to the same result file."""
    key = text if contrast_target is None else json.dumps([text, contrast_target])
    return "p-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _contrasts_for(texts: list[str], contrast_targets: str | list[str] | None, attributed_fn: Any) -> list[str | None]:
    """One contrast target per prompt (None without); a contrastive function needs them all."""
    if contrast_targets is None:
        if attributed_fn in CONTRASTIVE_FNS:
            raise TokenLensError(
                f"attributed function {attributed_fn} compares against a contrast target: "
                "pass analyze(..., contrast_targets=...) with one per prompt"
            )
        return [None] * len(texts)
    given = [contrast_targets] if isinstance(contrast_targets, str) else list(contrast_targets)
    if len(given) != len(texts) or not all(isinstance(c, str) and c for c in given):
        raise TokenLensError(
            f"contrast_targets must be one non-empty string per prompt ({len(texts)}), got {len(given)}"
        )
    return list(given)


def api_run_id(spec: RunSpec) -> str:
    """The run of the seed API's results for `spec`'s settings: ``notebook-<method>-<digest of the settings>``."""
    manifest = spec.manifest([], mode="api")
    identity = {name: getattr(manifest, name) for name in RESUME_IDENTITY}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    return f"{DEFAULT_API_RUN_ID}-{spec.method.replace('_', '-')}-{digest[:10]}"


class TokenAnalyzer:
    """Attribute prompts with one method; TokenLens's native engine where the method has one."""

    engine = defaults.ENGINE

    def __init__(
        self,
        manager: ModelManager,
        method: str = defaults.METHOD,
        generation_params: dict[str, Any] | None = None,
        chat_template: bool = defaults.CHAT_TEMPLATE,
        method_params: dict[str, Any] | None = None,
    ) -> None:
        self.manager = manager
        self.method = method
        self.generation_params = dict(generation_params or {"max_new_tokens": defaults.MAX_NEW_TOKENS})
        self.chat_template = chat_template
        self.resolved_engine = resolve_engine(method, self.engine)
        self.method_params = validate_options(method, method_params or {})

    def spec_for(self, storage: TokenAnalysisStorage) -> RunSpec:
        """This analyzer's settings as the run spec of its run in `storage` (`api_run_id` unless it names one)."""
        params = dict(self.generation_params)
        max_new_tokens = int(params.pop("max_new_tokens", defaults.MAX_NEW_TOKENS))
        spec = RunSpec(
            run_id=storage.fixed_run_id or DEFAULT_API_RUN_ID, model=self.manager.llm_id,
            results_url=storage.base_path, method=self.method, engine=self.engine,
            method_params=self.method_params, max_new_tokens=max_new_tokens, generation_params=params,
            chat_template=self.chat_template, dtype=self.manager.loaded.dtype, result_format=storage.result_format,
        )  # fmt: skip
        return spec if storage.fixed_run_id else replace(spec, run_id=api_run_id(spec))

    @overload
    def analyze(
        self, prompts: str, storage: TokenAnalysisStorage | None = None, *, contrast_targets: str | None = None
    ) -> AnalysisResult: ...
    @overload
    def analyze(
        self,
        prompts: list[str],
        storage: TokenAnalysisStorage | None = None,
        *,
        contrast_targets: list[str] | None = None,
    ) -> list[AnalysisResult]: ...

    def analyze(
        self,
        prompts: str | list[str],
        storage: TokenAnalysisStorage | None = None,
        *,
        contrast_targets: str | list[str] | None = None,
    ) -> AnalysisResult | list[AnalysisResult]:
        """Attribute one prompt or a list; with `storage`, each result is also stored.

        `contrast_targets` (one per prompt) are the alternative continuations a contrastive attributed
        function (`method_params={"attributed_fn": "contrast_prob"}`) compares against.
        """
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        contrasts = _contrasts_for(texts, contrast_targets, self.method_params.get("attributed_fn"))
        ids = [prompt_id_for(text, contrast) for text, contrast in zip(texts, contrasts, strict=True)]
        records = list(
            {
                prompt_id: PromptRecord(id=prompt_id, prompt=text, contrast_target=contrast)
                for prompt_id, text, contrast in zip(ids, texts, contrasts, strict=True)
            }.values()
        )
        target = storage or TokenAnalysisStorage(base_path=_scratch_dir())
        spec = self.spec_for(target)
        store = target.prepare_run(spec, records)
        report = BatchReport()
        for task in build_batches(spec, records, max(len(records), 1)):
            report.merge(process_batch(self.manager.loaded, task, storage=target.storage, max_attempts=1))
        by_id = _collect(report, store, spec)
        results = [by_id[prompt_id] for prompt_id in ids]
        return results[0] if isinstance(prompts, str) else results

    def create_analysis_pipeline(
        self, storage: TokenAnalysisStorage
    ) -> Callable[[str | list[str]], AnalysisResult | list[AnalysisResult]]:
        """The seed's `analyze(prompt_or_prompts)`: attribute, store, and return the result model(s)."""

        def analyze(prompts: str | list[str]) -> AnalysisResult | list[AnalysisResult]:
            return self.analyze(prompts, storage=storage)

        return analyze


def _collect(report: BatchReport, store: RunStore, spec: RunSpec) -> dict[str, AnalysisResult]:
    """Results of this call, plus ones already stored for the same prompt by the same settings; errors raise."""
    found = dict(report.results)
    for prompt_id in report.skipped:
        found[prompt_id] = _same_settings(store.read_result(prompt_id), spec)
    problems = [f"{pid}: {report.reasons.get(pid, 'failed')}" for pid in report.failed + report.retry]
    if problems:
        raise TokenLensError("attribution failed for " + "; ".join(problems))
    return found


def _same_settings(result: AnalysisResult, spec: RunSpec) -> AnalysisResult:
    """`result` if the stored file says it was made with `spec`'s settings, else a `TokenLensError`.

    The run's identity already guarantees it for runs this version wrote; this catches runs an older
    TokenLens shared between settings (its "notebook" run), so another method's numbers are never returned.
    """
    metadata = result.metadata
    expected = {
        "method": (metadata.attribution_method, spec.method),
        "model": (metadata.llm_id, spec.model),
        "generation parameters": (metadata.generation_params, spec.recorded_generation_params()),
        "dtype": (metadata.dtype, spec.dtype),
        "attributed function": (metadata.method_params.get("attributed_fn"), spec.method_params.get("attributed_fn")),
    }
    for what, (stored, wanted) in expected.items():
        if stored != wanted:
            raise TokenLensError(
                f"run {spec.run_id!r} holds a result for prompt {metadata.prompt_id!r} made with {what} "
                f"{stored!r}, not {wanted!r}; use another run_id (or leave it unset) to compute it with these settings"
            )
    return result


def _scratch_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="tokenlens-")


class InseqTokenAnalyzer(TokenAnalyzer):
    """Attribute prompts with any Inseq method; Inseq's native output is stored beside each result."""

    engine = "inseq"

    def __init__(
        self,
        manager: ModelManager,
        attribution_method: str = defaults.METHOD,
        generation_params: dict[str, Any] | None = None,
        chat_template: bool = defaults.CHAT_TEMPLATE,
        method_params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(manager, attribution_method, generation_params, chat_template, method_params)

    @staticmethod
    def load_native_inseq(path: str | Path) -> Any:
        """Load an Inseq `FeatureAttributionOutput` saved by TokenLens (runs/<id>/inseq/<prompt_id>.json)."""
        import inseq

        return inseq.FeatureAttributionOutput.load(str(path))

    @staticmethod
    def convert_native_to_analysis_result(
        path: str | Path, prompt: str, llm_id: str | None = None, tokenizer: Any = None
    ) -> AnalysisResult:
        """Turn a stored native Inseq file back into TokenLens JSON (the same conversion the pipeline uses)."""
        from tokenlens.engine.inseq_engine import inseq_output_to_attribution
        from tokenlens.pipeline import clean_scores
        from tokenlens.schema import AnalysisData, AnalysisMetadata, TokenInfo, normalize_rows

        native = InseqTokenAnalyzer.load_native_inseq(path)
        info = native.info or {}
        converted = inseq_output_to_attribution(native, prompt_id=Path(path).stem, options={})
        sequence = native.sequence_attributions[0]
        tokens = [t.token for t in sequence.target]
        n_in = len(converted.input_ids)

        def info_for(index: int, token_id: int) -> TokenInfo:
            text = (
                tokenizer.decode([token_id])
                if tokenizer is not None
                else tokens[index].replace("Ġ", " ").replace("Ċ", "\n")
            )
            return TokenInfo(token=tokens[index], token_id=token_id, clean_token=text)

        association = clean_scores(converted.scores, n_in)
        return AnalysisResult(
            metadata=AnalysisMetadata(
                llm_id=llm_id or str(info.get("model_name", "unknown")),
                prompt=prompt,
                attribution_method=str(info.get("attribution_method", "unknown")),
                generation_params=dict(info.get("generation_args") or {}),
                prompt_id=Path(path).stem,
                engine="inseq",
            ),
            data=AnalysisData(
                input_tokens=[info_for(i, t) for i, t in enumerate(converted.input_ids)],
                output_tokens=[info_for(n_in + k, t) for k, t in enumerate(converted.output_ids)],
                association_matrix=association,
                normalized_association=normalize_rows(association),
            ),
        )
