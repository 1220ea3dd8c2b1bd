// The token / word / sentence toggle in a real browser, on a real SmolLM2 result (tests/ui/test_e2e_words.py
// makes it and sets TOKENLENS_E2E_WORDS_RUN). The expected group counts are computed here from the file's own
// word and sentence marks, independently of the app's code. Skipped when the variable is not set (the other
// browser test runs every spec).
import { expect, test } from "@playwright/test";
import { readFileSync } from "node:fs";
import { join } from "node:path";

interface Token {
  clean_token: string;
  is_template?: boolean;
  word?: number;
  sentence?: number;
}
interface ResultFile {
  data: { input_tokens: Token[]; output_tokens: Token[] };
}

const resultsDir = process.env.TOKENLENS_E2E_RESULTS ?? "";
const run = process.env.TOKENLENS_E2E_WORDS_RUN ?? "";
const prompt = process.env.TOKENLENS_E2E_WORDS_PROMPT ?? "";
const artifacts = process.env.TOKENLENS_E2E_ARTIFACTS ?? "../../tests/artifacts";

/** Visible (non-template) groups of consecutive tokens sharing a mark; "token" counts tokens. */
function visibleGroups(tokens: Token[], level: "token" | "word" | "sentence"): number {
  let count = 0;
  let previous: number | undefined;
  let groupTemplate = true;
  const close = () => {
    if (!groupTemplate) count += 1;
  };
  tokens.forEach((token, index) => {
    const mark = level === "token" ? index : token[level];
    if (index > 0 && mark === previous) {
      groupTemplate = groupTemplate && Boolean(token.is_template);
    } else {
      if (index > 0) close();
      groupTemplate = Boolean(token.is_template);
    }
    previous = mark;
  });
  if (tokens.length > 0) close();
  return count;
}

test("the word toggle regroups the heat map of a real result", async ({ page }) => {
  test.skip(!run || !resultsDir, "set TOKENLENS_E2E_WORDS_RUN (tests/ui/test_e2e_words.py does)");
  const file = JSON.parse(
    readFileSync(join(resultsDir, "runs", run, "results", `${prompt}.json`), "utf-8"),
  ) as ResultFile;
  const { input_tokens: inputs, output_tokens: outputs } = file.data;
  expect(inputs.every((t) => typeof t.word === "number" && typeof t.sentence === "number")).toBe(true);
  await page.goto(`/runs/${run}/${prompt}`);
  const size = (level: "token" | "word" | "sentence", unit: string) => {
    const rows = visibleGroups(outputs, level);
    const columns = visibleGroups(inputs, level) + rows;
    return `${rows} output × ${columns} source ${unit}`;
  };
  await expect(page.getByText(size("token", "tokens"))).toBeVisible();
  await page.getByRole("radio", { name: "Words" }).check();
  await expect(page.getByText(size("word", "words"))).toBeVisible();
  expect(visibleGroups(inputs, "word")).toBeLessThan(visibleGroups(inputs, "token"));
  await page.screenshot({ path: `${artifacts}/result-words.png`, fullPage: true });
  await page.getByRole("radio", { name: "Sentences" }).check();
  await expect(page.getByText(size("sentence", "sentences"))).toBeVisible();
  await page.getByRole("radio", { name: "Tokens" }).check();
  await expect(page.getByText(size("token", "tokens"))).toBeVisible();
});
