"""The issue's "done" check: `tokenlens run --results s3://...` then `fetch` gives the files a local run gives."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

#: Fields that legitimately differ between two runs of the same prompts: wall-clock stamps and timings
#: (`exec_time` is Inseq's, in its native file).
VOLATILE_FIELDS = {"timestamp", "created_at", "timings_s", "exec_time"}


def tokenlens(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tokenlens", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_volatile(item) for key, item in value.items() if key not in VOLATILE_FIELDS}
    if isinstance(value, list):
        return [without_volatile(item) for item in value]
    return value


def assert_same_json(left: Any, right: Any, where: str) -> None:
    """Equal, except floats may differ in the last bits (two processes, same CPU kernels)."""
    if isinstance(left, float) or isinstance(right, float):
        assert isinstance(left, (int, float)) and isinstance(right, (int, float)), where
        assert math.isclose(left, right, rel_tol=1e-5, abs_tol=1e-7), f"{where}: {left} != {right}"
    elif isinstance(left, dict):
        assert isinstance(right, dict) and left.keys() == right.keys(), where
        for key in left:
            assert_same_json(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list):
        assert isinstance(right, list) and len(left) == len(right), where
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same_json(a, b, f"{where}[{i}]")
    else:
        assert left == right, f"{where}: {left!r} != {right!r}"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["auto", "inseq"])  # inseq also writes inseq/ files
def test_run_to_s3_then_fetch_matches_a_local_run(
    tiny_llama_dir: Path, s3_results_url: str, tmp_path: Path, engine: str
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "fox", "prompt": "The quick brown fox"})
        + "\n"
        + json.dumps({"id": "sky", "prompt": "Why is the sky blue?"})
        + "\n"
    )
    common = [str(prompts), "--model", str(tiny_llama_dir), "--max-new-tokens", "3", "--run-id", "e2e"]
    common += ["--device", "cpu", "--no-show", "--engine", engine]
    local_results = tmp_path / "local-results"
    tokenlens("run", *common, "--results", s3_results_url)
    tokenlens("run", *common, "--results", str(local_results))

    fetched = tmp_path / "fetched"
    done = tokenlens("fetch", "e2e", "--results", s3_results_url, "--dest", str(fetched))
    assert "0 failed" in done.stdout

    local_run = local_results / "runs" / "e2e"
    fetched_run = fetched / "e2e"
    # progress/ is the writers' bookkeeping (tokenlens/tally.py), not run data: fetch leaves it behind.
    local_files = sorted(
        name
        for name in (p.relative_to(local_run).as_posix() for p in local_run.rglob("*") if p.is_file())
        if not name.startswith("progress/")
    )
    fetched_files = sorted(p.relative_to(fetched_run).as_posix() for p in fetched_run.rglob("*") if p.is_file())
    assert fetched_files == local_files
    assert {"run.json", "results/fox.json", "results/sky.json"} <= set(local_files)
    if engine == "inseq":
        assert {"inseq/fox.json", "inseq/sky.json"} <= set(local_files)
    assert "prompts.jsonl" in local_files
    for name in local_files:
        if name.endswith(".jsonl"):
            assert (fetched_run / name).read_bytes() == (local_run / name).read_bytes(), name
            continue
        local_doc = json.loads((local_run / name).read_text())
        fetched_doc = json.loads((fetched_run / name).read_text())
        assert_same_json(without_volatile(fetched_doc), without_volatile(local_doc), name)

    listed = json.loads(tokenlens("runs", "--results", s3_results_url, "--json").stdout)
    assert [(row["run_id"], row["prompts"], row["results"], row["errors"]) for row in listed] == [("e2e", 2, 2, 0)]
