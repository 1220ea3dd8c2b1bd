"""The seed API reuses a stored result only for the settings that made it, and keeps its runs like the CLI does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.seed_validators import SeedAnalysisResult, ui_accepts
from tokenlens import InseqTokenAnalyzer, ModelManager, TokenAnalysisStorage, TokenAnalyzer
from tokenlens.errors import TokenLensError
from tokenlens.results import RunStore
from tokenlens.schema import RunManifest

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def manager(tiny_llama_dir: Path) -> ModelManager:
    return ModelManager.initialize({"llm_id": str(tiny_llama_dir), "device": "cpu", "torch_dtype": "float32"})


def run_dir(base: Path, run_id: str | None) -> Path:
    assert run_id is not None
    return base / "runs" / run_id


def manifest_of(base: Path, run_id: str | None) -> RunManifest:
    return RunManifest.model_validate_json((run_dir(base, run_id) / "run.json").read_bytes())


def prompts_of(base: Path, run_id: str | None) -> list[dict[str, str]]:
    lines = (run_dir(base, run_id) / "prompts.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line]


def test_another_method_on_the_same_storage_gets_its_own_numbers_and_run(manager, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storage = TokenAnalysisStorage(base_path=tmp_path)
    params = {"max_new_tokens": 3}
    saliency = TokenAnalyzer(manager, method="saliency", generation_params=params).create_analysis_pipeline(storage)
    first = saliency(PROMPT)
    other = TokenAnalyzer(manager, method="input_x_gradient", generation_params=params)
    second = other.create_analysis_pipeline(storage)(PROMPT)

    assert first.metadata.attribution_method == "saliency"
    assert second.metadata.attribution_method == "input_x_gradient"
    assert first.metadata.run_id != second.metadata.run_id
    assert second.data.association_matrix != first.data.association_matrix
    # Each run.json still tells what its run holds; each run keeps its prompt set like the CLI's runs.
    assert manifest_of(tmp_path, first.metadata.run_id).method == "saliency"
    assert manifest_of(tmp_path, second.metadata.run_id).method == "input_x_gradient"
    for result in (first, second):
        assert prompts_of(tmp_path, result.metadata.run_id) == [{"id": result.metadata.prompt_id, "prompt": PROMPT}]
        # The API's files pass both of the seed project's validators, unchanged.
        stored = run_dir(tmp_path, result.metadata.run_id) / "results" / f"{result.metadata.prompt_id}.json"
        document = json.loads(stored.read_bytes())
        assert ui_accepts(document)
        SeedAnalysisResult.model_validate(document)

    # The same settings again reuse the stored result (not recomputed: the timestamp is the stored one).
    again = saliency(PROMPT)
    assert again.metadata.run_id == first.metadata.run_id and again.metadata.timestamp == first.metadata.timestamp
    assert again.data.association_matrix == first.data.association_matrix


def test_generation_parameters_and_format_are_part_of_the_identity(manager, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storage = TokenAnalysisStorage(base_path=tmp_path)
    short = TokenAnalyzer(manager, generation_params={"max_new_tokens": 2}).analyze(PROMPT, storage)
    longer = TokenAnalyzer(manager, generation_params={"max_new_tokens": 4}).analyze(PROMPT, storage)
    assert short.metadata.run_id != longer.metadata.run_id
    assert len(short.data.output_tokens) == 2 and len(longer.data.output_tokens) == 4
    compact = TokenAnalysisStorage(base_path=tmp_path, format="compact")
    packed = TokenAnalyzer(manager, generation_params={"max_new_tokens": 2}).analyze(PROMPT, compact)
    assert packed.metadata.run_id not in (short.metadata.run_id, longer.metadata.run_id)
    assert manifest_of(tmp_path, packed.metadata.run_id).result_format == "compact"
    stored = run_dir(tmp_path, packed.metadata.run_id) / "results" / f"{packed.metadata.prompt_id}.json"
    assert stored.read_bytes()[:2] == b"\x1f\x8b"  # gzip: the compact format
    assert compact.load(packed.metadata.prompt_id or "").data.output_tokens == packed.data.output_tokens


def test_run_json_is_written_once_and_prompts_grow_with_new_prompts(manager, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storage = TokenAnalysisStorage(base_path=tmp_path)
    analyze = TokenAnalyzer(manager, generation_params={"max_new_tokens": 2}).create_analysis_pipeline(storage)
    first = analyze("one")
    manifest_path = run_dir(tmp_path, first.metadata.run_id) / "run.json"
    written = manifest_path.read_bytes()
    stamp = manifest_path.stat().st_mtime_ns
    analyze(["two", "one"])
    analyze("three")
    assert manifest_path.read_bytes() == written and manifest_path.stat().st_mtime_ns == stamp
    assert [record["prompt"] for record in prompts_of(tmp_path, first.metadata.run_id)] == ["one", "two", "three"]
    assert len(storage.list_prompt_ids()) == 3


def test_a_named_run_refuses_other_settings(manager, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storage = TokenAnalysisStorage(base_path=tmp_path, run_id="mine")
    TokenAnalyzer(manager, generation_params={"max_new_tokens": 2}).analyze(PROMPT, storage)
    other = TokenAnalyzer(manager, method="input_x_gradient", generation_params={"max_new_tokens": 2})
    with pytest.raises(TokenLensError, match=r"run 'mine' .* method='saliency', not 'input_x_gradient'"):
        other.analyze(PROMPT, TokenAnalysisStorage(base_path=tmp_path, run_id="mine"))


def test_a_shared_run_from_an_older_version_never_returns_another_methods_numbers(manager, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Older TokenLens kept every API result in one "notebook" run and rewrote run.json to the last method.
    storage = TokenAnalysisStorage(base_path=tmp_path, run_id="notebook")
    saliency = TokenAnalyzer(manager, generation_params={"max_new_tokens": 2})
    stored = saliency.analyze(PROMPT, storage)
    store = RunStore(storage.storage, "notebook")
    attention = TokenAnalyzer(manager, method="attention", generation_params={"max_new_tokens": 2})
    store.write_manifest(attention.spec_for(storage).manifest([stored.metadata.prompt_id or ""], mode="api"))
    with pytest.raises(TokenLensError, match=r"prompt 'p-[0-9a-f]+' made with method 'saliency', not 'attention'"):
        attention.analyze(PROMPT, TokenAnalysisStorage(base_path=tmp_path, run_id="notebook"))


def test_load_without_a_run_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(TokenLensError, match="no run yet"):
        TokenAnalysisStorage(base_path=tmp_path).load("p-0")
    with pytest.raises(TokenLensError, match="can't read result file"):
        TokenAnalysisStorage(base_path=tmp_path).load(tmp_path / "missing.json")


@pytest.mark.slow
def test_readme_pattern_saliency_then_inseq_attention(manager, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The README's example: the Inseq analyzer on the same storage computes attention, not the stored saliency."""
    storage = TokenAnalysisStorage(base_path=tmp_path)
    saliency = TokenAnalyzer(manager, generation_params={"max_new_tokens": 3}).create_analysis_pipeline(storage)(PROMPT)
    inseq = InseqTokenAnalyzer(manager, attribution_method="attention", generation_params={"max_new_tokens": 3})
    attention = inseq.create_analysis_pipeline(storage)(PROMPT)
    assert attention.metadata.attribution_method == "attention" and attention.metadata.engine == "inseq"
    assert attention.metadata.run_id != saliency.metadata.run_id
    assert attention.data.association_matrix != saliency.data.association_matrix
    assert manifest_of(tmp_path, saliency.metadata.run_id).method == "saliency"
    native = run_dir(tmp_path, attention.metadata.run_id) / "inseq" / f"{attention.metadata.prompt_id}.json"
    assert native.is_file()
