// Which output token the views show the sources of. Hover wins over keyboard focus, which wins over the pinned
// (clicked) token, so a person can glance at other tokens and come back to the pinned one by moving away.
import { useCallback, useMemo, useState } from "react";

export interface Selection {
  /** The output row whose sources are shown now, or null. */
  active: number | null;
  pinned: number | null;
  hover: (row: number | null) => void;
  focus: (row: number | null) => void;
  /** Pin `row`, or unpin it if it is already pinned. */
  togglePin: (row: number) => void;
  pin: (row: number | null) => void;
}

export function useSelection(initialPinned: number | null = null, onPinChange?: (row: number | null) => void): Selection {
  const [hovered, setHovered] = useState<number | null>(null);
  const [focused, setFocused] = useState<number | null>(null);
  const [pinned, setPinned] = useState<number | null>(initialPinned);

  const pin = useCallback(
    (row: number | null) => {
      setPinned(row);
      onPinChange?.(row);
    },
    [onPinChange],
  );
  const togglePin = useCallback((row: number) => pin(pinned === row ? null : row), [pin, pinned]);
  return useMemo(
    () => ({ active: hovered ?? focused ?? pinned, pinned, hover: setHovered, focus: setFocused, togglePin, pin }),
    [hovered, focused, pinned, togglePin, pin],
  );
}
