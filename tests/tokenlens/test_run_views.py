"""Run-level views (tokenlens.run_views) on hand-made results written with the real RunStore and codec.

Every expected number is worked out in the test from the matrices it wrote, not read back from the code.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from storage_backends import LocalStorage, Storage
from tests.ui.sample_runs import SamplePrompt, make_result, write_run
from tokenlens.errors import RunNotFoundError
from tokenlens.results import RunStore
from tokenlens.run_agreement import average_ranks, spearman, top_k_overlap
from tokenlens.run_views import IMPORTANCE_PRIOR_COUNT, RunViewCache, ViewRequestError
from tokenlens.schema import AnalysisData, AnalysisMetadata, AnalysisResult, RunManifest, TokenInfo

# Two prompts; the template token "<s>" is left out of importance, "fox" appears in both.
#   a: inputs <s> the fox | outputs x y
#   b: inputs <s> fox ran | outputs z
PROMPT_A = (["<s>", "the", "fox"], ["x", "y"], [[1.0, 2.0, 4.0, 0.0, 0.0], [0.0, 1.0, 1.0, 2.0, 0.0]])
PROMPT_B = (["<s>", "fox", "ran"], ["z"], [[0.0, -3.0, 1.0, 0.0]])


#: An input token written "+x" continues the word before it (no space in front); others start a word.
GLUED = "+"


def _clean(token: str, index: int) -> str:
    return token[1:] if token.startswith(GLUED) else (" " + token if index else token)


def _result(
    run_id: str, prompt_id: str, spec: tuple[list[str], list[str], list[list[float]]], **meta: object
) -> AnalysisResult:
    inputs, outputs, matrix = spec
    return AnalysisResult(
        metadata=AnalysisMetadata(
            llm_id=str(meta.get("model", "m")),
            prompt=" ".join(inputs[1:]),
            attribution_method=str(meta.get("method", "saliency")),
            run_id=run_id,
            prompt_id=prompt_id,
            device=str(meta.get("device", "cpu")),
            timings_s=dict(meta.get("timings", {"generation": 0.5, "attribution": 1.5})),  # type: ignore[call-overload]
        ),
        data=AnalysisData(
            input_tokens=[
                TokenInfo(token=t.lstrip(GLUED), token_id=k, clean_token=_clean(t, k), is_template=(k == 0))
                for k, t in enumerate(inputs)
            ],
            output_tokens=[TokenInfo(token=t, token_id=100 + k, clean_token=t) for k, t in enumerate(outputs)],
            association_matrix=matrix,
        ),
    )


def _write(storage: Storage, run_id: str, results: list[AnalysisResult], result_format: str = "json") -> RunStore:
    store = RunStore(storage, run_id)
    store.write_manifest(
        RunManifest(run_id=run_id, model="m", method="saliency", prompt_count=len(results), result_format=result_format)
    )
    for result in results:
        store.write_result(result, result_format)
    return store


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return LocalStorage(tmp_path / "results")


@pytest.mark.parametrize("result_format", ["json", "compact"])
def test_token_importance_follows_the_stated_formula(storage: Storage, result_format: str) -> None:
    _write(storage, "r", [_result("r", "a", PROMPT_A), _result("r", "b", PROMPT_B)], result_format)
    view = RunViewCache(storage).importance("r")
    # a(j) = mean over rows of |row / max|row||: prompt a rows /4 and /2; prompt b row /3.
    a_the = (2 / 4 + 1 / 2) / 2
    a_fox = (4 / 4 + 1 / 2) / 2
    b_fox, b_ran = 3 / 3, 1 / 3
    occurrences = {"the": [a_the], "fox": [a_fox, b_fox], "ran": [b_ran]}
    mu = (a_the + a_fox + b_fox + b_ran) / 4
    m = IMPORTANCE_PRIOR_COUNT
    expected = {t: ((sum(v) + m * mu) / (len(v) + m)) / mu for t, v in occurrences.items()}
    got = {row["token"]: row for row in view["tokens"]}
    assert set(got) == {"the", "fox", "ran"}  # the template token is left out
    tolerance = 1e-6 if result_format == "json" else 2e-3  # compact keeps float16 of normalised rows
    for token, score in expected.items():
        assert got[token]["score"] == pytest.approx(score, rel=tolerance)
        assert got[token]["count"] == len(occurrences[token])
    assert [row["token"] for row in view["tokens"]] == sorted(expected, key=lambda t: -expected[t])
    assert [p["prompt_id"] for p in got["fox"]["top_prompts"]] == ["b", "a"]  # b gives fox 1.0, a gives 0.75
    assert view["prompts"] == 2 and view["unreadable"] == []


def test_word_importance_sums_the_tokens_of_a_word(storage: Storage) -> None:
    # "fox" is two tokens, "fo" and "x"; the row over its peak 4 gives fo 0.25, x 0.5, ran 1.0.
    _write(storage, "r", [_result("r", "a", (["<s>", "fo", "+x", "ran"], ["z"], [[0.0, 1.0, 2.0, 4.0, 0.0]]))])
    cache = RunViewCache(storage)
    words = {row["token"]: row for row in cache.importance("r", level="word")["tokens"]}
    tokens = {row["token"]: row for row in cache.importance("r", level="token")["tokens"]}
    assert set(words) == {"fox", "ran"} and set(tokens) == {"fo", "x", "ran"}
    mu = (0.75 + 1.0) / 2
    m = IMPORTANCE_PRIOR_COUNT
    assert words["fox"]["total"] == pytest.approx(0.75)
    assert words["fox"]["score"] == pytest.approx(((0.75 + m * mu) / (1 + m)) / mu)
    assert words["ran"]["total"] == pytest.approx(tokens["ran"]["total"]) == pytest.approx(1.0)


def test_where_attention_goes_by_position_and_distance(storage: Storage) -> None:
    _write(storage, "r", [_result("r", "a", PROMPT_A), _result("r", "b", PROMPT_B)])
    view = RunViewCache(storage).attention("r")
    by_position = {row["position"]: row for row in view["by_position"]}
    # Position 0: a's row [1,2,4] (template 1/7, prompt 6/7), b's row [0,3,1] (prompt 1). Position 1: a's row
    # [0,1,1,2]: prompt 2/4, generated 2/4.
    assert by_position[0]["rows"] == 2
    assert by_position[0]["template"] == pytest.approx((1 / 7 + 0) / 2)
    assert by_position[0]["prompt"] == pytest.approx((6 / 7 + 1) / 2)
    assert by_position[1]["generated"] == pytest.approx(0.5)
    assert by_position[1]["prompt"] == pytest.approx(0.5)
    assert view["overall"]["rows"] == 3
    # Distances: a row 0 predicts position 3: columns 0,1,2 are 3,2,1 back; row 1 predicts 4: cols 1,2,3 -> 3,2,1.
    # b row 0 predicts 3: cols 1,2 -> 2,1. Buckets "1", "2", "3-4".
    shares = {row["bucket"]: row["share"] for row in view["distance"]}
    assert shares["1"] == pytest.approx((4 / 7 + 2 / 4 + 1 / 4) / 3)
    assert shares["2"] == pytest.approx((2 / 7 + 1 / 4 + 3 / 4) / 3)
    assert shares["3-4"] == pytest.approx((1 / 7 + 1 / 4 + 0) / 3)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_average_ranks_and_spearman_match_the_textbook() -> None:
    assert average_ranks(np.array([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0, 9.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 1.0]), np.array([1.0, 2.0])) is None
    # Pearson of the ranks [1,2,3,4] and [2,1,4,3]: 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*4/60 = 0.6 (no ties).
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 4.0, 3.0])) == pytest.approx(0.6)
    assert top_k_overlap(np.array([5.0, 4.0, 3.0, 0.0]), np.array([5.0, 0.0, 4.0, 3.0]), 2) == pytest.approx(0.5)


def test_agreement_of_two_runs_lists_where_they_disagree_most(storage: Storage) -> None:
    prompts = [SamplePrompt(f"p{k}", f"word{k} alpha beta gamma delta") for k in range(4)]
    write_run(storage, "one", prompts)
    store = RunStore(storage, "two")
    store.write_manifest(RunManifest(run_id="two", model="sample-model", method="ixg", prompt_count=4))
    flipped_row = None
    for sample in prompts:
        result = make_result("one", sample.prompt_id, sample.prompt)  # the same tokens and scores as run "one"
        if sample.prompt_id == "p2":  # reverse the order of p2's scores: a strong disagreement
            matrix = np.array(result.data.association_matrix)
            n_in = len(result.data.input_tokens)
            for i in range(matrix.shape[0]):
                width = n_in + i
                matrix[i, :width] = matrix[i, :width].max() + 1.0 - matrix[i, :width]
            flipped_row = matrix[0, :n_in]
            result = AnalysisResult(
                metadata=result.metadata, data=result.data.model_copy(update={"association_matrix": matrix.tolist()})
            )
            result = AnalysisResult.model_validate(result.model_dump())
        store.write_result(result)
    assert flipped_row is not None
    view = RunViewCache(storage).agreement("one", "two")
    assert view["compared"] == 4
    assert view["disagree_most"][0]["prompt_id"] == "p2"
    assert view["disagree_most"][0]["spearman"] < -0.9
    others = [row for row in view["disagree_most"] if row["prompt_id"] != "p2"]
    assert all(row["spearman"] == pytest.approx(1.0) and row["top_k_overlap"] == pytest.approx(1.0) for row in others)
    assert sum(bin_["count"] for bin_ in view["histogram"]) == 4
    assert view["histogram"][-1]["count"] == 3  # the three identical prompts fall in the top bin
    with pytest.raises(ViewRequestError, match="other than"):
        RunViewCache(storage).agreement("one", "one")


def test_agreement_does_not_compare_different_tokenizations(storage: Storage) -> None:
    _write(storage, "r1", [_result("r1", "a", PROMPT_A)])
    other = (["<s>", "the", "fo", "x"], ["x", "y"], [[1.0, 2.0, 4.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 2.0, 1.0, 0.0]])
    _write(storage, "r2", [_result("r2", "a", other)])
    view = RunViewCache(storage).agreement("r1", "r2")
    assert view["compared"] == 0
    assert view["not_compared"] == {"different input tokens (another tokenizer or template)": 1}
    assert view["spearman"]["mean"] is None


def test_performance_by_model_method_and_device(storage: Storage) -> None:
    _write(storage, "r1", [_result("r1", "a", PROMPT_A), _result("r1", "b", PROMPT_B)])
    gpu_timings = {"generation": 0.1, "attribution": 0.2, "total": 0.4}
    _write(storage, "r2", [_result("r2", "a", PROMPT_A, device="cuda:0", method="ig", timings=gpu_timings)])
    groups = {(g["method"], g["device"]): g for g in RunViewCache(storage).performance()["groups"]}
    cpu = groups[("saliency", "cpu")]
    assert cpu["runs"] == ["r1"] and cpu["prompts"] == 2 and cpu["output_tokens"] == 3
    assert cpu["phases"]["attribution"]["per_prompt_s"] == pytest.approx(1.5)
    assert cpu["phases"]["attribution"]["per_output_token_s"] == pytest.approx(3.0 / 3)
    assert cpu["phases"]["total"]["per_prompt_s"] == pytest.approx(2.0)  # no total recorded: the phases' sum
    gpu = groups[("ig", "cuda:0")]
    assert gpu["phases"]["total"]["per_prompt_s"] == pytest.approx(0.4)  # the recorded total wins
    assert gpu["phases"]["generation"]["per_output_token_s"] == pytest.approx(0.1 / 2)


def test_the_cache_answers_from_memory_and_adds_new_results(storage: Storage) -> None:
    store = _write(storage, "r", [_result("r", "a", PROMPT_A)])
    cache = RunViewCache(storage)
    first = cache.run_state("r")
    sums = first.aggregate
    assert cache.importance("r")["prompts"] == 1
    store.write_result(_result("r", "b", PROMPT_B))
    second = cache.run_state("r")
    assert second.aggregate is sums  # added to, not rebuilt: the old file was not read again
    assert second.aggregate.prompts == 2
    assert {row["token"] for row in cache.importance("r")["tokens"]} == {"the", "fox", "ran"}
    # Same as a fresh computation over both files.
    assert cache.importance("r") == RunViewCache(storage).importance("r")
    store.delete_result("b")  # a result removed (a corrupt one, before it is attributed again)
    assert cache.importance("r") == RunViewCache(storage).importance("r")
    assert cache.importance("r")["prompts"] == 1


def test_results_are_listed_again_only_when_the_progress_record_moves(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenlens import run_views
    from tokenlens.result_codec import encode_result

    store = _write(storage, "r", [_result("r", "a", PROMPT_A)])
    cache = RunViewCache(storage)
    assert cache.importance("r")["prompts"] == 1
    # A file put in storage by hand moves no writer's tally: the cache doesn't list the run to find it...
    storage.put("runs/r/results/b.json", encode_result(_result("r", "b", PROMPT_B), "json").body)
    assert cache.importance("r")["prompts"] == 1
    # ... until a result written through the store moves the record,
    store.write_result(_result("r", "c", PROMPT_B))
    assert cache.importance("r")["prompts"] == 3
    # or the listing is older than RESULTS_RELIST_S.
    storage.put("runs/r/results/d.json", encode_result(_result("r", "d", PROMPT_B), "json").body)
    assert cache.importance("r")["prompts"] == 3
    monkeypatch.setattr(run_views, "RESULTS_RELIST_S", 0.0)
    assert cache.importance("r")["prompts"] == 4
    assert cache.importance("r") == RunViewCache(storage).importance("r")


def test_an_unreadable_result_is_listed_with_its_reason(storage: Storage) -> None:
    _write(storage, "r", [_result("r", "a", PROMPT_A)])
    storage.put("runs/r/results/broken.json", b'{"metadata": {}, "data": {"input_tokens": 3}}')
    view = RunViewCache(storage).importance("r")
    assert view["prompts"] == 1
    assert [u["prompt_id"] for u in view["unreadable"]] == ["broken"]
    assert "runs/r/results/broken.json" in view["unreadable"][0]["error"]


def test_unknown_runs_and_levels_are_clear_errors(storage: Storage) -> None:
    cache = RunViewCache(storage)
    with pytest.raises(RunNotFoundError, match="no-such"):
        cache.attention("no-such")
    _write(storage, "r", [_result("r", "a", PROMPT_A)])
    with pytest.raises(ViewRequestError, match="level 'sentence'"):
        cache.importance("r", level="sentence")
    assert not math.isnan(cache.importance("r")["mean_per_occurrence"])


def test_views_asked_for_at_once_while_results_arrive_stay_consistent(storage: Storage) -> None:
    store = _write(storage, "r", [_result("r", "a", PROMPT_A)])
    cache = RunViewCache(storage)
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(20):
                view = cache.importance("r")
                # Whole updates only: every prompt counted has its tokens counted ("fox" once per prompt).
                fox = next(row for row in view["tokens"] if row["token"] == "fox")
                assert fox["count"] == view["prompts"]
                cache.attention("r")
        except BaseException as exc:  # any failure in a thread fails the test
            failures.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for k in range(30):
        store.write_result(_result("r", f"n{k}", PROMPT_B))
    for thread in threads:
        thread.join()
    assert failures == []
    assert cache.importance("r") == RunViewCache(storage).importance("r")
    assert cache.importance("r")["prompts"] == 31
