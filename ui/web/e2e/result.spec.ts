// The UI in a real browser, on real runs made by `tokenlens run` on SmolLM2 (see playwright.config.ts for the
// environment). What the page highlights is checked against the TokenLens files on disk, computed here
// independently of the app's code.
import { expect, test, type Page } from "@playwright/test";
import { readFileSync } from "node:fs";
import { join } from "node:path";

interface Token {
  token: string;
  clean_token: string;
  is_template?: boolean;
}
interface ResultFile {
  metadata: { prompt: string; attribution_method: string; llm_id: string };
  data: { input_tokens: Token[]; output_tokens: Token[]; association_matrix: number[][] };
}

const resultsDir = process.env.TOKENLENS_E2E_RESULTS ?? "";
const [baseRun, otherRun] = (process.env.TOKENLENS_E2E_RUNS ?? "").split(",");
const bigRun = process.env.TOKENLENS_E2E_BIG_RUN ?? "";
const pagedRun = process.env.TOKENLENS_E2E_PAGED_RUN ?? "";
const artifacts = process.env.TOKENLENS_E2E_ARTIFACTS ?? "../../tests/artifacts";

test.beforeAll(() => {
  if (!resultsDir || !baseRun || !otherRun || !bigRun || !pagedRun) {
    throw new Error(
      "set TOKENLENS_E2E_RESULTS, TOKENLENS_E2E_RUNS=run1,run2, TOKENLENS_E2E_BIG_RUN and TOKENLENS_E2E_PAGED_RUN " +
        "(tests/ui/test_e2e_browser.py does)",
    );
  }
});

function readResult(runId: string, promptId: string): ResultFile {
  return JSON.parse(readFileSync(join(resultsDir, "runs", runId, "results", `${promptId}.json`), "utf-8"));
}

async function firstDonePrompt(page: Page, runId: string): Promise<string> {
  const response = await page.request.get(`/api/runs/${runId}`);
  expect(response.ok()).toBe(true);
  const body = (await response.json()) as { prompts: { prompt_id: string; status: string }[] };
  const done = body.prompts.find((p) => p.status === "done");
  if (!done) throw new Error(`run ${runId} has no finished prompt`);
  return done.prompt_id;
}

/**
 * What the page should show for output `row` with template tokens hidden (the default): the strength of each
 * visible input token, |score| over the largest |score| among the row's visible sources (the same as with the
 * normalised row, which is the raw row over one number; files store only the raw scores).
 */
function expectedInputStrengths(file: ResultFile, row: number): Map<number, number> {
  const { input_tokens: inputs, output_tokens: outputs, association_matrix: matrix } = file.data;
  const nIn = inputs.length;
  const visible = (column: number) =>
    column < nIn + row && !(column < nIn ? inputs[column] : outputs[column - nIn]).is_template;
  let peak = 0;
  matrix[row].forEach((value, column) => {
    if (visible(column)) peak = Math.max(peak, Math.abs(value));
  });
  const strengths = new Map<number, number>();
  for (let column = 0; column < nIn; column++) {
    if (visible(column)) strengths.set(column, peak > 0 ? Math.abs(matrix[row][column]) / peak : 0);
  }
  return strengths;
}

/** The first visible output row whose strongest visible source is an input token (a clear case to check). */
function rowToCheck(file: ResultFile): number {
  const { output_tokens: outputs } = file.data;
  for (let row = 0; row < outputs.length; row++) {
    if (outputs[row].is_template) continue;
    const inputs = expectedInputStrengths(file, row);
    if ([...inputs.values()].some((s) => s === 1)) return row;
  }
  throw new Error("no output token whose strongest source is an input token");
}

const strongest = (strengths: Map<number, number>) =>
  [...strengths.entries()].reduce((best, entry) => (entry[1] > best[1] ? entry : best))[0];

test("the runs list shows both runs, finished", async ({ page }) => {
  await page.goto("/");
  for (const runId of [baseRun, otherRun]) {
    const row = page.locator(`tr[data-run="${runId}"]`);
    await expect(row).toBeVisible();
    await expect(row.getByText("complete", { exact: true })).toBeVisible();
  }
});

test("the run page lists the prompts and finds one by its text", async ({ page }) => {
  const promptId = await firstDonePrompt(page, baseRun);
  const file = readResult(baseRun, promptId);
  await page.goto(`/runs/${baseRun}`);
  await expect(page.locator("tbody tr").first()).toBeVisible();
  const word = file.metadata.prompt.split(/\s+/).find((w) => w.length > 3) ?? file.metadata.prompt;
  await page.getByRole("searchbox").fill(word);
  await expect(page.locator(`tr[data-prompt="${promptId}"]`)).toBeVisible();
  await expect(page).toHaveURL(/\?q=/);
  await page.locator(`tr[data-prompt="${promptId}"] a`, { hasText: promptId }).click();
  await expect(page).toHaveURL(new RegExp(`/runs/${baseRun}/${promptId}$`));
});

