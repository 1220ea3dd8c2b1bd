"""The run-level views in headless Chromium on real SmolLM2 runs: they render, and the numbers on screen are the
core's (`tokenlens.run_views`, computed here from the same files).

Two runs attribute the same prompts (saliency and input x gradient) with `tokenlens run`, as the other browser
test does; the real `tokenlens ui` serves them; ui/web/e2e/views.spec.ts opens the Insights and Agreement pages,
writes what they show to JSON, and this test compares that with `RunViewCache` to the digits shown.

Needs: `cd ui/web && npm ci` (Playwright and the build tools) and `apt-get install chromium`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storage_backends import LocalStorage
from tests.ui.test_e2e_browser import ARTIFACTS_DIR, CHROMIUM, PROMPTS, RUNS, WEB_DIR
from tests.ui.test_e2e_browser import _build_web_app as build_web_app
from tests.ui.test_e2e_browser import _make_runs as make_runs
from tests.ui.test_e2e_browser import _require_tools as require_tools
from tests.ui.ui_process import running_ui
from tokenlens.run_views import RunViewCache

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Half a unit of the last digit the pages show ("0.123", "12.3%", "45.6 ms"), plus float slack.
THREE_DECIMALS = 0.0005 + 1e-9
ONE_DECIMAL_PERCENT = 0.0005 + 1e-9


def seconds_shown(text: str) -> tuple[float, float]:
    """A duration as the page writes it ("12.3 ms", "2.50 s") and half its last digit, in seconds."""
    value, unit = text.split()
    return (float(value) / 1000, 0.00005 + 1e-12) if unit == "ms" else (float(value), 0.005 + 1e-12)


def check_importance(shown_rows: list[dict[str, Any]], computed: dict[str, Any], run_id: str) -> None:
    """The importance table on screen is the core's, row by row, to the digits shown."""
    assert [row["token"] for row in shown_rows] == [row["token"] for row in computed["tokens"]]
    for shown, row in zip(shown_rows, computed["tokens"], strict=True):
        assert abs(float(shown["score"]) - row["score"]) <= THREE_DECIMALS, (shown, row)
        assert abs(float(shown["total"]) - row["total"]) <= THREE_DECIMALS, (shown, row)
        assert int(shown["count"]) == row["count"]
        assert shown["links"] == [f"/runs/{run_id}/{p['prompt_id']}" for p in row["top_prompts"]]


@dataclass(frozen=True)
class ShownViews:
    """The real runs, and what the views showed of them in the browser (written by views.spec.ts)."""

    results: Path
    shown: Path
    base_run: str
    other_run: str


