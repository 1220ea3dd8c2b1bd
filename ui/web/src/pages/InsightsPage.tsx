// `/insights/<run_id>`: what the whole run says. The input tokens that draw the most attribution (each linking to
// the prompts where it matters most), where attribution goes by output position and by distance, and what the
// run cost next to the other runs. The numbers are the API's (tokenlens/run_views.py); this page only draws them.
import { Breadcrumbs, Loading, Notice } from "../components/Common";
import "./views.css";
import { Link, navigate, paths, useLocation } from "../lib/router";
import { usePolling } from "../lib/usePolling";
import {
  barFractions,
  fixed,
  IMPORTANCE_LEVELS,
  importanceLevel,
  percent,
  phaseColumns,
  seconds,
  viewUrls,
  type AttentionView,
  type ImportanceLevel,
  type ImportanceView,
  type PerformanceView,
  withoutEmptyTail,
} from "../lib/views";

/** The views are cheap to ask again (the server caches them); a run in flight shows new results this often. */
const VIEWS_POLL_MS = 10_000;

export function InsightsPage({ runId }: { runId: string }) {
  const level = importanceLevel(useLocation().search.get("level"));
  const importance = usePolling<ImportanceView>(viewUrls.importance(runId, level), () => VIEWS_POLL_MS);
  const attention = usePolling<AttentionView>(viewUrls.attention(runId), () => VIEWS_POLL_MS);
  const performance = usePolling<PerformanceView>(viewUrls.performance(), () => VIEWS_POLL_MS);
  const error = importance.error ?? attention.error ?? performance.error;

  return (
    <main className="page">
      <Breadcrumbs
        items={[{ label: "Runs", to: paths.runs() }, { label: runId, to: paths.run(runId) }, { label: "Insights" }]}
      />
      <header className="page-header">
        <h1>
          Insights <span className="mono muted">{runId}</span>
        </h1>
        <div className="meta-row">
          {importance.data && (
            <span className="meta" data-testid="insights-prompts">
              <strong>{importance.data.prompts}</strong> results
            </span>
          )}
          <Link to={paths.agreement(runId)}>Agreement with another run</Link>
        </div>
      </header>
      {error && <Notice kind="error">{error.message}</Notice>}
      {importance.data && importance.data.unreadable.length > 0 && (
        <Notice kind="error">
          {importance.data.unreadable.length} result file(s) could not be read and are left out, e.g.{" "}
          {importance.data.unreadable[0].error}
        </Notice>
      )}
      {importance.loading && !importance.data ? <Loading what="token importance" /> : null}
      {importance.data && <TokenImportance runId={runId} view={importance.data} level={level} />}
      {attention.data && <WhereAttentionGoes view={attention.data} />}
      {performance.data && <Performance view={performance.data} runId={runId} />}
    </main>
  );
}

const LEVEL_LABELS: Record<ImportanceLevel, string> = { token: "Tokens", word: "Words" };

