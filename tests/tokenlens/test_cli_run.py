"""`tokenlens run` end to end, as a user runs it: a real subprocess, real files, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.seed_validators import SeedAnalysisResult, ui_accepts
from tokenlens.result_codec import decode_result
from tokenlens.schema import AnalysisResult, RunManifest


def tokenlens(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("TOKENLENS_RESULTS", None)
    return subprocess.run(
        [sys.executable, "-m", "tokenlens", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def write_prompts(tmp_path: Path, lines: list[str], name: str = "prompts.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_run_on_smollm2_writes_the_layout_and_prints_attributions(tmp_path: Path) -> None:
    prompts = write_prompts(
        tmp_path,
        [
            json.dumps({"id": "capital", "prompt": "What is the capital of France?"}),
            json.dumps({"id": "forced", "prompt": "Name a colour.", "target": "Blue."}),
        ],
    )
    results = tmp_path / "results"
    done = tokenlens("run", str(prompts), "--results", str(results), "--run-id", "r1", "--max-new-tokens", "6")
    assert done.returncode == 0, done.stderr
    assert "2 done" in done.stdout and f"results: {results}/runs/r1/results/" in done.stdout
    assert "[capital]" in done.stdout and "<-" in done.stdout  # the strongest sources are printed
    manifest = RunManifest.model_validate_json((results / "runs/r1/run.json").read_text())
    assert (manifest.model, manifest.method, manifest.engine, manifest.prompt_count) == (
        "smollm2-135m-instruct",
        "saliency",
        "native",
        2,
    )
    forced = AnalysisResult.model_validate_json((results / "runs/r1/results/forced.json").read_text())
    assert "".join(t.clean_token for t in forced.data.output_tokens) == "Blue."
    assert any(t.is_template for t in forced.data.input_tokens)
    capital = AnalysisResult.model_validate_json((results / "runs/r1/results/capital.json").read_text())
    assert 1 <= len(capital.data.output_tokens) <= 6
    assert capital.metadata.engine == "native" and capital.metadata.run_id == "r1"

    # Real output passes both of the seed project's validators, unchanged.
    for name in ("forced", "capital"):
        document = json.loads((results / f"runs/r1/results/{name}.json").read_bytes())
        assert ui_accepts(document), name
        SeedAnalysisResult.model_validate(document)

    again = tokenlens("run", str(prompts), "--results", str(results), "--run-id", "r1", "--max-new-tokens", "6")
    assert again.returncode == 0 and "0 done, 2 already done" in again.stdout


def test_run_with_a_failing_prompt_exits_1_and_keeps_the_rest(tiny_llama_dir: Path, tmp_path: Path) -> None:
    prompts = write_prompts(
        tmp_path,
        [json.dumps({"id": "ok", "prompt": "Hello"}), json.dumps({"id": "huge", "prompt": "word " * 400})],
    )
    results = tmp_path / "results"
    done = tokenlens(
        "run", str(prompts), "--model", str(tiny_llama_dir), "--results", str(results), "--run-id", "r2",
        "--max-new-tokens", "3", "--method", "input_x_gradient", "--format", "compact",
    )  # fmt: skip
    assert done.returncode == 1
    assert "1 done" in done.stdout and "1 failed" in done.stdout
    assert "failed huge: PromptTooLongError" in done.stderr
    stored = (results / "runs/r2/results/ok.json").read_bytes()
    assert stored[:2] == b"\x1f\x8b"  # --format compact: gzip
    assert decode_result(stored).metadata.attribution_method == "input_x_gradient"
    assert RunManifest.model_validate_json((results / "runs/r2/run.json").read_bytes()).result_format == "compact"
    kept = [json.loads(line) for line in (results / "runs/r2/prompts.jsonl").read_text().splitlines()]
    assert [p["id"] for p in kept] == ["ok", "huge"]
    assert json.loads((results / "runs/r2/errors/huge.json").read_text())["error_type"] == "PromptTooLongError"


@pytest.mark.slow
def test_run_with_a_contrastive_function_records_it_and_the_contrast(tiny_llama_dir: Path, tmp_path: Path) -> None:
    line = {"id": "fr", "prompt": "The capital of France is", "target": " Paris", "contrast_target": " Lyon"}
    prompts = write_prompts(tmp_path, [json.dumps(line)])
    results = tmp_path / "results"
    done = tokenlens(
        "run", str(prompts), "--model", str(tiny_llama_dir), "--results", str(results), "--run-id", "c1",
        "--no-chat", "--attributed-fn", "contrast_logit",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stored = decode_result((results / "runs/c1/results/fr.json").read_bytes())
    assert stored.metadata.attributed_fn == "contrast_logit"
    assert stored.metadata.method_params["attributed_fn"] == "contrast_logit"
    assert stored.metadata.contrast_target == " Lyon"
    assert SeedAnalysisResult.model_validate_json((results / "runs/c1/results/fr.json").read_bytes())
    manifest = RunManifest.model_validate_json((results / "runs/c1/run.json").read_bytes())
    assert manifest.method_params["attributed_fn"] == "contrast_logit"
    # Resuming the run with another attributed function is refused: its numbers would be another function's.
    again = tokenlens(
        "run", str(prompts), "--model", str(tiny_llama_dir), "--results", str(results), "--run-id", "c1",
        "--no-chat", "--attributed-fn", "logit",
    )  # fmt: skip
    assert again.returncode == 2 and "attributed_fn" in again.stderr


def test_dtype_auto_is_recorded_resolved_and_resumes_as_that_dtype(tiny_llama_dir: Path, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path, [json.dumps({"id": "a", "prompt": "Hello"})])
    results = tmp_path / "results"
    common = ["run", str(prompts), "--model", str(tiny_llama_dir), "--results", str(results), "--run-id", "d1"]
    first = tokenlens(*common, "--max-new-tokens", "2")  # --dtype auto: float32 on this CPU
    assert first.returncode == 0, first.stderr
    stored = decode_result((results / "runs/d1/results/a.json").read_bytes())
    assert stored.metadata.dtype == "float32"
    assert RunManifest.model_validate_json((results / "runs/d1/run.json").read_bytes()).dtype == "float32"
    again = tokenlens(*common, "--max-new-tokens", "2", "--dtype", "float32")  # the same run, said explicitly
    assert again.returncode == 0, again.stderr
    assert "1 already done" in again.stdout
    other = tokenlens(*common, "--max-new-tokens", "2", "--dtype", "bfloat16")
    assert other.returncode == 2 and "dtype" in other.stderr


@pytest.mark.parametrize(
    ("lines", "args", "expected"),
    [
        (['{"prompt": "ok"}', '{"prompt": broken}'], [], "prompts.jsonl:2: malformed JSON"),
        (['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}'], [], "prompts.jsonl:2: duplicate id 'a'"),
        (['{"prompt": "ok"}'], ["--method", "salency"], "unknown attribution method 'salency'; choose one of:"),
        (['{"prompt": "ok"}'], ["--model", "smollm-9b-chat"], "unknown model alias 'smollm-9b-chat'"),
        (['{"prompt": "ok"}'], ["--n-steps", "4"], "n_steps do not apply to method 'saliency'"),
        (['{"prompt": "ok"}'], ["--results", "ftp://x/y"], "unknown results URL scheme 'ftp'"),
        (
            ['{"id": "a", "prompt": "ok", "contrast_target": " no"}', '{"id": "b", "prompt": "ok"}'],
            ["--attributed-fn", "contrast_prob"],
            "prompts.jsonl:2: prompt 'b' has no 'contrast_target'",
        ),
        (['{"prompt": "ok"}'], ["--dtype", "float16"], "--dtype float16 with the gradient method 'saliency'"),
    ],
)
def test_bad_input_fails_before_the_model_loads_and_writes_nothing(
    tmp_path: Path, lines: list[str], args: list[str], expected: str
) -> None:
    prompts = write_prompts(tmp_path, lines)
    results = tmp_path / "results"
    if "--results" not in args:
        args = [*args, "--results", str(results)]
    done = tokenlens("run", str(prompts), *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr
    assert "loading" not in done.stderr  # refused before any model load
    assert "Traceback" not in done.stderr
    assert not results.exists()


def test_help_teaches_and_methods_lists_everything() -> None:
    helped = tokenlens("run", "--help")
    assert helped.returncode == 0 and "Examples:" in helped.stdout and "--target-chunk" in helped.stdout
    listed = tokenlens("methods")
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert {"saliency", "integrated_gradients", "attention", "lime", "occlusion"} <= set(names)
