"""The token / word / sentence toggle in headless Chromium, on a real SmolLM2 result.

`tokenlens run` attributes one two-sentence prompt with SmolLM2; the real `tokenlens ui` serves it and
ui/web/e2e/words.spec.ts checks that the toggle regroups the heat map into the words and sentences the
file marks (counts computed in the spec from the file). Needs what tests/ui/test_e2e_browser.py needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ui.test_e2e_browser import ARTIFACTS_DIR, CHROMIUM, WEB_DIR, _build_web_app, _require_tools
from tests.ui.ui_process import REPO_ROOT, TOKENLENS, running_ui

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN, PROMPT = "e2e-words", "two-sentences"


def test_word_toggle_regroups_the_heat_map(tmp_path: Path) -> None:
    _require_tools()
    _build_web_app()
    results = tmp_path / "results"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": PROMPT, "prompt": "Tokenizers split unbelievably long words. Why?"}) + "\n")
    command = [*TOKENLENS, "run", str(prompts), "--results", str(results), "--run-id", RUN]
    command += ["--max-new-tokens", "10", "--device", "cpu", "--no-show"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"`{' '.join(command)}` failed:\n{done.stdout}\n{done.stderr}"
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS_DIR / "result-words.png").unlink(missing_ok=True)
    with running_ui(str(results)) as base_url:
        env = {
            **os.environ,
            "TOKENLENS_UI_URL": base_url,
            "TOKENLENS_E2E_RESULTS": str(results),
            "TOKENLENS_E2E_WORDS_RUN": RUN,
            "TOKENLENS_E2E_WORDS_PROMPT": PROMPT,
            "TOKENLENS_E2E_ARTIFACTS": str(ARTIFACTS_DIR),
            "CHROMIUM_PATH": CHROMIUM,
            "CI": "1",
        }
        done = subprocess.run(
            ["npx", "playwright", "test", "e2e/words.spec.ts"],
            cwd=WEB_DIR, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    sys.stdout.write(done.stdout[-4000:])
    assert done.returncode == 0, f"the Playwright spec failed:\n{done.stdout[-12000:]}\n{done.stderr[-4000:]}"
    assert "1 passed" in done.stdout and "skipped" not in done.stdout
    assert (ARTIFACTS_DIR / "result-words.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
