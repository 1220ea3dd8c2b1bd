"""process_batch: results written once, error records, retries and hand-back, on tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_backends import LocalStorage
from tokenlens import pipeline
from tokenlens.batch import BatchTask, PromptRecord
from tokenlens.engine.types import PromptFailure
from tokenlens.models import load_model
from tokenlens.pipeline import process_batch
from tokenlens.results import RunStore
from tokenlens.schema import AnalysisResult


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir: Path):  # type: ignore[no-untyped-def]
    return load_model(str(tiny_llama_dir), device="cpu")


def task(
    tmp_path: Path, prompts: list[PromptRecord], method: str = "saliency", engine: str = "auto", **extra: object
) -> BatchTask:
    return BatchTask(
        run_id="r1",
        results_url=str(tmp_path),
        model="tiny",
        method=method,
        engine=engine,
        max_new_tokens=3,
        prompts=prompts,
        **extra,  # type: ignore[arg-type]
    )


PROMPTS = [PromptRecord(id="a", prompt="Hello there"), PromptRecord(id="b", prompt="The quick brown fox")]


@pytest.mark.parametrize("engine", ["auto", "inseq"])
def test_results_are_valid_and_written_once(tiny_llama, tmp_path: Path, engine: str) -> None:  # type: ignore[no-untyped-def]
    report = process_batch(tiny_llama, task(tmp_path, PROMPTS, engine=engine))
    assert sorted(report.done) == ["a", "b"] and not report.failed and not report.retry
    store = RunStore(LocalStorage(tmp_path), "r1")
    for prompt_id in ("a", "b"):
        raw = (tmp_path / f"runs/r1/results/{prompt_id}.json").read_bytes()
        result = AnalysisResult.from_json_bytes(raw)
        assert result.metadata.prompt_id == prompt_id and result.metadata.run_id == "r1"
        assert result.metadata.engine == ("inseq" if engine == "inseq" else "native")
        assert all(t.probability is not None for t in result.data.output_tokens)
        assert store.has_result(prompt_id)
    assert (tmp_path / "runs/r1/inseq/a.json").exists() == (engine == "inseq")
    before = (tmp_path / "runs/r1/results/a.json").stat().st_mtime_ns
    again = process_batch(tiny_llama, task(tmp_path, PROMPTS, engine=engine))
    assert sorted(again.skipped) == ["a", "b"] and not again.done
    assert (tmp_path / "runs/r1/results/a.json").stat().st_mtime_ns == before


def test_too_long_prompt_is_an_error_record_and_the_rest_go_on(tiny_llama, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prompts = [PromptRecord(id="long", prompt="word " * 400), PromptRecord(id="ok", prompt="Hi")]
    report = process_batch(tiny_llama, task(tmp_path, prompts))
    assert report.done == ["ok"] and report.failed == ["long"]
    error = RunStore(LocalStorage(tmp_path), "r1").read_error("long")
    assert error.error_type == "PromptTooLongError" and "context window" in error.message


def test_failures_retry_until_max_attempts(tiny_llama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # The retry bookkeeping alone: an engine that fails this prompt transiently every time.
    def flaky_engine(loaded, prompts, *args):  # type: ignore[no-untyped-def]
        return [PromptFailure(p.prompt_id, "RuntimeError", "transient") for p in prompts]

    monkeypatch.setattr(pipeline, "run_engine", flaky_engine)
    bad = task(tmp_path, PROMPTS[:1])
    first = process_batch(tiny_llama, bad, attempts={"a": 1}, max_attempts=2)
    assert first.retry == ["a"] and not first.failed
    assert not (tmp_path / "runs/r1/errors/a.json").exists()
    last = process_batch(tiny_llama, bad, attempts={"a": 2}, max_attempts=2)
    assert last.failed == ["a"]
    assert RunStore(LocalStorage(tmp_path), "r1").read_error("a").attempts == 2


def test_out_of_range_attention_layer_is_a_permanent_error(tiny_llama, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = task(tmp_path, PROMPTS[:1], method="attention", engine="inseq", method_params={"layers": [99]})
    report = process_batch(tiny_llama, bad, attempts={"a": 1}, max_attempts=3)
    assert report.failed == ["a"]
    assert "out of range" in RunStore(LocalStorage(tmp_path), "r1").read_error("a").message


def test_should_stop_hands_back_unstarted_prompts(tiny_llama, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    def stop_after_first_group() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    report = process_batch(tiny_llama, task(tmp_path, PROMPTS), engine_batch_size=1, should_stop=stop_after_first_group)
    assert report.done == ["a"] and report.retry == ["b"]
    assert "handed back" in report.reasons["b"]


def test_second_architecture_gpt2(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(str(tiny_gpt2_dir), device="cpu")
    report = process_batch(loaded, task(tmp_path, PROMPTS, method="input_x_gradient"))
    assert sorted(report.done) == ["a", "b"]
    result = RunStore(LocalStorage(tmp_path), "r1").read_result("b")
    n_in = len(result.data.input_tokens)
    for i, row in enumerate(result.data.association_matrix):
        assert all(v == 0.0 for v in row[n_in + i :])
        assert max(abs(v) for v in result.data.normalized_association[i]) == pytest.approx(1.0)


def test_tokens_carry_spans_words_and_sentences_and_files_stay_seed_valid(tiny_llama, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    from tests.seed_validators import SeedAnalysisResult, ui_accepts
    from tokenlens.words import group_tokens

    prompts = [PromptRecord(id="w", prompt="Tokenizers split words. Then sentences!")]
    assert process_batch(tiny_llama, task(tmp_path, prompts, chat_template=True)).done == ["w"]
    raw = (tmp_path / "runs/r1/results/w.json").read_bytes()
    document = json.loads(raw)
    assert ui_accepts(document)
    SeedAnalysisResult.model_validate(document)
    result = AnalysisResult.from_json_bytes(raw)
    prompt, generated = result.metadata.prompt, result.metadata.generated_text
    assert generated is not None
    inputs = result.data.input_tokens
    covered = "".join(prompt[t.span[0] : t.span[1]] for t in inputs if t.span is not None)
    assert covered == prompt  # the prompt's tokens cover it exactly; template tokens have no span
    assert all(t.span is None for t in inputs if t.is_template) and any(t.is_template for t in inputs)
    outputs = result.data.output_tokens
    assert "".join(generated[t.span[0] : t.span[1]] for t in outputs if t.span is not None) == generated
    words = [g.text for g in group_tokens(inputs, prompt, "word") if not g.is_template]
    assert words == ["Tokenizers", " split", " words", ".", " Then", " sentences", "!"]
    sentence_of = {t.sentence for t in inputs if not t.is_template}
    assert len(sentence_of) == 2 and all(t.word is not None for t in [*inputs, *outputs])


def test_input_spans_come_from_the_offsets_tokenized_with_the_prompt(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    import numpy as np

    from tokenlens.engine.types import AttributionOutput, PromptInput
    from tokenlens.tokenization import encode_text, prepare_prompt

    record = PromptRecord(id="s", prompt="Offsets travel with the prompt")
    prompt = prepare_prompt(tiny_llama, record, chat_template=True, max_new_tokens=2)
    assert (prompt.input_ids, prompt.offsets) == encode_text(tiny_llama.tokenizer, prompt.model_text)
    output = AttributionOutput(
        prompt_id="s", input_ids=prompt.input_ids, output_ids=[5, 6], engine="native",
        scores=np.zeros((2, len(prompt.input_ids) + 2)), token_probabilities=[0.5, 0.5],
    )  # fmt: skip

    def input_spans(prepared: PromptInput) -> list[list[int] | None]:
        result = pipeline.build_result(
            tiny_llama, record, prepared, output, method="saliency", run_id="r1", generation_params={}
        )
        return [t.span for t in result.data.input_tokens]

    spans = input_spans(prompt)
    assert "".join(record.prompt[s[0] : s[1]] for s in spans if s is not None) == record.prompt
    # Offsets one character later give spans one character later: they are used, not tokenized again.
    assert prompt.offsets is not None
    later = dataclasses.replace(prompt, offsets=[(start + 1, end + 1) for start, end in prompt.offsets])
    moved = input_spans(later)
    end = len(record.prompt)
    assert moved == [None if s is None else [min(s[0] + 1, end), min(s[1] + 1, end)] for s in spans]
