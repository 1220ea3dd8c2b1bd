"""The seed project's Python API, on top of the TokenLens pipeline.

    from tokenlens import ModelManager, TokenAnalyzer, TokenAnalysisStorage, visualize

    manager = ModelManager.initialize({"llm_id": "smollm2-135m-instruct", "device": "auto", "torch_dtype": "float32"})
    storage = TokenAnalysisStorage(base_path="output")            # a directory or s3://bucket/prefix
    analyze = TokenAnalyzer(manager).create_analysis_pipeline(storage)
    result = analyze("Your prompt here")                           # or a list of prompts
    visualize(result, storage=storage)

Results are stored in the same layout as `tokenlens run` (runs/<run_id>/...),
so `tokenlens ui` and `tokenlens fetch` see them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, overload

from storage_backends import Storage, open_storage
from tokenlens import defaults
from tokenlens.batch import PromptRecord
from tokenlens.engine.registry import resolve_engine, validate_options
from tokenlens.errors import TokenLensError
from tokenlens.models import LoadedModel, load_model
from tokenlens.pipeline import BatchReport, process_batch
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
    """Where analyses go: a results directory or URL, one run inside it (default run id "notebook")."""

    def __init__(self, base_path: str | Path = "output", format: str = "json", run_id: str = DEFAULT_API_RUN_ID):
        if format != "json":
            raise TokenLensError(f"unsupported storage format {format!r}; TokenLens stores JSON")
        self.base_path = str(base_path)
        self.storage: Storage = open_storage(self.base_path)
        self.run = RunStore(self.storage, run_id)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def ensure_manifest(self, spec: RunSpec) -> None:
        """Create or refresh run.json so that the UI and `tokenlens runs` list this run."""
        done = self.run.ids("results") | self.run.ids("errors")
        previous = self.run.read_manifest() if self.run.exists() else None
        ids = sorted(done | set(previous.prompt_ids if previous else []))
        created_at = previous.created_at if previous else None
        self.run.write_manifest(spec.manifest(ids, mode="api", created_at=created_at))

    def save(self, result: AnalysisResult) -> str:
        """Store a result (create-only) and return its key."""
        self.run.write_result(result)
        return self.run.key("results", result.metadata.prompt_id or "")

    def load(self, prompt_id: str) -> AnalysisResult:
        return self.run.read_result(prompt_id)

    def list_prompt_ids(self) -> list[str]:
        return sorted(self.run.ids("results"))

    def save_bytes(self, key: str, data: bytes) -> str:
        """Store an extra file (a PNG) under this run; returns its key."""
        full_key = f"{self.run.prefix}{key}"
        self.storage.put(full_key, data)
        return full_key


def prompt_id_for(text: str) -> str:
    """A stable id for an API prompt: the same text maps to the same result file."""
    return "p-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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

    def spec_for(self, run_id: str, results_url: str) -> RunSpec:
        """This analyzer's settings as the run spec of `run_id` under `results_url`."""
        params = dict(self.generation_params)
        max_new_tokens = int(params.pop("max_new_tokens", defaults.MAX_NEW_TOKENS))
        return RunSpec(
            run_id=run_id, model=self.manager.llm_id, results_url=results_url, method=self.method,
            engine=self.engine, method_params=self.method_params, max_new_tokens=max_new_tokens,
            generation_params=params, chat_template=self.chat_template, dtype=self.manager.loaded.dtype,
        )  # fmt: skip

    @overload
    def analyze(self, prompts: str, storage: TokenAnalysisStorage | None = None) -> AnalysisResult: ...
    @overload
    def analyze(self, prompts: list[str], storage: TokenAnalysisStorage | None = None) -> list[AnalysisResult]: ...

    def analyze(
        self, prompts: str | list[str], storage: TokenAnalysisStorage | None = None
    ) -> AnalysisResult | list[AnalysisResult]:
        """Attribute one prompt or a list; with `storage`, each result is also stored."""
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        records = [PromptRecord(id=prompt_id_for(text), prompt=text) for text in dict.fromkeys(texts)]
        target = storage or TokenAnalysisStorage(base_path=_scratch_dir())
        spec = self.spec_for(target.run_id, results_url=target.base_path)
        if storage is not None:
            storage.ensure_manifest(spec)
        report = BatchReport()
        for task in build_batches(spec, records, max(len(records), 1)):
            report.merge(process_batch(self.manager.loaded, task, storage=target.storage, max_attempts=1))
        if storage is not None:
            storage.ensure_manifest(spec)
        by_id = _collect(report, target)
        results = [by_id[prompt_id_for(text)] for text in texts]
        return results[0] if isinstance(prompts, str) else results

    def create_analysis_pipeline(
        self, storage: TokenAnalysisStorage
    ) -> Callable[[str | list[str]], AnalysisResult | list[AnalysisResult]]:
        """The seed's `analyze(prompt_or_prompts)`: attribute, store, and return the result model(s)."""

        def analyze(prompts: str | list[str]) -> AnalysisResult | list[AnalysisResult]:
            return self.analyze(prompts, storage=storage)

        return analyze


def _collect(report: BatchReport, storage: TokenAnalysisStorage) -> dict[str, AnalysisResult]:
    """Results of this call, plus ones already stored for the same prompt text; errors raise."""
    found = dict(report.results)
    for prompt_id in report.skipped:
        found[prompt_id] = storage.load(prompt_id)
    problems = [f"{pid}: {report.reasons.get(pid, 'failed')}" for pid in report.failed + report.retry]
    if problems:
        raise TokenLensError("attribution failed for " + "; ".join(problems))
    return found


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
