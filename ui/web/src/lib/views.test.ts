// The pure helpers of the run-level views (lib/views.ts).
import { describe, expect, it } from "vitest";
import { paths, matchRoute } from "./router";
import {
  agreementCandidates,
  barFractions,
  fixed,
  importanceLevel,
  percent,
  phaseColumns,
  seconds,
  withoutEmptyTail,
  type PerformanceGroup,
} from "./views";

const group = (phases: string[]): PerformanceGroup => ({
  model: "m",
  method: "saliency",
  device: "cpu",
  runs: ["r"],
  prompts: 1,
  output_tokens: 2,
  phases: Object.fromEntries(phases.map((p) => [p, { per_prompt_s: 1, per_output_token_s: 0.5, prompts: 1 }])),
});

describe("view helpers", () => {
  it("formats numbers, shares and seconds", () => {
    expect(fixed(1.23456)).toBe("1.235");
    expect(fixed(null)).toBe("–");
    expect(fixed(Number.NaN)).toBe("–");
    expect(percent(0.1234)).toBe("12.3%");
    expect(seconds(0.0123)).toBe("12.3 ms");
    expect(seconds(2.5)).toBe("2.50 s");
    expect(seconds(null)).toBe("–");
  });

  it("scales bars to the largest value and never below zero", () => {
    expect(barFractions([1, 2, 4])).toEqual([0.25, 0.5, 1]);
    expect(barFractions([0, 0])).toEqual([0, 0]);
    expect(barFractions([-1, 2])).toEqual([0, 1]);
  });

  it("drops the distance buckets past the farthest one with attribution", () => {
    const rows = [0.5, 0, 0.5, 0, 0].map((share, k) => ({ bucket: String(k), share }));
    expect(withoutEmptyTail(rows).map((r) => r.bucket)).toEqual(["0", "1", "2"]);
    expect(withoutEmptyTail([{ share: 0 }])).toEqual([{ share: 0 }]);
  });

  it("puts every recorded phase in the table, total last", () => {
    expect(phaseColumns([group(["total", "forward"]), group(["generation"])])).toEqual([
      "forward",
      "generation",
      "total",
    ]);
  });

  it("offers runs with the same prompt count first and never the run itself or an unreadable one", () => {
    const runs = [
      { run_id: "self", prompt_count: 3, created_at: "2026-01-03" },
      { run_id: "old-same", prompt_count: 3, created_at: "2026-01-01" },
      { run_id: "new-other", prompt_count: 9, created_at: "2026-01-05" },
      { run_id: "new-same", prompt_count: 3, created_at: "2026-01-04" },
      { run_id: "broken", prompt_count: 0, created_at: "", error: "unreadable run.json" },
    ];
    expect(agreementCandidates(runs, "self").map((r) => r.run_id)).toEqual(["new-same", "old-same", "new-other"]);
  });

  it("reads the importance level from the URL, tokens unless words are asked for", () => {
    expect(importanceLevel("word")).toBe("word");
    expect(importanceLevel("sentence")).toBe("token");
    expect(importanceLevel(null)).toBe("token");
  });

  it("routes the insights and agreement pages", () => {
    expect(matchRoute(paths.insights("run a"))).toEqual({ page: "insights", runId: "run a" });
    expect(matchRoute("/agreement/run-a")).toEqual({ page: "agreement", runId: "run-a" });
    expect(paths.agreement("a", "b/c")).toBe("/agreement/a?with=b%2Fc");
  });
});