test("a large run's page shows 100 rows at a time, filtered and searched on the server", async ({ page }) => {
  const rows = page.locator("tbody tr");
  await page.goto(`/runs/${pagedRun}`);
  await expect(rows).toHaveCount(100);
  await expect(rows.first()).toHaveAttribute("data-prompt", "q0000");
  await expect(page.getByText(/1–100 of 250/)).toBeVisible();
  await page.getByRole("button", { name: "Next" }).click();
  await expect(page).toHaveURL(/\?page=2$/);
  await expect(rows.first()).toHaveAttribute("data-prompt", "q0100");
  await page.getByRole("group", { name: /filter by status/i }).getByRole("button", { name: /Pending/ }).click();
  await expect(page).toHaveURL(/\?status=pending$/);
  await expect(rows).toHaveCount(50);
  await expect(rows.first()).toHaveAttribute("data-prompt", "q0200");
  await expect(page.locator('tbody tr[data-status="pending"]')).toHaveCount(50);
  await page.getByRole("searchbox").fill("number 217,");
  await expect(rows).toHaveCount(1);
  await expect(rows.first()).toHaveAttribute("data-prompt", "q0217");
  // No prompt-id list travels with a page.
  const body = await (await page.request.get(`/api/runs/${pagedRun}?limit=5`)).json();
  expect(body.manifest.prompt_ids).toBeUndefined();
  expect(body.prompts).toHaveLength(5);
});

test("hovering an output token highlights its sources as in the file, strongest most", async ({ page }) => {
  const promptId = await firstDonePrompt(page, baseRun);
  const file = readResult(baseRun, promptId);
  const row = rowToCheck(file);
  const expected = expectedInputStrengths(file, row);
  const strongestColumn = strongest(expected);

  await page.goto(`/runs/${baseRun}/${promptId}`);
  await page.locator(`.tokens-output [data-row="${row}"]`).hover();
  await expect(page.getByTestId("top-sources")).toHaveAttribute("data-row", String(row));

  // Interaction two (reading): the strongest input is ranked first and marked in the text.
  await expect(page.getByTestId("top-sources").locator("li").first()).toHaveAttribute("data-col", String(strongestColumn));
  const marked = page.locator(".tokens-input .tok-strongest");
  await expect(marked).toHaveCount(1);
  await expect(marked).toHaveAttribute("data-col", String(strongestColumn));

  // Every input chip's strength is the file's, and the strongest source is the most highlighted.
  const chips = await page.locator(".tokens-input [data-col]").evaluateAll((elements) =>
    elements.map((el) => ({ column: Number(el.getAttribute("data-col")), strength: Number(el.getAttribute("data-strength")) })),
  );
  expect(chips.length).toBe(expected.size);
  const threshold = Number(await page.getByLabel("Threshold").inputValue());
  for (const chip of chips) {
    const want = expected.get(chip.column);
    expect(want, `input column ${chip.column} should be visible`).not.toBeUndefined();
    expect(chip.strength).toBeCloseTo(want! >= threshold ? want! : 0, 3);
  }
  const brightest = chips.reduce((best, chip) => (chip.strength > best.strength ? chip : best));
  expect(brightest.column).toBe(strongestColumn);
  expect(brightest.strength).toBeCloseTo(1, 3);

  // The highlight really is drawn: the strongest chip wears the scale's top colour, viridis(1).
  await expect(marked).toHaveCSS("background-color", "rgb(253, 231, 37)");

  // A click pins: the selection survives the pointer leaving, and lands in the URL.
  await page.locator(`.tokens-output [data-row="${row}"]`).click();
  await page.mouse.move(5, 5);
  await expect(page.getByTestId("top-sources")).toHaveAttribute("data-row", String(row));
  await expect(page).toHaveURL(new RegExp(`\\?t=${row}$`));

  await page.screenshot({ path: join(artifacts, "result-page.png"), fullPage: true });
});

test("the token view works from the keyboard", async ({ page }) => {
  const promptId = await firstDonePrompt(page, baseRun);
  await page.goto(`/runs/${baseRun}/${promptId}`);
  const first = page.locator(".tokens-output [role=option][tabindex='0']");
  await first.focus();
  const row = Number(await first.getAttribute("data-row"));
  await expect(page.getByTestId("top-sources")).toHaveAttribute("data-row", String(row));
  await page.keyboard.press("ArrowRight");
  const next = page.locator(".tokens-output [role=option]:focus");
  const nextRow = Number(await next.getAttribute("data-row"));
  expect(nextRow).toBeGreaterThan(row);
  await expect(page.getByTestId("top-sources")).toHaveAttribute("data-row", String(nextRow));
  await page.keyboard.press("Enter");
  await expect(next).toHaveAttribute("aria-selected", "true");
});

