// One result, explored: the prompt and the answer as tokens, the strongest sources of the active output token,
// and the heat map of the whole matrix, all driven by one selection and one set of view options.
import { useMemo } from "react";
import {
  matrixFor,
  rowStrengths,
  strengthMatrix,
  topSources,
  visibleColumns,
  visibleRows,
  type Attribution,
  type ViewOptions,
} from "../lib/attribution";
import type { Selection } from "../lib/selection";
import { HeatMap } from "./HeatMap";
import { TokenChips } from "./TokenChips";
import { TopSources } from "./TopSources";

/** Everything the views derive from a result and the options, computed once per change. */
export function useDerived(att: Attribution | null, options: ViewOptions, active: number | null, topLimit = 10) {
  const strengths = useMemo(
    () => (att ? strengthMatrix(att, { mode: options.mode, hideTemplate: options.hideTemplate }) : null),
    [att, options.mode, options.hideTemplate],
  );
  const columns = useMemo(() => (att ? visibleColumns(att, options.hideTemplate) : []), [att, options.hideTemplate]);
  const rows = useMemo(() => (att ? visibleRows(att, options.hideTemplate) : []), [att, options.hideTemplate]);
  const inputColumns = useMemo(() => columns.filter((c) => att !== null && c < att.nIn), [att, columns]);
  const outputColumns = useMemo(() => columns.filter((c) => att !== null && c >= att.nIn), [att, columns]);
  const activeRow = att && active !== null && active < att.nOut ? active : null;
  const sources = useMemo(
    () => (att && strengths && activeRow !== null ? topSources(att, strengths, activeRow, options, topLimit) : []),
    [att, strengths, activeRow, options, topLimit],
  );
  const activeStrengths = att && strengths && activeRow !== null ? rowStrengths(att, strengths, activeRow) : null;
  const activeValues =
    att && activeRow !== null ? matrixFor(att, options.mode).subarray(activeRow * att.width, (activeRow + 1) * att.width) : null;
  return { strengths, columns, rows, inputColumns, outputColumns, activeRow, sources, activeStrengths, activeValues };
}

export type Derived = ReturnType<typeof useDerived>;

/** What every token strip of one result shares: the active row's strengths and values, and its strongest source. */
export function sharedChipProps(att: Attribution, d: Derived, options: ViewOptions) {
  return {
    att,
    rowStrengths: d.activeStrengths,
    activeRow: d.activeRow,
    threshold: options.threshold,
    strongestColumn: d.sources[0]?.column ?? null,
    mode: options.mode,
    rowValues: d.activeValues,
  };
}

export function templateCount(att: Attribution): number {
  return [...att.inputTokens, ...att.outputTokens].filter((t) => t.is_template).length;
}

export interface ResultExplorerProps {
  att: Attribution;
  options: ViewOptions;
  selection: Selection;
}

const UNITS = { token: "tokens", word: "words", sentence: "sentences" } as const;

/** `att` is shown as it is: the page groups it into words or sentences (`groupAttribution`) for `options.level`. */
export function ResultExplorer({ att, options, selection }: ResultExplorerProps) {
  const d = useDerived(att, options, selection.active);
  const chips = sharedChipProps(att, d, options);
  const unit = UNITS[options.level];
  return (
    <div className="result-grid">
      <div className="result-main">
        <section className="panel tokens-panel" aria-labelledby="input-heading">
          <h2 id="input-heading">
            Input <span className="muted small">{d.inputColumns.length} {unit}</span>
          </h2>
          <TokenChips
            {...chips}
            kind="input"
            columns={d.inputColumns}
            ariaLabel="Input tokens, coloured by their attribution to the selected output token"
          />
          <h2 id="output-heading">
            Output{" "}
            <span className="muted small">
              {d.outputColumns.length} {unit} · hover, Tab or click one; click pins it
            </span>
          </h2>
          <TokenChips
            {...chips}
            kind="output"
            columns={d.outputColumns}
            selection={selection}
            ariaLabel="Output tokens: choose one to see its sources"
          />
        </section>
        <section className="panel" aria-labelledby="heatmap-heading">
          <h2 id="heatmap-heading">
            Association matrix{" "}
            <span className="muted small">
              rows: output {unit} · columns: input, then output {unit} · click a row to pin
            </span>
          </h2>
          {d.strengths && d.rows.length > 0 && d.columns.length > 0 ? (
            <HeatMap
              att={att}
              strengths={d.strengths}
              rows={d.rows}
              columns={d.columns}
              threshold={options.threshold}
              mode={options.mode}
              activeRow={d.activeRow}
              onPinRow={(row) => selection.pin(row)}
              unit={unit}
            />
          ) : (
            <p className="hint">Nothing to draw: this result has no visible output tokens.</p>
          )}
        </section>
      </div>
      <aside className="panel sources-panel" aria-labelledby="sources-heading">
        <h2 id="sources-heading">
          Top sources
          {selection.pinned !== null && (
            <button type="button" className="link-button small" onClick={() => selection.pin(null)}>
              unpin
            </button>
          )}
        </h2>
        <TopSources att={att} row={d.activeRow} sources={d.sources} mode={options.mode} />
      </aside>
    </div>
  );
}
