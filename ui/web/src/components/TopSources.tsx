// The ranked answer to "what drove this token?": the active output token's strongest sources, strongest first.
import { cssColor, textColorOn, viridis } from "../lib/colors";
import { displayToken, formatValue, type Attribution, type Source, type ValueMode } from "../lib/attribution";

export interface TopSourcesProps {
  att: Attribution;
  row: number | null;
  sources: Source[];
  mode: ValueMode;
  compact?: boolean;
}

export function TopSources({ att, row, sources, mode, compact = false }: TopSourcesProps) {
  if (row === null) {
    return (
      <p className="hint" data-testid="top-sources-empty">
        Hover, focus or click an output token to see the input tokens that drove it. Click pins it.
      </p>
    );
  }
  const token = att.outputTokens[row];
  return (
    <div className="top-sources" data-testid="top-sources" data-row={row}>
      {!compact && (
        <p className="top-sources-for">
          Sources of output #{row}{" "}
          <span className="tok tok-inline">{displayToken(token)}</span>
          {token.probability != null && <span className="muted"> p = {token.probability.toFixed(3)}</span>}
        </p>
      )}
      {sources.length === 0 ? (
        <p className="hint">No source above the threshold.</p>
      ) : (
        <ol className="source-list">
          {sources.map((source, rank) => {
            const rgb = viridis(source.strength);
            return (
              <li key={source.column} data-col={source.column} className="source-item">
                <span className="source-rank">{rank + 1}</span>
                <span className="tok tok-inline" style={{ background: cssColor(rgb), color: textColorOn(rgb) }}>
                  {displayToken(source.token)}
                </span>
                <span className="source-where">
                  {source.kind} #{source.position}
                </span>
                <span className="source-bar" aria-hidden>
                  <span style={{ width: `${Math.max(source.strength * 100, 2)}%`, background: cssColor(rgb) }} />
                </span>
                <span className="source-value" title={`${mode} value`}>
                  {formatValue(source.value)}
                </span>
              </li>
            );
          })}
        </ol>
      )}
      {!compact && (
        <p className="footnote muted small">
          {mode === "normalized"
            ? "Numbers: the file's normalized scores (each output token's strongest source is 1). Colours and bars: share of the strongest source shown."
            : "Numbers: the method's raw scores. Colours and bars: share of the largest |score| in the shown matrix, so rows compare."}
        </p>
      )}
    </div>
  );
}
