"""Every method `tokenlens methods` lists as runnable runs: `tokenlens run` on a tiny random GPT-2 writes a valid
TokenLens file for it (and, where Inseq ran, Inseq's native file, which converts back to the same matrix). The
methods it refuses are not listed as runnable, say why, and are refused before any model loads; the refusals'
stated reasons are checked against the installed Inseq, so a refusal that no longer holds fails here.

Kept short (3 prompt words, 2 new tokens); LIME alone takes tens of seconds on CPU, so it is slow-marked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_runner import run_tokenlens
from tests.seed_validators import SeedAnalysisResult, ui_accepts
from tokenlens.engine.registry import REFUSED_INSEQ_METHODS, list_methods, refusal_reason, runnable_methods
from tokenlens.models import LoadedModel, load_model
from tokenlens.result_codec import decode_result
from tokenlens.seed_api import InseqTokenAnalyzer

PROMPT = "Paris is the"
NEW_TOKENS = 2
#: Methods that take tens of seconds even on the tiny model.
SLOW = {"lime"}


def runnable_method_engines() -> list[object]:
    cases: list[object] = []
    for spec in runnable_methods():
        for engine in spec.engines:
            marks = [pytest.mark.slow] if spec.name in SLOW else []
            cases.append(pytest.param(spec.name, engine, id=f"{spec.name}-{engine}", marks=marks))
    return cases


def methods_listing(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], dict[str, str]]:
    """(runnable names, {refused name: reason}) as `tokenlens methods` prints them."""
    code, out, _ = run_tokenlens(["methods"], capsys)
    assert code == 0
    lines = out.splitlines()
    split = lines.index("not runnable here:") if "not runnable here:" in lines else len(lines)
    runnable = [line.split()[0] for line in lines[:split]]
    refused = dict(line.strip().split(maxsplit=1) for line in lines[split + 1 :])
    return runnable, refused


def test_methods_lists_runnable_ones_and_says_why_the_others_are_not(capsys: pytest.CaptureFixture[str]) -> None:
    runnable, refused = methods_listing(capsys)
    assert runnable == [spec.name for spec in runnable_methods()]
    assert set(runnable) | set(refused) == {spec.name for spec in list_methods()}
    assert not set(runnable) & set(refused)
    for name, reason in refused.items():
        assert reason == refusal_reason(name)
    assert {"dummy", "layer_deeplift", "layer_integrated_gradients", "value_zeroing"} <= set(refused)
    # scikit-learn is a dependency now: the methods that need it are runnable.
    assert {"lime", "discretized_integrated_gradients"} <= set(runnable)


@pytest.mark.parametrize("method", sorted({*REFUSED_INSEQ_METHODS, "reagent"}))
def test_a_refused_method_is_refused_with_its_reason_before_any_model_loads(
    method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = refusal_reason(method)
    if reason is None:
        pytest.skip(f"{method} is runnable here (its requirements are installed), so there is no refusal to check")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p", "prompt": PROMPT}) + "\n")
    results = tmp_path / "results"
    code, _, err = run_tokenlens(["run", str(prompts), "--method", method, "--results", str(results)], capsys)
    assert code == 2
    assert f"method {method!r} can't run here: {reason}" in err
    assert not results.exists()


@pytest.mark.parametrize(("method", "engine"), runnable_method_engines())
def test_every_listed_method_writes_a_valid_file(
    method: str, engine: str, tiny_gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p", "prompt": PROMPT}) + "\n")
    results = tmp_path / "results"
    options = ["--n-steps", "4"] if "integrated" in method else []
    code, out, err = run_tokenlens(
        [
            "run", str(prompts), "--model", str(tiny_gpt2_dir), "--method", method, "--engine", engine,
            "--results", str(results), "--run-id", "r", "--max-new-tokens", str(NEW_TOKENS), "--no-chat",
            "--format", "json", *options,
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, out + err
    run_dir = results / "runs" / "r"
    raw = (run_dir / "results" / "p.json").read_bytes()
    result = decode_result(raw)
    assert result.metadata.attribution_method == method
    assert result.metadata.engine == engine
    n_in, n_out = len(result.data.input_tokens), len(result.data.output_tokens)
    assert n_in >= 3 and 1 <= n_out <= NEW_TOKENS
    matrix = np.array(result.data.association_matrix)
    assert matrix.shape == (n_out, n_in + n_out)
    assert np.isfinite(matrix).all()
    for i in range(n_out):
        assert np.all(matrix[i, n_in + i :] == 0.0)
    assert np.any(matrix != 0.0)  # the method computed something
    # The file passes both seed validators unchanged.
    document = json.loads(raw)
    SeedAnalysisResult.model_validate(document)
    assert ui_accepts(document)

    native_path = run_dir / "inseq" / "p.json"
    if engine == "native":
        assert not native_path.exists()
        return
    # Inseq's own file is stored beside it, loads with Inseq, and converts back to the same raw matrix.
    converted = InseqTokenAnalyzer.convert_native_to_analysis_result(native_path, PROMPT)
    assert [t.token_id for t in converted.data.input_tokens] == [t.token_id for t in result.data.input_tokens]
    assert [t.token_id for t in converted.data.output_tokens] == [t.token_id for t in result.data.output_tokens]
    np.testing.assert_allclose(np.array(converted.data.association_matrix), matrix, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- the refusals' reasons still hold


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir), device="cpu")


def inseq_attribute(loaded: LoadedModel, method: str) -> object:
    import inseq

    model = inseq.load_model(loaded.model, method, tokenizer=loaded.tokenizer)
    return model.attribute(PROMPT, generation_args={"max_new_tokens": 1}, show_progress=False)


def test_dummy_still_computes_no_scores(tiny_llama: LoadedModel) -> None:
    output = inseq_attribute(tiny_llama, "dummy")
    sequence = output.sequence_attributions[0]  # type: ignore[attr-defined]
    assert sequence.source_attributions is None and sequence.target_attributions is None


@pytest.mark.parametrize("method", ["layer_deeplift", "layer_integrated_gradients"])
def test_layer_methods_with_baselines_still_give_only_zeros(tiny_llama: LoadedModel, method: str) -> None:
    output = inseq_attribute(tiny_llama, method)
    scores = output.sequence_attributions[0].target_attributions  # type: ignore[attr-defined]
    assert scores is not None and scores.numel() > 0
    assert bool((scores.nan_to_num(0.0) == 0).all())


def test_value_zeroing_still_fails_on_the_installed_transformers(tiny_llama: LoadedModel) -> None:
    with pytest.raises(TypeError, match="unsupported operand"):
        inseq_attribute(tiny_llama, "value_zeroing")


# --------------------------------------------------------------------------- reagent, where NLTK's tagger data is


@pytest.fixture
def nltk_tagger_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real NLTK perceptron tagger, trained on three tagged sentences, installed where NLTK looks first.

    ReAGent only needs *a* POS tagger to group the vocabulary; the real English model cannot be downloaded here.
    """
    import nltk.data
    from nltk.tag.perceptron import PerceptronTagger

    root = tmp_path / "nltk_data"
    root.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(root), *nltk.data.path])
    tagger = PerceptronTagger(load=False)
    sentences = [
        [("the", "DT"), ("dog", "NN"), ("runs", "VBZ"), (".", ".")],
        [("a", "DT"), ("cat", "NN"), ("sleeps", "VBZ")],
        [("Paris", "NNP"), ("is", "VBZ"), ("big", "JJ")],
    ]
    tagger.train(sentences, nr_iter=2)
    tagger.save_to_json(lang="eng", loc=str(root / "taggers" / "averaged_perceptron_tagger_eng"))
    return root


