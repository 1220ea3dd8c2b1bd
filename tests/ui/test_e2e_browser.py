"""The web UI end to end in headless Chromium, on real runs that `tokenlens run` makes with SmolLM2.

Two runs attribute the same three prompts (saliency, then input x gradient) into a temporary results directory;
a synthetic 1000-token result is added to check that a large file does not freeze the page. Then the real
`tokenlens ui` serves them and the Playwright spec in ui/web/e2e/ drives Debian's Chromium against it. The spec
checks the page against the files on disk and leaves screenshots in tests/artifacts/.

Needs: `cd ui/web && npm ci` (Playwright and the build tools) and `apt-get install chromium`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from storage_backends import LocalStorage
from tests.ui.sample_runs import SamplePrompt, write_big_result, write_run
from tests.ui.ui_process import REPO_ROOT, TOKENLENS, running_ui
from tokenlens.batch import PromptRecord

WEB_DIR = REPO_ROOT / "ui" / "web"
ARTIFACTS_DIR = REPO_ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
PROMPTS = [
    {"id": "capital", "prompt": "What is the capital of France?"},
    {"id": "colors", "prompt": "Name three primary colors."},
    {"id": "haiku", "prompt": "Write a haiku about the sea."},
]
RUNS = {"e2e-saliency": "saliency", "e2e-ixg": "input_x_gradient"}
BIG_RUN = "e2e-large"
#: A run of 250 prompts (200 done, 50 pending): the run page shows it 100 rows at a time.
PAGED_RUN = "e2e-paged"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_tools() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)")
    if not (WEB_DIR / "node_modules" / "@playwright" / "test").is_dir():
        missing.append("the web app's packages (cd ui/web && npm ci)")
    if shutil.which("npx") is None:
        missing.append("Node.js with npx")
    if missing:
        pytest.fail("the browser tests need " + "; ".join(missing), pytrace=False)


def _make_runs(results: Path, prompts_file: Path) -> None:
    for run_id, method in RUNS.items():
        command = [
            *TOKENLENS,
            "run",
            str(prompts_file),
            "--results",
            str(results),
            "--run-id",
            run_id,
            "--method",
            method,
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
            "--no-show",
        ]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"`{' '.join(command)}` failed:\n{done.stdout}\n{done.stderr}"
        assert len(list((results / "runs" / run_id / "results").glob("*.json"))) == len(PROMPTS)


def _build_web_app() -> None:
    """Build the app unless dist/ is newer than every source file (the Makefile normally built it already)."""
    index = WEB_DIR / "dist" / "index.html"
    sources = [path for path in (WEB_DIR / "src").rglob("*") if path.is_file()] + [WEB_DIR / "index.html"]
    if index.is_file() and index.stat().st_mtime >= max(path.stat().st_mtime for path in sources):
        return
    done = subprocess.run(["npm", "run", "build"], cwd=WEB_DIR, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"npm run build failed:\n{done.stdout}\n{done.stderr}"


def test_the_ui_in_a_browser_on_real_runs(tmp_path: Path) -> None:
    _require_tools()
    _build_web_app()
    results = tmp_path / "results"
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    _make_runs(results, prompts_file)
    write_big_result(LocalStorage(results), BIG_RUN, n_words=1000, n_out=250)
    paged = [SamplePrompt(f"q{i:04d}", f"Paged prompt number {i}, about topic {i % 7}") for i in range(250)]
    store = write_run(LocalStorage(results), PAGED_RUN, paged, done=200, n_out=3)
    store.write_prompts([PromptRecord(id=p.prompt_id, prompt=p.prompt) for p in paged])
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in ("result-page.png", "compare-page.png", "large-result.png"):
        (ARTIFACTS_DIR / stale).unlink(missing_ok=True)

    with running_ui(str(results)) as base_url:
        env = {
            **os.environ,
            "TOKENLENS_UI_URL": base_url,
            "TOKENLENS_E2E_RESULTS": str(results),
            "TOKENLENS_E2E_RUNS": ",".join(RUNS),
            "TOKENLENS_E2E_BIG_RUN": BIG_RUN,
            "TOKENLENS_E2E_PAGED_RUN": PAGED_RUN,
            "TOKENLENS_E2E_ARTIFACTS": str(ARTIFACTS_DIR),
            "CHROMIUM_PATH": CHROMIUM,
            "CI": "1",  # Playwright: no interactive report server
        }
        done = subprocess.run(
            ["npx", "playwright", "test"], cwd=WEB_DIR, env=env, capture_output=True, text=True, timeout=900
        )
    sys.stdout.write(done.stdout[-6000:])
    assert done.returncode == 0, f"the Playwright spec failed:\n{done.stdout[-12000:]}\n{done.stderr[-4000:]}"
    assert "8 passed" in done.stdout
    for name in ("result-page.png", "compare-page.png", "large-result.png"):
        screenshot = ARTIFACTS_DIR / name
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{screenshot} is not a PNG"
        assert screenshot.stat().st_size > 20_000, f"{screenshot} looks empty"