test("the heat map shows a tooltip naming both tokens, and downloads work", async ({ page }) => {
  const promptId = await firstDonePrompt(page, baseRun);
  const file = readResult(baseRun, promptId);
  await page.goto(`/runs/${baseRun}/${promptId}`);
  const canvas = page.getByTestId("heatmap-canvas");
  await expect(canvas).toBeVisible();
  const box = await canvas.boundingBox();
  if (!box) throw new Error("the heat map has no box");
  // The first cell sits just inside the label gutters (124 px left, 92 px top).
  await page.mouse.move(box.x + 126, box.y + 94);
  const tooltip = page.getByTestId("heatmap-tooltip");
  await expect(tooltip).toBeVisible();
  await expect(tooltip).toContainText("output #");
  await expect(tooltip).toContainText(/input #\d+/);
  await expect(tooltip).toContainText("normalized");

  const [json] = await Promise.all([page.waitForEvent("download"), page.getByRole("link", { name: "Download JSON" }).click()]);
  const downloaded = JSON.parse(readFileSync(await json.path(), "utf-8"));
  expect(downloaded).toEqual(file);

  const [png] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download PNG" }).click()]);
  expect(png.suggestedFilename()).toBe(`${baseRun}_${promptId}_heatmap.png`);
  const bytes = readFileSync(await png.path());
  expect([...bytes.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  expect(bytes.length).toBeGreaterThan(2000);
});

test("compare shows both runs side by side with one shared selection", async ({ page }) => {
  const promptId = await firstDonePrompt(page, baseRun);
  const files = [readResult(baseRun, promptId), readResult(otherRun, promptId)];
  const row = rowToCheck(files[0]);

  await page.goto(`/runs/${baseRun}/${promptId}`);
  await page.getByRole("link", { name: "Compare runs" }).click();
  await expect(page).toHaveURL(new RegExp(`/compare/${baseRun}/${promptId}`));
  const panels = page.locator(".compare-panel");
  await expect(panels).toHaveCount(2);
  await expect(panels.nth(0)).toHaveAttribute("data-run", baseRun);
  await expect(panels.nth(1)).toHaveAttribute("data-run", otherRun);
  await expect(panels.nth(1)).toContainText(files[1].metadata.attribution_method);

  await panels.nth(0).locator(`.tokens-output [data-row="${row}"]`).click();
  for (let k = 0; k < 2; k++) {
    const top = panels.nth(k).getByTestId("top-sources");
    await expect(top).toHaveAttribute("data-row", String(row));
    // Each panel ranks first the strongest source in its own file (input or earlier output, template hidden).
    const file = files[k];
    const nIn = file.data.input_tokens.length;
    const values = file.data.association_matrix[row]; // the same ranking as the normalised row
    let best = -1;
    values.forEach((value, column) => {
      const token = column < nIn ? file.data.input_tokens[column] : file.data.output_tokens[column - nIn];
      if (column < nIn + row && !token.is_template && (best < 0 || Math.abs(value) > Math.abs(values[best]))) best = column;
    });
    await expect(top.locator("li").first()).toHaveAttribute("data-col", String(best));
  }
  await expect(page).toHaveURL(new RegExp(`t=${row}`));
  await page.screenshot({ path: join(artifacts, "compare-page.png"), fullPage: true });
});

test("a large result loads without freezing the page", async ({ page }) => {
  // Long tasks (main-thread work over 50 ms) are what a person feels as a frozen page.
  await page.addInitScript(() => {
    const w = window as unknown as { longTasks: number[] };
    w.longTasks = [];
    new PerformanceObserver((list) => list.getEntries().forEach((e) => w.longTasks.push(e.duration))).observe({
      type: "longtask",
      buffered: true,
    });
  });
  await page.goto(`/runs/${bigRun}/long`);
  await expect(page.getByTestId("heatmap-canvas")).toBeVisible({ timeout: 60_000 });
  const chips = page.locator(".tokens-output [role=option]");
  const count = await chips.count();
  expect(count).toBeGreaterThan(100);
  const last = chips.nth(count - 1);
  await last.hover();
  await expect(page.getByTestId("top-sources")).toHaveAttribute("data-row", (await last.getAttribute("data-row")) ?? "");
  const longest = await page.evaluate(() => Math.max(0, ...(window as unknown as { longTasks: number[] }).longTasks));
  console.log(`longest main-thread task while loading and hovering the large result: ${Math.round(longest)} ms`);
  expect(longest).toBeLessThan(2000);
  await page.screenshot({ path: join(artifacts, "large-result.png") });
});
