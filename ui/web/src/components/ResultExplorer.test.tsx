import { act, fireEvent, render, screen, within } from "@testing-library/react";
import { useState } from "react";
import { describe, expect, it } from "vitest";
import { DEFAULT_VIEW, groupAttribution, hasGroups, toAttribution, type ViewOptions } from "../lib/attribution";
import { useSelection } from "../lib/selection";
import { catResult, splitWordResult } from "../testFixtures";
import { ResultExplorer } from "./ResultExplorer";
import { ViewControls } from "./ViewControls";

function Harness({ initial = DEFAULT_VIEW }: { initial?: ViewOptions }) {
  const att = toAttribution(catResult());
  const [options, setOptions] = useState(initial);
  const selection = useSelection();
  return (
    <>
      <ViewControls options={options} onChange={setOptions} templateCount={2} />
      <ResultExplorer att={att} options={options} selection={selection} />
    </>
  );
}

const outputs = () => screen.getByRole("listbox", { name: /output tokens/i });
const outputChip = (row: number) => within(outputs()).getAllByRole("option")[row];
const inputs = () => screen.getByRole("group", { name: /input tokens/i });
const inputChip = (column: number) => inputs().querySelector<HTMLElement>(`[data-col="${column}"]`);
const strength = (el: Element | null) => Number(el?.getAttribute("data-strength"));

describe("ResultExplorer", () => {
  it("asks for a choice until an output token is active", () => {
    render(<Harness />);
    expect(screen.getByTestId("top-sources-empty")).toBeTruthy();
    expect(strength(inputChip(2))).toBe(0);
  });

  it("hovering an output token lights its sources by strength, strongest ranked first", () => {
    render(<Harness />);
    fireEvent.mouseOver(outputChip(0));
    // Row 0 with template tokens hidden: " cat" (4) is the strongest, "The" (1) a quarter of it.
    expect(strength(inputChip(2))).toBeCloseTo(1);
    expect(strength(inputChip(1))).toBeCloseTo(0.25);
    expect(inputChip(2)?.classList.contains("tok-strongest")).toBe(true);
    const top = screen.getByTestId("top-sources");
    expect(within(top).getAllByRole("listitem")[0].getAttribute("data-col")).toBe("2");
    fireEvent.mouseLeave(outputs());
    expect(screen.getByTestId("top-sources-empty")).toBeTruthy();
  });

  it("a click pins the token: it stays after the pointer leaves, and a second click unpins", () => {
    render(<Harness />);
    fireEvent.click(outputChip(1));
    fireEvent.mouseLeave(outputs());
    expect(outputChip(1).getAttribute("aria-selected")).toBe("true");
    expect(screen.getByTestId("top-sources").getAttribute("data-row")).toBe("1");
    // Hovering another token previews it; leaving returns to the pinned one.
    fireEvent.mouseOver(outputChip(2));
    expect(screen.getByTestId("top-sources").getAttribute("data-row")).toBe("2");
    fireEvent.mouseLeave(outputs());
    expect(screen.getByTestId("top-sources").getAttribute("data-row")).toBe("1");
    fireEvent.click(outputChip(1));
    expect(outputChip(1).getAttribute("aria-selected")).toBe("false");
  });

  it("is usable from the keyboard: one tab stop, arrows move, Enter pins, Escape unpins", () => {
    render(<Harness />);
    const chips = within(outputs()).getAllByRole("option");
    expect(chips.map((c) => c.tabIndex)).toEqual([0, -1, -1]);
    act(() => chips[0].focus());
    expect(screen.getByTestId("top-sources").getAttribute("data-row")).toBe("0");
    fireEvent.keyDown(chips[0], { key: "ArrowRight" });
    expect(document.activeElement).toBe(chips[1]);
    expect(screen.getByTestId("top-sources").getAttribute("data-row")).toBe("1");
    fireEvent.keyDown(chips[1], { key: "Enter" });
    expect(chips[1].getAttribute("aria-selected")).toBe("true");
    expect(within(outputs()).getAllByRole("option").map((c) => c.tabIndex)).toEqual([-1, 0, -1]);
    fireEvent.keyDown(chips[1], { key: "End" });
    expect(document.activeElement).toBe(chips[2]);
    fireEvent.keyDown(chips[2], { key: "Escape" });
    expect(chips[1].getAttribute("aria-selected")).toBe("false");
  });

  it("earlier output tokens are sources too; later ones are marked as not possible", () => {
    render(<Harness />);
    fireEvent.mouseOver(outputChip(2));
    expect(strength(outputChip(0))).toBeCloseTo(1); // row 2's strongest source is output 0 (" on")
    expect(outputChip(0).classList.contains("tok-strongest")).toBe(true);
    fireEvent.mouseOver(outputChip(0));
    expect(outputChip(1).classList.contains("tok-after")).toBe(true);
  });

  it("the threshold hides weak sources", () => {
    render(<Harness />);
    fireEvent.mouseOver(outputChip(0));
    expect(inputChip(1)?.classList.contains("tok-lit")).toBe(true);
    fireEvent.change(screen.getByLabelText(/threshold/i), { target: { value: "0.3" } });
    expect(inputChip(1)?.classList.contains("tok-lit")).toBe(false);
    expect(inputChip(2)?.classList.contains("tok-lit")).toBe(true);
  });

  it("the template toggle shows the template tokens, and they then take part in the scale", () => {
    render(<Harness />);
    expect(inputChip(0)).toBeNull();
    fireEvent.click(screen.getByLabelText(/hide template/i));
    expect(inputChip(0)).not.toBeNull();
    fireEvent.mouseOver(outputChip(0));
    expect(strength(inputChip(0))).toBeCloseTo(1);
    expect(strength(inputChip(2))).toBeCloseTo(4 / 9, 3);
  });

  it("raw values compare across rows; the top sources show raw numbers", () => {
    render(<Harness />);
    fireEvent.click(screen.getByLabelText("Raw"));
    fireEvent.mouseOver(outputChip(1));
    const first = within(screen.getByTestId("top-sources")).getAllByRole("listitem")[0];
    expect(first.getAttribute("data-col")).toBe("3");
    expect(first.textContent).toContain("-3.00");
    // Raw strength is |-3| / 6, the largest shown |value| of the whole matrix.
    expect(strength(inputChip(3))).toBeCloseTo(0.5);
  });
});

