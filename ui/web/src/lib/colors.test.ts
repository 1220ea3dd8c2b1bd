import { describe, expect, it } from "vitest";
import { luminance, textColorOn, VIRIDIS, viridis } from "./colors";

describe("viridis", () => {
  it("has matplotlib's end points", () => {
    expect(VIRIDIS).toHaveLength(256);
    expect(viridis(0)).toEqual([68, 1, 84]);
    expect(viridis(1)).toEqual([253, 231, 37]);
  });

  it("gets brighter with strength, so order survives greyscale and colour-blindness", () => {
    const steps = Array.from({ length: 11 }, (_, k) => luminance(viridis(k / 10)));
    for (let k = 1; k < steps.length; k++) expect(steps[k]).toBeGreaterThan(steps[k - 1]);
  });

  it("clamps and survives NaN", () => {
    expect(viridis(-1)).toEqual(viridis(0));
    expect(viridis(7)).toEqual(viridis(1));
    expect(viridis(Number.NaN)).toEqual(viridis(0));
  });

  it("picks readable text colours", () => {
    expect(textColorOn(viridis(1))).toBe("#0b1020");
    expect(textColorOn(viridis(0))).toBe("#f4f6fb");
  });
});
