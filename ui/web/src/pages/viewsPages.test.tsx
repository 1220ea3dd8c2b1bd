// The Insights and Agreement pages against a stubbed fetch that answers like ui/run_views_api.py (whose real
// answers tests/ui/test_run_views_api.py checks against tokenlens/run_views.py).
import { fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { App } from "../App";
import type { AgreementView, AttentionView, ImportanceView, PerformanceView } from "../lib/views";
import { jsonResponse } from "../testFixtures";

const importance: ImportanceView = {
  run_id: "run-a",
  prompts: 2,
  unreadable: [{ prompt_id: "bad", error: "runs/run-a/results/bad.json: malformed JSON" }],
  level: "token",
  formula: "…",
  prior_count: 5,
  mean_per_occurrence: 0.4,
  distinct_tokens: 2,
  tokens: [
    { token: "fox", score: 1.23456, total: 2.5, count: 3, mean: 0.8, top_prompts: [{ prompt_id: "p2", score: 1 }] },
    { token: "the", score: 0.5, total: 4, count: 10, mean: 0.4, top_prompts: [{ prompt_id: "p1", score: 0.5 }] },
  ],
};
const attention: AttentionView = {
  run_id: "run-a",
  prompts: 2,
  unreadable: [],
  overall: { prompt: 0.625, template: 0.125, generated: 0.25, rows: 8 },
  by_position: [{ position: 0, rows: 2, prompt: 0.75, template: 0.25, generated: 0 }],
  distance: [
    { bucket: "1", share: 0.5 },
    { bucket: "2", share: 0.5 },
  ],
};
const performance: PerformanceView = {
  groups: [
    {
      model: "m",
      method: "saliency",
      device: "cpu",
      runs: ["run-a"],
      prompts: 2,
      output_tokens: 8,
      phases: { total: { per_prompt_s: 2, per_output_token_s: 0.5, prompts: 2 } },
    },
  ],
  skipped_runs: [],
};
const agreement: AgreementView = {
  run_id: "run-a",
  other_run_id: "run-b",
  top_k: 5,
  compared: 2,
  not_compared: { "different input tokens (another tokenizer or template)": 1 },
  only_in_run: 0,
  only_in_other: 1,
  spearman: { mean: 0.25, median: 0.25 },
  top_k_overlap: { mean: 0.6 },
  histogram: [
    { low: -1, high: 0, count: 1 },
    { low: 0, high: 1, count: 1 },
  ],
  disagree_most: [{ prompt_id: "p1", spearman: -0.5, top_k_overlap: 0.2, rows: 4 }],
};

let routes: Record<string, () => Response>;
let calls: string[];

beforeEach(() => {
  calls = [];
  routes = {
    "/api/health": () => jsonResponse({ status: "ok", results_url: "/r" }),
    "/api/runs": () =>
      jsonResponse({
        results_url: "/r",
        runs: [
          { run_id: "run-a", model: "m", method: "saliency", prompt_count: 3, created_at: "2026-01-01" },
          { run_id: "run-b", model: "m", method: "ig", prompt_count: 3, created_at: "2026-01-02" },
        ],
      }),
    "/api/views/run-a/importance": () => jsonResponse(importance),
    "/api/views/run-a/attention": () => jsonResponse(attention),
    "/api/views/performance": () => jsonResponse(performance),
    "/api/views/run-a/agreement?with=run-b": () => jsonResponse(agreement),
  };
  vi.stubGlobal(
    "fetch",
    vi.fn(async (input: RequestInfo | URL) => {
      const url = new URL(String(input), "http://localhost");
      calls.push(url.pathname + url.search);
      const key = url.pathname + (url.pathname.endsWith("/agreement") ? url.search : "");
      const route = routes[key];
      return route ? route() : jsonResponse({ error: `no such thing: ${key}` }, 404);
    }),
  );
});

afterEach(() => {
  vi.unstubAllGlobals();
  window.history.replaceState(null, "", "/");
});

describe("insights page", () => {
  it("shows token importance with links to prompts, attention shares and the performance table", async () => {
    window.history.replaceState(null, "", "/insights/run-a");
    render(<App />);
    const table = await screen.findByTestId("importance-table");
    const fox = within(table).getByText("fox").closest("tr")!;
    expect(within(fox).getByText("1.235")).toBeTruthy();
    expect(within(fox).getByRole("link", { name: "p2" }).getAttribute("href")).toBe("/runs/run-a/p2");
    expect(screen.getByText(/1 result file\(s\) could not be read/)).toBeTruthy();
    const overall = await screen.findByTestId("attention-overall");
    expect(within(overall).getByText("62.5%")).toBeTruthy();
    expect(within(overall).getByText("12.5%")).toBeTruthy();
    const perf = await screen.findByTestId("performance-table");
    const row = perf.querySelector('tr[data-current="yes"]')!;
    expect(within(row as HTMLElement).getByText("2.00 s")).toBeTruthy();
    expect(within(row as HTMLElement).getByText("500.0 ms / token")).toBeTruthy();
  });

  it("ranks words instead of tokens on request, and keeps the choice in the URL", async () => {
    window.history.replaceState(null, "", "/insights/run-a");
    render(<App />);
    await screen.findByTestId("importance-table");
    expect(calls).toContain("/api/views/run-a/importance?level=token&limit=50");
    fireEvent.click(screen.getByRole("button", { name: "Words" }));
    expect(window.location.search).toBe("?level=word");
    await screen.findByRole("columnheader", { name: "Word" });
    expect(calls).toContain("/api/views/run-a/importance?level=word&limit=50");
    expect(screen.getByRole("button", { name: "Words" }).getAttribute("aria-pressed")).toBe("true");
  });

  it("says what went wrong when the run does not exist", async () => {
    routes["/api/views/run-a/importance"] = () => jsonResponse({ error: "run 'run-a' not found under /r" }, 404);
    window.history.replaceState(null, "", "/insights/run-a");
    render(<App />);
    expect(await screen.findByText("run 'run-a' not found under /r")).toBeTruthy();
  });
});

describe("agreement page", () => {
  it("compares with the run picked and links to where they disagree most", async () => {
    window.history.replaceState(null, "", "/agreement/run-a");
    render(<App />);
    const picker = await screen.findByRole("combobox", { name: "Second run" });
    await within(picker).findByText(/run-b/);
    expect(within(picker).queryByText(/^run-a /)).toBeNull();
    fireEvent.change(picker, { target: { value: "run-b" } });
    expect(window.location.search).toBe("?with=run-b");
    const summary = await screen.findByTestId("agreement-summary");
    expect(within(summary).getAllByText("0.250")).toHaveLength(2);
    expect(within(summary).getByText("0.600")).toBeTruthy();
    const worst = screen.getByTestId("disagree-table");
    expect(within(worst).getByRole("link", { name: "p1" }).getAttribute("href")).toBe("/runs/run-a/p1");
    expect(within(worst).getByText("-0.500")).toBeTruthy();
    expect(screen.getByText(/1 not compared: different input tokens/)).toBeTruthy();
  });
});
