// The pages against a stubbed fetch that answers like ui/http_api.py (whose real answers tests/ui/ checks).
import { act, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { App } from "../App";
import type { RunDetail, RunSummary } from "../lib/api";
import { forgetLoadedResults } from "../lib/loadResult";
import { catResult, jsonResponse } from "../testFixtures";

const summary = (patch: Partial<RunSummary>): RunSummary => ({
  run_id: "run-a",
  model: "test-model",
  method: "saliency",
  engine: "native",
  mode: "embedded",
  source: "prompts.jsonl",
  created_at: "2026-11-27T12:00:00Z",
  prompt_count: 3,
  done: 3,
  failed: 0,
  corrupt: 0,
  pending: 0,
  complete: true,
  ...patch,
});

const detail: RunDetail = {
  run: summary({ done: 1, failed: 1, pending: 1, complete: false }),
  manifest: { run_id: "run-a", method_params: { attributed_fn: "logprob" } },
  total: 3,
  offset: 0,
  limit: 100,
  prompts: [
    { prompt_id: "p1", status: "done", prompt: "The cat sat", error: null },
    {
      prompt_id: "p2",
      status: "failed",
      prompt: "A very long prompt",
      error: { error_type: "PromptTooLongError", message: "too long for the context window", attempts: 3, timestamp: "" },
    },
    { prompt_id: "p3", status: "pending", prompt: null, error: null },
  ],
};

/** Answers a run page like ui/http_api.py: `q` searched in text and id, `status` filtered, then offset/limit. */
const page =
  (run: RunDetail) =>
  (url: URL): Response => {
    const q = (url.searchParams.get("q") ?? "").toLowerCase();
    const status = url.searchParams.get("status");
    const offset = Number(url.searchParams.get("offset") ?? "0");
    const limit = Number(url.searchParams.get("limit") ?? "100");
    const matching = run.prompts.filter(
      (p) =>
        (!status || p.status === status) &&
        (!q || p.prompt_id.toLowerCase().includes(q) || (p.prompt ?? "").toLowerCase().includes(q)),
    );
    const rows = matching.slice(offset, offset + limit);
    return jsonResponse({ ...run, prompts: rows, total: matching.length, offset, limit });
  };

let routes: Record<string, (url: URL) => Response>;
let calls: string[];
let requested: URL[];

beforeEach(() => {
  calls = [];
  requested = [];
  routes = {
    "/api/health": () => jsonResponse({ status: "ok", results_url: "/data/results" }),
    "/api/runs": () => jsonResponse({ results_url: "/data/results", runs: [summary({})] }),
    "/api/runs/run-a": page(detail),
    "/api/runs/run-a/counts": () => jsonResponse({ run: detail.run }),
    "/api/runs/run-a/results/p1": () => jsonResponse(catResult()),
  };
  vi.stubGlobal(
    "fetch",
    vi.fn(async (input: RequestInfo | URL) => {
      const url = new URL(String(input), "http://localhost");
      const key = url.pathname + (url.pathname === "/api/compare" ? url.search : "");
      calls.push(key);
      requested.push(url);
      const route = routes[key];
      return route ? route(url) : jsonResponse({ error: `no such thing: ${key}` }, 404);
    }),
  );
  forgetLoadedResults();
});

afterEach(() => {
  vi.unstubAllGlobals();
  vi.useRealTimers();
  window.history.replaceState(null, "", "/");
});

const goTo = (path: string) => window.history.replaceState(null, "", path);

describe("runs page", () => {
  it("lists runs with their progress and links to each", async () => {
    goTo("/");
    render(<App />);
    const row = await screen.findByRole("link", { name: "run-a" });
    expect(row.getAttribute("href")).toBe("/runs/run-a");
    expect(screen.getByText("complete")).toBeTruthy();
    expect(screen.getByRole("progressbar").getAttribute("aria-label")).toBe("3 done, 0 failed, 0 pending");
  });

  it("polls while a run is in progress and shows the new counts", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    let done = 1;
    routes["/api/runs"] = () =>
      jsonResponse({ results_url: "/r", runs: [summary({ done, pending: 3 - done, complete: done === 3 })] });
    goTo("/");
    render(<App />);
    await screen.findByText("in progress");
    done = 3;
    await act(async () => {
      await vi.advanceTimersByTimeAsync(2500);
    });
    await screen.findByText("complete");
    expect(calls.filter((c) => c === "/api/runs").length).toBeGreaterThanOrEqual(2);
  });

  it("says a run with a corrupt result needs a resume, not more waiting", async () => {
    routes["/api/runs"] = () =>
      jsonResponse({ results_url: "/r", runs: [summary({ done: 2, corrupt: 1, pending: 0, complete: false })] });
    goTo("/");
    render(<App />);
    expect(await screen.findByText("corrupt: resume the run")).toBeTruthy();
    expect(screen.queryByText("in progress")).toBeNull();
  });

  it("says how to make a run when there is none", async () => {
    routes["/api/runs"] = () => jsonResponse({ results_url: "/empty", runs: [] });
    goTo("/");
    render(<App />);
    expect(await screen.findByText(/No runs under/)).toBeTruthy();
  });
});