function GroupingHarness() {
  const att = toAttribution(splitWordResult());
  const [options, setOptions] = useState<ViewOptions>({ ...DEFAULT_VIEW, hideTemplate: false });
  const selection = useSelection();
  return (
    <>
      <ViewControls options={options} onChange={setOptions} templateCount={1} canGroup={hasGroups(att)} />
      <ResultExplorer att={groupAttribution(att, options.level)} options={options} selection={selection} />
    </>
  );
}

describe("token / word / sentence toggle", () => {
  it("regroups the heat map and the token strips", () => {
    render(<GroupingHarness />);
    expect(screen.getByText(/3 output × 8 source tokens/)).toBeTruthy();
    fireEvent.click(screen.getByRole("radio", { name: "Words" }));
    expect(screen.getByText(/2 output × 6 source words/)).toBeTruthy();
    expect(within(outputs()).getAllByRole("option")).toHaveLength(2);
    fireEvent.click(screen.getByRole("radio", { name: "Sentences" }));
    expect(screen.getByText(/1 output × 3 source sentences/)).toBeTruthy();
  });

  it("is disabled for a result without word marks", () => {
    render(<ViewControls options={DEFAULT_VIEW} onChange={() => {}} templateCount={2} canGroup={hasGroups(toAttribution(catResult()))} />);
    expect((screen.getByRole("radio", { name: "Words" }) as HTMLInputElement).disabled).toBe(true);
  });
});
