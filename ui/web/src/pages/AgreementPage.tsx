// `/agreement/<run_id>?with=<other_run_id>`: do two runs on the same prompts (two methods, or two models) point
// at the same sources? Per prompt, the Spearman rank correlation and top-k overlap of the attribution rows (from
// tokenlens/run_views.py), their distribution, and links to the prompts where the runs disagree most.
import { Breadcrumbs, Loading, Notice } from "../components/Common";
import "./views.css";
import type { RunsResponse } from "../lib/api";
import { urls } from "../lib/api";
import { Link, navigate, paths, useLocation } from "../lib/router";
import { usePolling } from "../lib/usePolling";
import { agreementCandidates, barFractions, fixed, viewUrls, type AgreementView } from "../lib/views";

export function AgreementPage({ runId }: { runId: string }) {
  const { search } = useLocation();
  const other = search.get("with") ?? "";
  const runs = usePolling<RunsResponse>(urls.runs(), () => null);
  const candidates = agreementCandidates(runs.data?.runs ?? [], runId);

  return (
    <main className="page">
      <Breadcrumbs
        items={[
          { label: "Runs", to: paths.runs() },
          { label: runId, to: paths.run(runId) },
          { label: "Insights", to: paths.insights(runId) },
          { label: "Agreement" },
        ]}
      />
      <header className="page-header">
        <h1>
          Agreement <span className="mono muted">{runId}</span>
        </h1>
        <div className="toolbar">
          <label>
            Compare with{" "}
            <select
              aria-label="Second run"
              value={other}
              onChange={(event) => navigate(paths.agreement(runId, event.target.value), { replace: true })}
            >
              <option value="">pick a run…</option>
              {candidates.map((run) => (
                <option key={run.run_id} value={run.run_id}>
                  {run.run_id} ({run.model}, {run.method}, {run.prompt_count} prompts)
                </option>
              ))}
            </select>
          </label>
        </div>
      </header>
      {runs.error && <Notice kind="error">{runs.error.message}</Notice>}
      {other ? (
        <AgreementResult key={other} runId={runId} otherRunId={other} />
      ) : (
        <p className="hint">Pick a second run on the same prompts (another method, or another model).</p>
      )}
    </main>
  );
}

function AgreementResult({ runId, otherRunId }: { runId: string; otherRunId: string }) {
  const { data, error, loading } = usePolling<AgreementView>(viewUrls.agreement(runId, otherRunId), () => null);
  if (error) return <Notice kind="error">{error.message}</Notice>;
  if (loading || !data) return <Loading what="the agreement" />;
  const bars = barFractions(data.histogram.map((bin) => bin.count));
  const notCompared = Object.entries(data.not_compared);
  return (
    <>
      <section className="panel views-section" aria-labelledby="agreement-summary">
        <h2 id="agreement-summary">Summary</h2>
        <dl className="share-summary" data-testid="agreement-summary">
          <div data-field="compared">
            <dt>prompts compared</dt>
            <dd className="num">{data.compared}</dd>
          </div>
          <div data-field="spearman-mean">
            <dt>mean Spearman</dt>
            <dd className="num">{fixed(data.spearman.mean)}</dd>
          </div>
          <div data-field="spearman-median">
            <dt>median Spearman</dt>
            <dd className="num">{fixed(data.spearman.median)}</dd>
          </div>
          <div data-field="overlap-mean">
            <dt>mean top-{data.top_k} overlap</dt>
            <dd className="num">{fixed(data.top_k_overlap.mean)}</dd>
          </div>
        </dl>
        <p className="hint">
          Per prompt: the mean over output tokens generated alike of the rank correlation of |scores| over every
          earlier token, and the share of the top {data.top_k} sources both runs pick.
          {data.only_in_run + data.only_in_other > 0 &&
            ` ${data.only_in_run} prompt(s) only in ${runId}, ${data.only_in_other} only in ${otherRunId}.`}
        </p>
        {notCompared.length > 0 && (
          <ul className="small muted" data-testid="not-compared">
            {notCompared.map(([reason, count]) => (
              <li key={reason}>
                {count} not compared: {reason}
              </li>
            ))}
          </ul>
        )}
      </section>
      <section className="panel views-section" aria-labelledby="agreement-distribution">
        <h2 id="agreement-distribution">Distribution of per-prompt Spearman</h2>
        <div className="histogram" role="img" aria-label="Histogram of per-prompt Spearman correlation">
          {data.histogram.map((bin, k) => (
            <span
              key={bin.low}
              className="histogram-bar"
              style={{ height: `${100 * bars[k]}%` }}
              title={`${fixed(bin.low, 1)} to ${fixed(bin.high, 1)}: ${bin.count} prompt(s)`}
            />
          ))}
        </div>
        <p className="chart-axis small muted">−1 (opposite) → 0 → +1 (same order)</p>
      </section>
      <section className="panel views-section" aria-labelledby="agreement-worst">
        <h2 id="agreement-worst">Where they disagree most</h2>
        <table className="table" data-testid="disagree-table">
          <thead>
            <tr>
              <th>Prompt</th>
              <th>Spearman</th>
              <th>Top-{data.top_k} overlap</th>
              <th>Rows</th>
              <th aria-label="Actions" />
            </tr>
          </thead>
          <tbody>
            {data.disagree_most.map((row) => (
              <tr key={row.prompt_id} data-prompt={row.prompt_id}>
                <td className="mono">
                  <Link to={paths.result(runId, row.prompt_id)}>{row.prompt_id}</Link>
                </td>
                <td className="num" data-field="spearman">
                  {fixed(row.spearman)}
                </td>
                <td className="num">{fixed(row.top_k_overlap)}</td>
                <td className="num">{row.rows}</td>
                <td>
                  <Link to={paths.compare(runId, row.prompt_id)} className="small">
                    side by side
                  </Link>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
    </>
  );
}
