"""bench/gpu.sh and bench/gpu_check.py, as far as a machine without a GPU can check them: the script parses and
passes shellcheck, and the check runs every step on tiny shapes on the CPU (`--cpu-smoke`), writing each result
as it is measured. The GPU run itself (and `make gpu-wheels` into a bare environment) is in the README's
"GPU check" section; the forced out-of-memory step needs CUDA and is recorded as skipped here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_sh_parses_and_passes_shellcheck() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "bench/gpu.sh")], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make system-deps installs it)")
    done = subprocess.run(["shellcheck", str(ROOT / "bench/gpu.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu_check.py"), *args], capture_output=True, text=True, env=env,
        timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpu_assets")
    done = check("--prepare", str(folder / "smollm2"))
    assert done.returncode == 0, done.stderr
    return folder


def rows(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "gpu_results.jsonl").read_text().splitlines()]


def test_a_spent_budget_skips_steps_and_says_so(assets: Path, tmp_path: Path) -> None:
    done = check("--cpu-smoke", "--assets", str(assets), "--out", str(tmp_path), "--budget-s", "0")
    assert done.returncode == 0, done.stderr
    written = rows(tmp_path)
    assert written[0]["step"] == "environment"
    assert all(row["ok"] is None and "budget" in str(row["skipped"]) for row in written[1:])
    assert "build:llama-3-8b" in {row["step"] for row in written}


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_each_result(assets: Path, tmp_path: Path) -> None:
    done = check("--cpu-smoke", "--assets", str(assets), "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    written = {str(row["step"]): row for row in rows(tmp_path)}
    for shape in ("smollm2-135m", "llama-3.2-1b"):
        for method in ("saliency", "input_x_gradient"):
            assert written[f"exactness:{shape}:float32:{method}"]["ok"] is True
            assert written[f"exactness:{shape}:bfloat16:{method}"]["ok"] is True
        assert written[f"batching:{shape}:float32:integrated_gradients"]["ok"] is True
        assert float(str(written[f"timing:{shape}:bfloat16:saliency"]["prompts_per_hour"])) > 0
    assert written["long:llama-3-8b:bfloat16"]["ok"] is True
    assert written["oom:llama-3.2-1b"]["ok"] is None  # needs CUDA
    assert written["shard:smollm2-135m"]["ok"] is None  # needs two GPUs, and says so
    assert "sharding needs 2" in str(written["shard:smollm2-135m"]["skipped"])
    assert "| long:llama-3-8b:bfloat16 | ✓ |" in (tmp_path / "gpu_results.md").read_text()
    assert json.loads((tmp_path / "gpu_results.json").read_text())[-1]["step"] == "timing:llama-3-8b:bfloat16:saliency"
