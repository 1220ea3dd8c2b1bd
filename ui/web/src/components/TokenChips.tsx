// Tokens as running text. Each source token is coloured by how strongly it drove the active output token;
// output tokens are also the controls that choose it: hover, focus (Tab, then arrow keys) or click, which pins.
import { memo, useRef, type FocusEvent, type KeyboardEvent, type MouseEvent } from "react";
import { cssColor, textColorOn, viridis } from "../lib/colors";
import {
  displayToken,
  endsLine,
  formatValue,
  isPossibleSource,
  type Attribution,
  type TokenInfo,
  type ValueMode,
} from "../lib/attribution";
import type { Selection } from "../lib/selection";

interface ChipProps {
  token: TokenInfo;
  column: number;
  label: string;
  strength: number;
  shown: boolean;
  strongest: boolean;
  impossible: boolean;
  value: number | null;
  mode: ValueMode;
  interactive?: {
    row: number;
    active: boolean;
    pinned: boolean;
    tabStop: boolean;
  };
}

const Chip = memo(function Chip({
  token,
  column,
  label,
  strength,
  shown,
  strongest,
  impossible,
  value,
  mode,
  interactive,
}: ChipProps) {
  const classes = ["tok"];
  if (token.is_template) classes.push("tok-template");
  if (shown) classes.push("tok-lit");
  if (strongest) classes.push("tok-strongest");
  if (impossible) classes.push("tok-after");
  if (interactive) classes.push("tok-out");
  if (interactive?.active) classes.push("tok-active");
  if (interactive?.pinned) classes.push("tok-pinned");
  const rgb = viridis(strength);
  const style = shown ? { background: cssColor(rgb), color: textColorOn(rgb) } : undefined;
  const text = displayToken(token);
  const probability = token.probability != null ? `, p = ${token.probability.toFixed(3)}` : "";
  const scoreText = value != null && !impossible ? ` — ${mode} ${formatValue(value)}, strength ${strength.toFixed(2)}` : "";
  const title = `${label} ${JSON.stringify(token.clean_token)} (id ${token.token_id}${probability})${scoreText}`;
  return (
    <span
      className={classes.join(" ")}
      style={style}
      title={title}
      data-col={column}
      data-row={interactive?.row}
      data-strength={shown ? strength.toFixed(4) : "0"}
      role={interactive ? "option" : undefined}
      aria-selected={interactive ? interactive.pinned : undefined}
      aria-label={interactive ? `${label} ${text}` : undefined}
      tabIndex={interactive ? (interactive.tabStop ? 0 : -1) : undefined}
    >
      {text}
    </span>
  );
});

export interface TokenChipsProps {
  att: Attribution;
  kind: "input" | "output";
  /** Visible columns of this kind (input: 0..nIn-1, output: nIn..width-1). */
  columns: number[];
  /** Strengths of the active row's sources (length att.width), or null when no row is active. */
  rowStrengths: Float32Array | null;
  activeRow: number | null;
  threshold: number;
  strongestColumn: number | null;
  mode: ValueMode;
  /** The active row's values in `mode` (length att.width). */
  rowValues: Float64Array | null;
  /** For output tokens: the selection they drive. */
  selection?: Selection;
  ariaLabel: string;
}

export function TokenChips({
  att,
  kind,
  columns,
  rowStrengths,
  activeRow,
  threshold,
  strongestColumn,
  mode,
  rowValues,
  selection,
  ariaLabel,
}: TokenChipsProps) {
  const listRef = useRef<HTMLDivElement>(null);
  const interactive = kind === "output" && selection !== undefined;
  const rowOf = (column: number) => column - att.nIn;
  const tabRow = selection?.pinned ?? (columns.length ? rowOf(columns[0]) : null);

  const focusRow = (row: number) => {
    const chip = listRef.current?.querySelector<HTMLElement>(`[data-row="${row}"]`);
    chip?.focus();
  };

  const onKeyDown = (event: KeyboardEvent<HTMLDivElement>) => {
    if (!selection) return;
    const target = event.target as HTMLElement;
    const row = Number(target.dataset.row);
    if (Number.isNaN(row)) return;
    const rows = columns.map(rowOf);
    const at = rows.indexOf(row);
    let next: number | null = null;
    switch (event.key) {
      case "ArrowRight":
      case "ArrowDown":
        next = rows[Math.min(at + 1, rows.length - 1)];
        break;
      case "ArrowLeft":
      case "ArrowUp":
        next = rows[Math.max(at - 1, 0)];
        break;
      case "Home":
        next = rows[0];
        break;
      case "End":
        next = rows[rows.length - 1];
        break;
      case "Enter":
      case " ":
        event.preventDefault();
        selection.togglePin(row);
        return;
      case "Escape":
        selection.pin(null);
        return;
      default:
        return;
    }
    event.preventDefault();
    if (next !== undefined && next !== null) focusRow(next);
  };

  const rowFromEvent = (target: EventTarget | null): number | null => {
    const chip = (target as HTMLElement | null)?.closest?.<HTMLElement>("[data-row]");
    if (!chip || !listRef.current?.contains(chip)) return null;
    const row = Number(chip.dataset.row);
    return Number.isNaN(row) ? null : row;
  };

  const handlers = interactive
    ? {
        onKeyDown,
        onMouseOver: (event: MouseEvent) => selection.hover(rowFromEvent(event.target)),
        onMouseLeave: () => selection.hover(null),
        onFocus: (event: FocusEvent) => selection.focus(rowFromEvent(event.target)),
        onBlur: (event: FocusEvent) => {
          if (!listRef.current?.contains(event.relatedTarget as Node | null)) selection.focus(null);
        },
        onClick: (event: MouseEvent) => {
          const row = rowFromEvent(event.target);
          if (row !== null) selection.togglePin(row);
        },
      }
    : {};

  return (
    <div
      ref={listRef}
      className={`tokens tokens-${kind}`}
      role={interactive ? "listbox" : "group"}
      aria-label={ariaLabel}
      {...handlers}
    >
      {columns.map((column) => {
        const token = kind === "input" ? att.inputTokens[column] : att.outputTokens[column - att.nIn];
        const position = kind === "input" ? column : column - att.nIn;
        const possible = activeRow !== null && isPossibleSource(att, activeRow, column);
        const strength = possible && rowStrengths ? rowStrengths[column] : 0;
        const shown = possible && strength > 0 && strength >= threshold;
        const chip = (
          <Chip
            key={column}
            token={token}
            column={column}
            label={`${kind} #${position}`}
            strength={strength}
            shown={shown}
            strongest={column === strongestColumn}
            impossible={activeRow !== null && !possible}
            value={possible && rowValues ? rowValues[column] : null}
            mode={mode}
            interactive={
              interactive
                ? {
                    row: position,
                    active: selection.active === position,
                    pinned: selection.pinned === position,
                    tabStop: tabRow === position,
                  }
                : undefined
            }
          />
        );
        return endsLine(token) ? [chip, <span key={`br-${column}`} className="tok-break" aria-hidden />] : chip;
      })}
    </div>
  );
}