function TokenImportance({ runId, view, level }: { runId: string; view: ImportanceView; level: ImportanceLevel }) {
  const bars = barFractions(view.tokens.map((t) => t.score));
  const unit = level === "word" ? "word" : "token";
  return (
    <section className="panel views-section" aria-labelledby="importance-title">
      <h2 id="importance-title">Token importance</h2>
      <div className="button-group" role="group" aria-label="Rank tokens or words">
        {IMPORTANCE_LEVELS.map((choice) => (
          <button
            key={choice}
            type="button"
            aria-pressed={level === choice}
            onClick={() =>
              navigate(`${paths.insights(runId)}${choice === "token" ? "" : `?level=${choice}`}`, { replace: true })
            }
          >
            {LEVEL_LABELS[choice]}
          </button>
        ))}
      </div>
      <p className="hint">
        Input {unit}s (template left out) ranked by a frequency-corrected score: the mean attribution an occurrence
        receives{level === "word" ? " (its tokens together)" : ""}, shrunk towards the run's mean by{" "}
        {view.prior_count} occurrences, over the run's mean. 1.000 is an average {unit}. Total is the attribution
        summed over every occurrence; {view.distinct_tokens} distinct {unit}s.
      </p>
      <table className="table" data-testid="importance-table">
        <thead>
          <tr>
            <th>{level === "word" ? "Word" : "Token"}</th>
            <th>Score</th>
            <th aria-label="Score bar" />
            <th>Total</th>
            <th>Count</th>
            <th>Where it matters most</th>
          </tr>
        </thead>
        <tbody>
          {view.tokens.map((token, k) => (
            <tr key={token.token} data-token={token.token}>
              <td className="mono token-cell">{token.token}</td>
              <td className="num" data-field="score">
                {fixed(token.score)}
              </td>
              <td className="bar-cell">
                <span className="bar" style={{ width: `${100 * bars[k]}%` }} />
              </td>
              <td className="num" data-field="total">
                {fixed(token.total)}
              </td>
              <td className="num" data-field="count">
                {token.count}
              </td>
              <td className="links">
                {token.top_prompts.map((p) => (
                  <Link key={p.prompt_id} to={paths.result(runId, p.prompt_id)} className="small mono">
                    {p.prompt_id}
                  </Link>
                ))}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {view.tokens.length === 0 && <p className="hint pad">No results yet.</p>}
    </section>
  );
}

const SHARE_KINDS = [
  ["prompt", "prompt tokens"],
  ["template", "template tokens"],
  ["generated", "earlier generated tokens"],
] as const;

function WhereAttentionGoes({ view }: { view: AttentionView }) {
  const distance = withoutEmptyTail(view.distance);
  const distanceBars = barFractions(distance.map((d) => d.share));
  return (
    <section className="panel views-section" aria-labelledby="attention-title">
      <h2 id="attention-title">Where attention goes</h2>
      <p className="hint">
        The share of each output token's absolute attribution on each kind of source, averaged over the run's
        results ({view.overall.rows} output tokens).
      </p>
      <dl className="share-summary" data-testid="attention-overall">
        {SHARE_KINDS.map(([kind, label]) => (
          <div key={kind} className={`share share-${kind}`} data-kind={kind}>
            <dt>{label}</dt>
            <dd className="num">{percent(view.overall[kind])}</dd>
          </div>
        ))}
      </dl>
      <h3>By output position</h3>
      <div className="share-chart" role="img" aria-label="Share of attribution by output position" data-testid="attention-chart">
        {view.by_position.map((row) => (
          <div
            key={row.position}
            className="share-column"
            title={`output ${row.position}: prompt ${percent(row.prompt)}, template ${percent(row.template)}, generated ${percent(row.generated)} (${row.rows} results)`}
          >
            {SHARE_KINDS.map(([kind]) => (
              <span key={kind} className={`share-${kind}`} style={{ height: `${100 * row[kind]}%` }} />
            ))}
          </div>
        ))}
      </div>
      <p className="chart-axis small muted">output position 0 → {Math.max(0, view.by_position.length - 1)}</p>
      <h3>Distance profile</h3>
      <p className="hint">Share of attribution by how many tokens back the source is (1: the token just before).</p>
      <table className="table distance-table" data-testid="distance-table">
        <tbody>
          {distance.map((row, k) => (
            <tr key={row.bucket} data-bucket={row.bucket}>
              <td className="num nowrap">{row.bucket}</td>
              <td className="bar-cell">
                <span className="bar" style={{ width: `${100 * distanceBars[k]}%` }} />
              </td>
              <td className="num">{percent(row.share)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function Performance({ view, runId }: { view: PerformanceView; runId: string }) {
  const phases = phaseColumns(view.groups);
  return (
    <section className="panel views-section" aria-labelledby="performance-title">
      <h2 id="performance-title">Performance</h2>
      <p className="hint">
        Seconds per prompt (and per output token) in each phase the engine timed, for every model × method × device
        under this results URL. The row with this run is marked.
      </p>
      <table className="table" data-testid="performance-table">
        <thead>
          <tr>
            <th>Model</th>
            <th>Method</th>
            <th>Device</th>
            <th>Prompts</th>
            {phases.map((phase) => (
              <th key={phase}>{phase}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {view.groups.map((group) => (
            <tr
              key={`${group.model}/${group.method}/${group.device}`}
              className={group.runs.includes(runId) ? "current" : undefined}
              data-method={group.method}
              data-current={group.runs.includes(runId) ? "yes" : "no"}
            >
              <td className="mono">{group.model}</td>
              <td>{group.method}</td>
              <td>{group.device}</td>
              <td className="num">{group.prompts}</td>
              {phases.map((phase) => {
                const cost = group.phases[phase];
                return (
                  <td key={phase} className="num" data-phase={phase}>
                    {cost ? seconds(cost.per_prompt_s) : "–"}
                    {cost && (
                      <div className="small muted">{seconds(cost.per_output_token_s)} / token</div>
                    )}
                  </td>
                );
              })}
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