@pytest.fixture(scope="module")
def shown_views(tmp_path_factory: pytest.TempPathFactory) -> ShownViews:
    """Two real SmolLM2 runs, served by `tokenlens ui` and read in Chromium once for every test here."""
    require_tools()
    build_web_app()
    root = tmp_path_factory.mktemp("views")
    results = root / "results"
    prompts_file = root / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    make_runs(results, prompts_file)
    out = root / "shown"
    out.mkdir()
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    base_run, other_run = list(RUNS)

    with running_ui(str(results)) as base_url:
        env = {
            **os.environ,
            "TOKENLENS_UI_URL": base_url,
            "TOKENLENS_E2E_RUNS": f"{base_run},{other_run}",
            "TOKENLENS_E2E_VIEWS_OUT": str(out),
            "TOKENLENS_E2E_ARTIFACTS": str(ARTIFACTS_DIR),
            "CHROMIUM_PATH": CHROMIUM,
            "CI": "1",
        }
        done = subprocess.run(
            ["npx", "playwright", "test", "e2e/views.spec.ts"],
            cwd=WEB_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    sys.stdout.write(done.stdout[-4000:])
    assert done.returncode == 0, f"the Playwright spec failed:\n{done.stdout[-12000:]}\n{done.stderr[-4000:]}"
    assert "2 passed" in done.stdout
    return ShownViews(results, out, base_run, other_run)


def test_the_views_in_a_browser_show_the_core_numbers(shown_views: ShownViews) -> None:
    results, out = shown_views.results, shown_views.shown
    base_run, other_run = shown_views.base_run, shown_views.other_run
    core = RunViewCache(LocalStorage(results))
    insights = json.loads((out / "insights.json").read_text())
    check_importance(insights["tokens"], core.importance(base_run, limit=50), base_run)
    words = core.importance(base_run, level="word", limit=50)
    check_importance(json.loads((out / "words.json").read_text()), words, base_run)
    # SmolLM2 splits some of these prompts' words into several tokens: the word table is not the token table.
    assert {row["token"] for row in words["tokens"]} != {row["token"] for row in insights["tokens"]}

    attention = core.attention(base_run)
    for kind in ("prompt", "template", "generated"):
        shown_share = float(insights["overall"][kind].rstrip("%")) / 100
        assert abs(shown_share - attention["overall"][kind]) <= ONE_DECIMAL_PERCENT, kind
    assert attention["overall"]["template"] > 0  # SmolLM2's chat template is there, and draws attribution
    for row in attention["distance"]:  # buckets past the farthest source are not drawn
        shown_share = insights["distance"].get(row["bucket"], "0%")
        assert abs(float(shown_share.rstrip("%")) / 100 - row["share"]) <= ONE_DECIMAL_PERCENT, row
    assert "1" in insights["distance"] and len(insights["distance"]) < len(attention["distance"])

    groups = [g for g in core.performance()["groups"] if base_run in g["runs"]]
    assert len(groups) == 1 and insights["performance"]["method"] == groups[0]["method"]
    assert set(insights["performance"]["phases"]) == set(groups[0]["phases"])
    for phase, cost in groups[0]["phases"].items():
        value, tolerance = seconds_shown(insights["performance"]["phases"][phase])
        assert abs(value - cost["per_prompt_s"]) <= tolerance, phase

    agreement = core.agreement(base_run, other_run)
    shown_agreement = json.loads((out / "agreement.json").read_text())
    assert int(shown_agreement["compared"]) == agreement["compared"] == len(PROMPTS)
    assert abs(float(shown_agreement["spearman_mean"]) - agreement["spearman"]["mean"]) <= THREE_DECIMALS
    assert abs(float(shown_agreement["spearman_median"]) - agreement["spearman"]["median"]) <= THREE_DECIMALS
    assert abs(float(shown_agreement["overlap_mean"]) - agreement["top_k_overlap"]["mean"]) <= THREE_DECIMALS
    assert [row["prompt_id"] for row in shown_agreement["disagree"]] == [
        row["prompt_id"] for row in agreement["disagree_most"]
    ]
    for name in ("insights-page.png", "agreement-page.png"):
        assert (ARTIFACTS_DIR / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_token_importance_on_screen_is_the_exports(shown_views: ShownViews) -> None:
    """Token totals from the export's table (tokenlens.open_run) equal the Insights page's.

    An occurrence's a(j) is the mean |normalized_score| over the output rows of its source column; a token's
    total sums a(j) over its occurrences (tokenlens/run_views.py's definition, here from the export's rows).
    """
    run_dataset = pytest.importorskip("tokenlens.run_dataset", reason="tokenlens.open_run comes with the export")
    table = run_dataset.open_run(str(shown_views.results), shown_views.base_run).to_pandas(level="token")
    sources = table[(table["source_kind"] == "prompt") & ~table["source_is_template"]].copy()
    sources["magnitude"] = sources["normalized_score"].abs().astype("float64")
    received = sources.groupby(["prompt_id", "source_position", "source_clean_token"])["magnitude"].mean()
    totals: dict[str, float] = {}
    for (_prompt, _position, clean), value in received.items():
        text = str(clean).strip()
        totals[text] = totals.get(text, 0.0) + float(value)
    shown = json.loads((shown_views.shown / "insights.json").read_text())["tokens"]
    assert shown, "the page showed no tokens"
    for row in shown:
        assert abs(float(row["total"]) - totals[row["token"]]) <= THREE_DECIMALS + 1e-6, row
