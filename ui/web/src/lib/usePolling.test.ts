import { describe, expect, it } from "vitest";
import { BACKOFF_FACTOR, MAX_POLL_MS, pollDelayMs } from "./usePolling";

describe("poll back-off", () => {
  it("waits what the page asked for while answers are fast", () => {
    expect(pollDelayMs(2000, 15)).toBe(2000);
  });

  it("waits longer the longer the last answer took, up to a ceiling", () => {
    expect(pollDelayMs(2000, 500)).toBe(500 * BACKOFF_FACTOR);
    expect(pollDelayMs(2000, 30000)).toBe(MAX_POLL_MS);
    expect(pollDelayMs(90000, 10)).toBe(90000); // a slower wish is kept
  });
});