describe("run page", () => {
  it("shows prompts with status and failure reasons", async () => {
    goTo("/runs/run-a");
    render(<App />);
    await screen.findByText("The cat sat");
    expect(screen.getByText("PromptTooLongError")).toBeTruthy();
    expect(screen.getByText(/too long for the context window/)).toBeTruthy();
    expect(screen.getByRole("link", { name: "p1" }).getAttribute("href")).toBe("/runs/run-a/p1");
    // Only finished prompts link to a result.
    expect(screen.queryByRole("link", { name: "p2" })).toBeNull();
  });

  it("searches by text and filters by status, keeping both in the URL", async () => {
    goTo("/runs/run-a");
    render(<App />);
    await screen.findByText("The cat sat");
    fireEvent.change(screen.getByRole("searchbox"), { target: { value: "cat" } });
    const rows = () => screen.getAllByRole("row").slice(1);
    await waitFor(() => expect(rows().map((r) => r.getAttribute("data-prompt"))).toEqual(["p1"]));
    expect(window.location.search).toBe("?q=cat");
    expect(requested.at(-1)?.searchParams.get("q")).toBe("cat"); // searched on the server
    fireEvent.change(screen.getByRole("searchbox"), { target: { value: "" } });
    fireEvent.click(within(screen.getByRole("group", { name: /filter by status/i })).getByRole("button", { name: /Failed/ }));
    await waitFor(() => expect(rows().map((r) => r.getAttribute("data-prompt"))).toEqual(["p2"]));
    expect(window.location.search).toBe("?status=failed");
    expect(requested.at(-1)?.searchParams.get("status")).toBe("failed");
  });

  it("pages through a large run on the server, 100 rows at a time", async () => {
    const many: RunDetail = {
      ...detail,
      run: summary({ prompt_count: 250, done: 250 }),
      prompts: Array.from({ length: 250 }, (_, i) => ({
        prompt_id: `q${String(i).padStart(3, "0")}`,
        status: "done" as const,
        prompt: `prompt number ${i}`,
        error: null,
      })),
    };
    routes["/api/runs/big"] = page(many);
    routes["/api/runs/big/counts"] = () => jsonResponse({ run: many.run });
    goTo("/runs/big");
    render(<App />);
    await screen.findByText("prompt number 0");
    expect(screen.getAllByRole("row")).toHaveLength(101);
    expect(screen.getByText(/1–100 of 250/)).toBeTruthy();
    fireEvent.click(screen.getByRole("button", { name: "Next" }));
    await screen.findByText("prompt number 100");
    expect(window.location.search).toBe("?page=2");
    expect(requested.at(-1)?.searchParams.get("offset")).toBe("100");
    expect(screen.queryByText("prompt number 0")).toBeNull();
  });

  it("polls only the counts while the run is in flight, and stops once it is cancelled", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    let cancelled = false;
    routes["/api/runs/run-a/counts"] = () => jsonResponse({ run: { ...detail.run, cancelled } });
    goTo("/runs/run-a");
    render(<App />);
    await screen.findByText("The cat sat");
    await act(async () => {
      await vi.advanceTimersByTimeAsync(2500);
    });
    const countsCalls = () => calls.filter((c) => c === "/api/runs/run-a/counts").length;
    expect(countsCalls()).toBeGreaterThanOrEqual(2);
    expect(calls.filter((c) => c === "/api/runs/run-a").length).toBe(1); // counts unchanged: the page is not re-read
    cancelled = true;
    await act(async () => {
      await vi.advanceTimersByTimeAsync(2500);
    });
    const atCancel = countsCalls();
    await act(async () => {
      await vi.advanceTimersByTimeAsync(10000);
    });
    expect(countsCalls()).toBe(atCancel);
    expect(screen.getByText("cancelled")).toBeTruthy();
  });

  it("lists a corrupt result under its own filter", async () => {
    routes["/api/runs/run-a"] = page({
      ...detail,
      prompts: [...detail.prompts, { prompt_id: "p4", status: "corrupt", prompt: "Cut off", error: null }],
    });
    goTo("/runs/run-a?status=corrupt");
    render(<App />);
    await screen.findByText("Cut off");
    const rows = screen.getAllByRole("row").slice(1);
    expect(rows.map((r) => r.getAttribute("data-status"))).toEqual(["corrupt"]);
    expect(within(rows[0]).getByText("corrupt: resume the run")).toBeTruthy();
  });

  it("reports an unknown run with the server's message", async () => {
    routes["/api/runs/nope"] = () => jsonResponse({ error: "run 'nope' not found under /data" }, 404);
    goTo("/runs/nope");
    render(<App />);
    expect((await screen.findByRole("alert")).textContent).toContain("run 'nope' not found");
  });
});

