// `/`: every run under the results URL, newest first, with live progress for runs still in flight.
import { Breadcrumbs, formatTime, Loading, Notice, ProgressBar, runStatus, StatusBadge } from "../components/Common";
import { runIsLive, urls, type RunsResponse } from "../lib/api";
import { Link, navigate, paths } from "../lib/router";
import { usePolling } from "../lib/usePolling";

/** Poll quickly while a run is in flight, slowly otherwise (to notice new runs); usePolling backs off further when
 * answers are slow. A finished or cancelled run is not in flight. */
export const LIVE_POLL_MS = 2000;
export const IDLE_POLL_MS = 15000;

export function RunsPage() {
  const { data, error, loading } = usePolling<RunsResponse>(urls.runs(), (fresh) =>
    fresh.runs.some(runIsLive) ? LIVE_POLL_MS : IDLE_POLL_MS,
  );
  return (
    <main className="page">
      <Breadcrumbs items={[{ label: "Runs" }]} />
      <header className="page-header">
        <h1>Runs</h1>
        {data && <p className="muted mono">{data.results_url}</p>}
      </header>
      {error && <Notice kind="error">{error.message}</Notice>}
      {loading && !data && <Loading what="runs" />}
      {data && data.runs.length === 0 && (
        <Notice>
          No runs under <code>{data.results_url}</code> yet. Make one with{" "}
          <code>tokenlens run examples/prompts.jsonl</code>, or point <code>tokenlens ui --results</code> at
          another location.
        </Notice>
      )}
      {data && data.runs.length > 0 && (
        <div className="panel table-panel">
          <table className="table runs-table">
            <thead>
              <tr>
                <th>Run</th>
                <th>Model</th>
                <th>Method</th>
                <th>Progress</th>
                <th>Created</th>
              </tr>
            </thead>
            <tbody>
              {data.runs.map((run) =>
                run.error ? (
                  <tr key={run.run_id} data-run={run.run_id}>
                    <td className="mono">{run.run_id}</td>
                    <td colSpan={4} className="text-failed">
                      {run.error}
                    </td>
                  </tr>
                ) : (
                  <tr
                    key={run.run_id}
                    data-run={run.run_id}
                    className="clickable"
                    onClick={(event) => {
                      if ((event.target as HTMLElement).closest("a")) return;
                      navigate(paths.run(run.run_id));
                    }}
                  >
                    <td>
                      <Link to={paths.run(run.run_id)} className="mono strong">
                        {run.run_id}
                      </Link>
                      <div>
                        <StatusBadge status={runStatus(run)} />
                        {run.cancelled && <span className="badge badge-pending">cancelled</span>}
                        {run.source && <span className="muted small"> {run.source}</span>}
                      </div>
                    </td>
                    <td className="mono">{run.model}</td>
                    <td>
                      {run.method}
                      {run.engine && run.engine !== "auto" && <span className="muted small"> ({run.engine})</span>}
                    </td>
                    <td className="progress-cell">
                      <ProgressBar run={run} />
                    </td>
                    <td className="muted nowrap">{formatTime(run.created_at)}</td>
                  </tr>
                ),
              )}
            </tbody>
          </table>
        </div>
      )}
    </main>
  );
}
