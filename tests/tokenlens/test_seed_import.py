"""`tokenlens import`: the seed's Inseq tree (files made here by the installed Inseq) and TokenLens JSON folders.

The Inseq files are written by a real Inseq run of a tiny random Llama (through TokenLens's Inseq
engine, which stores Inseq's own `FeatureAttributionOutput.save` file), laid out as the seed's
``MODEL/method_X/data/*_inseq.json``; the seed JSON files are tests/fixtures/seed_files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from storage_backends import LocalStorage
from tests.cli_runner import run_tokenlens
from tokenlens.batch import BatchTask, PromptRecord
from tokenlens.models import load_model
from tokenlens.pipeline import process_batch
from tokenlens.results import RunStore, list_run_ids
from tokenlens.seed_import import SeedImportError, import_runs, reduce_dimensions

SEED_FILES = Path(__file__).parent.parent / "fixtures/seed_files"


@pytest.fixture(scope="module")
def inseq_tree(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed-style tree of two Inseq saliency files, written by Inseq itself."""
    work = tmp_path_factory.mktemp("inseq-run")
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    prompts = [PromptRecord(id="q1", prompt="The cat sat"), PromptRecord(id="q2", prompt="Dogs run far")]
    task = BatchTask(
        run_id="src", results_url=str(work), model="tiny", method="saliency", engine="inseq", max_new_tokens=3,
        prompts=prompts,
    )  # fmt: skip
    assert sorted(process_batch(loaded, task).done) == ["q1", "q2"]
    tree = tmp_path_factory.mktemp("seed") / "tiny-llama/method_saliency/data"
    tree.mkdir(parents=True)
    for prompt_id in ("q1", "q2"):
        shutil.copy(work / f"runs/src/inseq/{prompt_id}.json", tree / f"{prompt_id}_inseq.json")
    return tree.parent.parent.parent


def test_inseq_tree_becomes_a_run_with_the_chosen_aggregation(inseq_tree: Path, tmp_path: Path) -> None:
    import inseq

    storage = LocalStorage(tmp_path / "results")
    report = import_runs(inseq_tree, storage, "seed", how="l2_norm")
    assert report.runs == {"seed": 2} and not report.skipped
    store = RunStore(storage, "seed")
    assert store.prompt_ids() == ["q1", "q2"]  # file names without the seed's _inseq suffix
    result = store.read_result("q1")
    loaded = inseq.FeatureAttributionOutput.load(str(inseq_tree / "tiny-llama/method_saliency/data/q1_inseq.json"))
    sequence = loaded.sequence_attributions[0]
    raw = sequence.target_attributions.float().numpy()
    assert raw.ndim == 3  # positions x steps x embedding units: what the aggregation reduces
    expected = np.sqrt((raw.astype(np.float64) ** 2).sum(axis=-1))
    n_in = len(sequence.source)
    matrix = np.asarray(result.data.association_matrix)
    for step in range(matrix.shape[0]):
        assert np.allclose(matrix[step, : n_in + step], expected[: n_in + step, step], rtol=1e-5)
        assert not matrix[step, n_in + step :].any()
    assert (
        result.metadata.attribution_method == "saliency" and result.metadata.method_params["aggregation"] == "l2_norm"
    )
    assert all(t.word is not None for t in result.data.input_tokens)  # the word toggle works on imported runs


def test_aggregations_reduce_the_extra_dimensions_as_documented() -> None:
    tensor = np.array([[[1.0, -3.0, 2.0]]])
    assert reduce_dimensions(tensor, "sum")[0, 0] == 0.0
    assert reduce_dimensions(tensor, "mean")[0, 0] == 0.0
    assert reduce_dimensions(tensor, "l2_norm")[0, 0] == pytest.approx(np.sqrt(14.0))
    assert reduce_dimensions(tensor, "max_abs")[0, 0] == -3.0
    with pytest.raises(SeedImportError, match="sum, mean, l2_norm, max_abs"):
        reduce_dimensions(tensor, "median")


def test_mixed_folder_imports_each_model_and_method_and_lists_bad_files(
    inseq_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "seed"
    shutil.copytree(inseq_tree, folder)
    shutil.copytree(SEED_FILES, folder / "json")
    (folder / "json/broken.json").write_text('{"metadata": {"llm_id": "x"}')
    (folder / "tiny-llama/method_saliency/data/bad_inseq.json").write_text("not inseq")
    results = tmp_path / "results"
    code, _out, err = run_tokenlens(["import", str(folder), "--results", str(results), "--run-id", "old"], capsys)
    assert code == 0, err
    runs = sorted(list_run_ids(LocalStorage(results)))
    assert len(runs) >= 2 and all(run.startswith("old-") for run in runs)
    total = sum(RunStore(LocalStorage(results), run).read_manifest().prompt_count for run in runs)
    assert total == 2 + len(list(SEED_FILES.glob("*.json")))
    assert "broken.json" in err and "bad_inseq.json" in err and "malformed JSON" in err
    # Importing again under the same id is refused before anything is written.
    code, _out, err = run_tokenlens(["import", str(folder), "--results", str(results), "--run-id", "old"], capsys)
    assert code == 2 and "already exists" in err
    assert sorted(list_run_ids(LocalStorage(results))) == runs


def test_nothing_readable_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in/x.json").write_text("[]")
    with pytest.raises(SeedImportError, match="no readable result files"):
        import_runs(tmp_path / "in", LocalStorage(tmp_path / "results"), "r")
    assert not (tmp_path / "results/runs").exists()