describe("result page", () => {
  it("loads the file and pins the token named in the URL", async () => {
    goTo("/runs/run-a/p1?t=1");
    render(<App />);
    const top = await screen.findByTestId("top-sources");
    expect(top.getAttribute("data-row")).toBe("1");
    expect(within(top).getAllByRole("listitem")[0].textContent).toContain("sat");
    expect(screen.getByRole("link", { name: "Download JSON" }).getAttribute("href")).toBe(
      "/api/runs/run-a/results/p1?download=1",
    );
  });

  it("writes the pinned token to the URL, so the view can be shared", async () => {
    goTo("/runs/run-a/p1");
    render(<App />);
    const chips = await screen.findAllByRole("option");
    fireEvent.click(chips[2]);
    expect(window.location.pathname + window.location.search).toBe("/runs/run-a/p1?t=2");
  });

  it("shows a missing result's error", async () => {
    goTo("/runs/run-a/p9");
    render(<App />);
    expect((await screen.findByRole("alert")).textContent).toContain("no such thing");
  });
});

describe("compare page", () => {
  it("shows each matching run side by side with one shared selection", async () => {
    const second = catResult();
    second.metadata.attribution_method = "input_x_gradient";
    // In the second run, output 1's strongest source is "The" instead of " sat".
    second.data.association_matrix[1] = [0, 5, 1, 1, 0, 1, 0, 0];
    routes["/api/runs/run-b/results/p1"] = () => jsonResponse(second);
    routes["/api/compare?run_id=run-a&prompt_id=p1"] = () =>
      jsonResponse({
        run_id: "run-a",
        prompt_id: "p1",
        prompt: "The cat sat",
        entries: [
          { run_id: "run-a", prompt_id: "p1", model: "m", method: "saliency", engine: "native", created_at: "", matched_by: "self", status: "done", same_text: true },
          { run_id: "run-b", prompt_id: "p1", model: "m", method: "input_x_gradient", engine: "native", created_at: "", matched_by: "id", status: "done", same_text: true },
        ],
      });
    goTo("/compare/run-a/p1");
    render(<App />);
    await waitFor(() => expect(document.querySelectorAll(".compare-panel [role=listbox]")).toHaveLength(2));
    const panels = Array.from(document.querySelectorAll<HTMLElement>(".compare-panel"));
    expect(panels.map((p) => p.dataset.run)).toEqual(["run-a", "run-b"]);
    fireEvent.mouseOver(within(panels[0]).getAllByRole("option")[1]);
    const firstSource = (panel: HTMLElement) =>
      within(within(panel).getByTestId("top-sources")).getAllByRole("listitem")[0].getAttribute("data-col");
    expect(firstSource(panels[0])).toBe("3"); // " sat"
    expect(firstSource(panels[1])).toBe("1"); // "The"
    // Unticking a run removes its panel and records the choice in the URL.
    fireEvent.click(screen.getByRole("checkbox", { name: /run-b/ }));
    await waitFor(() => expect(document.querySelectorAll(".compare-panel")).toHaveLength(1));
    expect(window.location.search).toBe("?runs=run-a");
  });
});

describe("routing", () => {
  it("links navigate in-app, and unknown paths say so", async () => {
    goTo("/");
    render(<App />);
    fireEvent.click(await screen.findByRole("link", { name: "run-a" }));
    await screen.findByText("The cat sat");
    expect(window.location.pathname).toBe("/runs/run-a");
    act(() => {
      window.history.pushState(null, "", "/no/such/page/here");
      window.dispatchEvent(new PopStateEvent("popstate"));
    });
    expect(await screen.findByText("Not found")).toBeTruthy();
  });
});