def test_reagent_runs_where_the_tagger_data_is_installed_and_never_downloads(
    nltk_tagger_data: Path,
    tiny_gpt2_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nltk

    assert refusal_reason("reagent") is None
    assert "reagent" in [spec.name for spec in runnable_methods()]
    downloads: list[object] = []

    def no_network(*args: object, **kwargs: object) -> bool:
        downloads.append(args)
        raise AssertionError("nltk.download reached while attributing")

    monkeypatch.setattr(nltk, "download", no_network)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p", "prompt": PROMPT}) + "\n")
    results = tmp_path / "results"
    code, out, err = run_tokenlens(
        [
            "run", str(prompts), "--model", str(tiny_gpt2_dir), "--method", "reagent", "--results", str(results),
            "--run-id", "r", "--max-new-tokens", str(NEW_TOKENS), "--no-chat", "--format", "json",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, out + err
    assert downloads == [] and nltk.download is no_network  # answered locally while Inseq ran, then put back
    result = decode_result((results / "runs" / "r" / "results" / "p.json").read_bytes())
    assert result.metadata.attribution_method == "reagent" and result.metadata.engine == "inseq"
    matrix = np.array(result.data.association_matrix)
    n_in = len(result.data.input_tokens)
    assert np.isfinite(matrix).all() and np.any(matrix[:, :n_in] != 0.0)
    assert (results / "runs" / "r" / "inseq" / "p.json").exists()
