import { describe, expect, it } from "vitest";
import { catResult, splitWordResult } from "../testFixtures";
import {
  displayToken,
  formatValue,
  groupAttribution,
  hasGroups,
  normalizeRows,
  ResultFormatError,
  strengthMatrix,
  toAttribution,
  topSources,
  visibleColumns,
  visibleRows,
  type ViewOptions,
} from "./attribution";

const view = (patch: Partial<ViewOptions> = {}): ViewOptions => ({
  mode: "normalized",
  threshold: 0,
  hideTemplate: false,
  level: "token",
  ...patch,
});

describe("toAttribution", () => {
  it("flattens both matrices row-major", () => {
    const att = toAttribution(catResult());
    expect([att.nIn, att.nOut, att.width]).toEqual([5, 3, 8]);
    expect(att.raw[1 * 8 + 3]).toBe(-3);
    expect(att.normalized[0]).toBe(1);
  });

  it("names the matrix and row that break the contract", () => {
    const file = catResult();
    file.data.association_matrix[1] = [1, 2];
    expect(() => toAttribution(file)).toThrow(ResultFormatError);
    expect(() => toAttribution(file)).toThrow(/association_matrix row 1 must have nIn \+ nOut = 8/);
    const missing = catResult();
    missing.data.association_matrix.pop();
    expect(() => toAttribution(missing)).toThrow(/association_matrix must have one row per output token \(3\)/);
  });

  it("computes normalized rows from the raw scores, ignoring a stored normalisation of another kind", () => {
    const file = catResult();
    // A seed file's own normalisation is column-wise min-max: the UI shows TokenLens's row rule for every file.
    file.data.normalized_association = file.data.association_matrix.map((row) => row.map(() => 0.5));
    const att = toAttribution(file);
    expect(Array.from(att.normalized.subarray(8, 16))).toEqual([0.2 / 3, 0.5 / 3, 1 / 3, -1, 0.1 / 3, 2 / 3, 0, 0]);
    expect(Array.from(normalizeRows(new Float64Array([0, 0, 2, -4]), 2))).toEqual([0, 0, 0.5, -1]);
  });
});

describe("strengths and top sources", () => {
  it("normalized: each row's strongest shown source is 1", () => {
    const att = toAttribution(catResult());
    const s = strengthMatrix(att, view());
    expect(s[0]).toBeCloseTo(1); // <s> dominates row 0 while template tokens are shown
    expect(s[2]).toBeCloseTo(4 / 9);
  });

  it("hiding template tokens rescales over the shown sources", () => {
    const att = toAttribution(catResult());
    const s = strengthMatrix(att, view({ hideTemplate: true }));
    expect(s[0]).toBe(0);
    expect(s[2]).toBeCloseTo(1); // " cat" is now row 0's strongest
    expect(topSources(att, s, 0, view({ hideTemplate: true }))[0].token.clean_token).toBe(" cat");
    expect(visibleColumns(att, true)).toEqual([1, 2, 3, 5, 6, 7]);
    expect(visibleRows(att, true)).toEqual([0, 1, 2]);
  });

  it("raw: one scale for the whole matrix, by absolute value", () => {
    const att = toAttribution(catResult());
    const s = strengthMatrix(att, view({ mode: "raw", hideTemplate: true }));
    // The largest shown |raw| is 6 (row 2, output 0).
    expect(s[2 * 8 + 5]).toBeCloseTo(1);
    expect(s[1 * 8 + 3]).toBeCloseTo(3 / 6);
    const top = topSources(att, s, 1, view({ mode: "raw", hideTemplate: true }));
    expect(top[0].token.clean_token).toBe(" sat");
    expect(top[0].value).toBe(-3);
  });

  it("only earlier tokens are sources, strongest first, above the threshold", () => {
    const att = toAttribution(catResult());
    const options = view({ hideTemplate: true, threshold: 0.1 });
    const s = strengthMatrix(att, options);
    const top = topSources(att, s, 2, options);
    expect(top.map((x) => x.column)).toEqual([5, 6]);
    expect(top[0].kind).toBe("output");
    expect(top[0].position).toBe(0);
    expect(top.every((x) => x.column < att.nIn + 2)).toBe(true);
    const strengths = top.map((x) => x.strength);
    expect([...strengths].sort((a, b) => b - a)).toEqual(strengths);
  });
});

describe("display", () => {
  it("makes whitespace visible", () => {
    expect(displayToken({ token: "Ċ", token_id: 1, clean_token: "\n" })).toBe("↵");
    expect(displayToken({ token: "x", token_id: 1, clean_token: "" })).toBe("x");
    expect(displayToken({ token: "", token_id: 1, clean_token: "" })).toBe("∅");
  });

  it("formats values compactly", () => {
    expect(formatValue(0)).toBe("0");
    expect(formatValue(0.123456)).toBe("0.123");
    expect(formatValue(-0.00001234)).toBe("-1.23e-5");
    expect(formatValue(123456)).toBe("1.23e+5");
  });
});

describe("groupAttribution", () => {
  it("sums tokens into words along both axes, by the marks TokenLens stored", () => {
    const att = toAttribution(splitWordResult());
    expect(hasGroups(att)).toBe(true);
    const words = groupAttribution(att, "word");
    expect(words.inputTokens.map((t) => t.clean_token)).toEqual(["<s>", "The", " cat", " sat"]);
    expect(words.outputTokens.map((t) => t.clean_token)).toEqual([" on", " mat"]);
    expect([words.nIn, words.nOut, words.width]).toEqual([4, 2, 6]);
    // Row " mat" = output tokens 1 and 2; column " cat" = input tokens 2 and 3: 1 + 1 + (-2) + 1.
    expect(words.raw[1 * 6 + 2]).toBeCloseTo(1);
    // Column " on" (output word 0) for row " mat": 4 + 1.
    expect(words.raw[1 * 6 + 4]).toBeCloseTo(5);
    expect(words.outputTokens[1].probability).toBeCloseTo(0.2);
    expect(words.inputTokens[0].is_template).toBe(true);
    const total = (values: Float64Array) => values.reduce((a, b) => a + b, 0);
    expect(total(words.raw)).toBeCloseTo(total(att.raw));
    expect(Math.max(...words.normalized.subarray(0, 6).map(Math.abs))).toBeCloseTo(1);
  });

  it("sentences group the prompt apart from the template; unmarked results stay as tokens", () => {
    const att = toAttribution(splitWordResult());
    const sentences = groupAttribution(att, "sentence");
    expect(sentences.inputTokens.map((t) => t.clean_token)).toEqual(["<s>", "The cat sat"]);
    expect(sentences.nOut).toBe(1);
    const old = toAttribution(catResult());
    expect(hasGroups(old)).toBe(false);
    expect(groupAttribution(old, "word")).toBe(old);
    expect(groupAttribution(att, "token")).toBe(att);
  });
});
