import { fireEvent, render, screen } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import { strengthMatrix, toAttribution, visibleColumns, visibleRows } from "../lib/attribution";
import { matchRoute } from "../lib/router";
import { catResult } from "../testFixtures";
import { HeatMap } from "./HeatMap";

describe("HeatMap", () => {
  const att = toAttribution(catResult());
  const strengths = strengthMatrix(att, { mode: "normalized", hideTemplate: true });
  const props = {
    att,
    strengths,
    rows: visibleRows(att, true),
    columns: visibleColumns(att, true),
    threshold: 0,
    mode: "normalized" as const,
    activeRow: null,
  };

  it("states its size and zooms in steps from fit", () => {
    render(<HeatMap {...props} onPinRow={() => {}} />);
    expect(screen.getByText(/3 output × 6 source tokens · zoom 100%/)).toBeTruthy();
    fireEvent.click(screen.getByRole("button", { name: "Zoom out" }));
    expect(screen.getByText(/zoom 67%/)).toBeTruthy();
    fireEvent.click(screen.getByRole("button", { name: "Fit" }));
    expect(screen.getByText(/zoom 100%/)).toBeTruthy();
  });

  it("clicking a cell pins its output row", () => {
    const onPinRow = vi.fn();
    render(<HeatMap {...props} onPinRow={onPinRow} />);
    const canvas = screen.getByTestId("heatmap-canvas");
    canvas.getBoundingClientRect = () => ({ left: 0, top: 0, right: 900, bottom: 400, width: 900, height: 400, x: 0, y: 0, toJSON: () => ({}) });
    // Fit in jsdom's 900 px default: (900 - 124 - 40) / 6 columns = 36 px cells (the cap); row 1 starts at 92 + 36.
    fireEvent.click(canvas, { clientX: 124 + 10, clientY: 92 + 36 + 5 });
    expect(onPinRow).toHaveBeenCalledWith(1);
  });
});

describe("matchRoute", () => {
  it("names each page by its URL, ids decoded", () => {
    expect(matchRoute("/")).toEqual({ page: "runs" });
    expect(matchRoute("/runs/r%201")).toEqual({ page: "run", runId: "r 1" });
    expect(matchRoute("/runs/r/p.1")).toEqual({ page: "result", runId: "r", promptId: "p.1" });
    expect(matchRoute("/compare/r/p")).toEqual({ page: "compare", runId: "r", promptId: "p" });
    expect(matchRoute("/runs/a/b/c").page).toBe("not-found");
    expect(matchRoute("/runs/%E0%A4%A").page).toBe("not-found");
  });
});
