import { describe, expect, it } from "vitest";
import { catResult } from "../testFixtures";
import { strengthMatrix, toAttribution, visibleColumns, visibleRows } from "./attribution";
import { viridis } from "./colors";
import { heatmapPixels, IMPOSSIBLE_RGB, labelStride } from "./heatmap";

describe("heatmapPixels", () => {
  const att = toAttribution(catResult());
  const strengths = strengthMatrix(att, { mode: "normalized", hideTemplate: true });
  const rows = visibleRows(att, true);
  const columns = visibleColumns(att, true);
  const pixel = (pixels: Uint8ClampedArray, r: number, c: number) =>
    Array.from(pixels.slice((r * columns.length + c) * 4, (r * columns.length + c) * 4 + 3));

  it("is one RGBA pixel per shown cell", () => {
    expect(heatmapPixels(att, strengths, rows, columns, 0)).toHaveLength(rows.length * columns.length * 4);
  });

  it("colours by strength, marks impossible cells, and blanks cells under the threshold", () => {
    const pixels = heatmapPixels(att, strengths, rows, columns, 0.5);
    expect(pixel(pixels, 0, 1)).toEqual([...viridis(1)]); // row 0, " cat"
    expect(pixel(pixels, 0, 3)).toEqual([...IMPOSSIBLE_RGB]); // row 0 can't depend on output 0
    expect(pixel(pixels, 0, 0)).toEqual([...viridis(0)]); // "The": 1/4 of the row's peak, under 0.5
  });

  it("spaces labels out as cells shrink", () => {
    expect(labelStride(20)).toBe(1);
    expect(labelStride(1)).toBe(13);
  });
});
