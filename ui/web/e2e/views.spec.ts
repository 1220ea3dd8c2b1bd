// The run-level views (Insights, Agreement) in a real browser, on real SmolLM2 runs. tests/ui/test_e2e_views.py
// makes the runs, starts `tokenlens ui` and runs this spec alone with, besides playwright.config.ts's variables:
//   TOKENLENS_E2E_VIEWS_OUT   a folder where this spec writes what the pages show (insights.json, agreement.json);
//                             the Python test compares those numbers with tokenlens/run_views.py's own.
// Without it (the other browser test runs every spec) this spec is skipped.
import { expect, test, type Locator, type Page } from "@playwright/test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

const outDir = process.env.TOKENLENS_E2E_VIEWS_OUT ?? "";
const [baseRun, otherRun] = (process.env.TOKENLENS_E2E_RUNS ?? "").split(",");
const artifacts = process.env.TOKENLENS_E2E_ARTIFACTS ?? "../../tests/artifacts";

test.skip(!outDir, "run by tests/ui/test_e2e_views.py, which sets TOKENLENS_E2E_VIEWS_OUT");

const text = async (locator: Locator) => ((await locator.textContent()) ?? "").trim();

async function tableRows(table: Locator): Promise<Locator[]> {
  return table.locator("tbody tr").all();
}

async function readImportance(page: Page) {
  const importance = page.getByTestId("importance-table");
  const tokens = [];
  for (const row of await tableRows(importance)) {
    tokens.push({
      token: await row.getAttribute("data-token"),
      score: await text(row.locator('[data-field="score"]')),
      total: await text(row.locator('[data-field="total"]')),
      count: await text(row.locator('[data-field="count"]')),
      links: await row.locator("td.links a").evaluateAll((links) => links.map((a) => a.getAttribute("href"))),
    });
  }
  return tokens;
}

async function readInsights(page: Page) {
  const tokens = await readImportance(page);
  const overall: Record<string, string> = {};
  for (const share of await page.getByTestId("attention-overall").locator("[data-kind]").all()) {
    overall[(await share.getAttribute("data-kind")) ?? ""] = await text(share.locator("dd"));
  }
  const distance: Record<string, string> = {};
  for (const row of await tableRows(page.getByTestId("distance-table"))) {
    distance[(await row.getAttribute("data-bucket")) ?? ""] = await text(row.locator("td").last());
  }
  const current = page.getByTestId("performance-table").locator('tr[data-current="yes"]');
  await expect(current).toHaveCount(1);
  const phases: Record<string, string> = {};
  for (const cell of await current.locator("td[data-phase]").all()) {
    phases[(await cell.getAttribute("data-phase")) ?? ""] = await cell.evaluate(
      (td) => td.firstChild?.textContent?.trim() ?? "",
    );
  }
  return { tokens, overall, distance, performance: { method: await current.getAttribute("data-method"), phases } };
}

test("the Insights page shows the run's token importance, attention and performance", async ({ page }) => {
  await page.goto(`/runs/${baseRun}`);
  await page.getByRole("link", { name: "Insights: the whole run" }).click();
  await expect(page).toHaveURL(new RegExp(`/insights/${baseRun}$`));
  await expect(page.getByTestId("importance-table").locator("tbody tr").first()).toBeVisible();
  await expect(page.getByTestId("attention-chart").locator(".share-column").first()).toBeVisible();
  await expect(page.getByTestId("performance-table")).toBeVisible();
  const shown = await readInsights(page);
  expect(shown.tokens.length).toBeGreaterThan(3);
  writeFileSync(join(outDir, "insights.json"), JSON.stringify(shown, null, 2));
  await page.screenshot({ path: join(artifacts, "insights-page.png"), fullPage: true });

  // Words: the same table, grouped by tokenlens/words.py.
  await page.getByRole("button", { name: "Words" }).click();
  await expect(page).toHaveURL(/\?level=word$/);
  await expect(page.getByRole("columnheader", { name: "Word" })).toBeVisible();
  const words = await readImportance(page);
  expect(words.length).toBeGreaterThan(3);
  writeFileSync(join(outDir, "words.json"), JSON.stringify(words, null, 2));

  // A token's link opens the prompt where it matters most.
  const firstLink = page.getByTestId("importance-table").locator("tbody tr").first().locator("td.links a").first();
  const promptId = await text(firstLink);
  await firstLink.click();
  await expect(page).toHaveURL(new RegExp(`/runs/${baseRun}/${promptId}$`));
  await expect(page.getByRole("heading", { level: 1 })).toBeVisible();
});

test("the Agreement page compares the two runs and links to where they disagree most", async ({ page }) => {
  await page.goto(`/insights/${baseRun}`);
  await page.getByRole("link", { name: "Agreement with another run" }).click();
  await page.getByRole("combobox", { name: "Second run" }).selectOption(otherRun);
  const summary = page.getByTestId("agreement-summary");
  await expect(summary).toBeVisible();
  const field = (name: string) => text(summary.locator(`[data-field="${name}"] dd`));
  const disagree = [];
  for (const row of await tableRows(page.getByTestId("disagree-table"))) {
    disagree.push({
      prompt_id: await row.getAttribute("data-prompt"),
      spearman: await text(row.locator('[data-field="spearman"]')),
    });
  }
  const shown = {
    compared: await field("compared"),
    spearman_mean: await field("spearman-mean"),
    spearman_median: await field("spearman-median"),
    overlap_mean: await field("overlap-mean"),
    disagree,
  };
  writeFileSync(join(outDir, "agreement.json"), JSON.stringify(shown, null, 2));
  await page.screenshot({ path: join(artifacts, "agreement-page.png"), fullPage: true });
  await page.getByTestId("disagree-table").locator("tbody tr").first().getByRole("link", { name: "side by side" }).click();
  await expect(page).toHaveURL(new RegExp(`/compare/${baseRun}/`));
});
