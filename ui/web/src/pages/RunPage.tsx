// `/runs/<run_id>`: one page of a run's prompts, searched by text or id and filtered by status on the server, with
// the reason each failed prompt failed. Search, filter and page live in the URL (?q=...&status=...&page=...), so a
// view can be shared. While the run is in flight only its counts are polled (a few bytes); the page is fetched
// again when they change. A finished or cancelled run is not polled.
import { useEffect, useRef } from "react";
import { Breadcrumbs, formatTime, Loading, Notice, ProgressBar, runStatus, StatusBadge } from "../components/Common";
import { runIsLive, urls, type PromptStatus, type RunCountsResponse, type RunDetail, type RunSummary } from "../lib/api";
import { Link, navigate, paths, useLocation } from "../lib/router";
import { usePolling } from "../lib/usePolling";
import { LIVE_POLL_MS } from "./RunsPage";

export const PAGE_SIZE = 100;
const FILTERS: ("all" | PromptStatus)[] = ["all", "done", "failed", "corrupt", "pending"];

const countsKey = (run: RunSummary) => `${run.done}/${run.failed}/${run.corrupt}/${run.pending}/${Boolean(run.cancelled)}`;

export function RunPage({ runId }: { runId: string }) {
  const { search } = useLocation();
  const query = search.get("q") ?? "";
  const statusParam = search.get("status");
  const status = (FILTERS as string[]).includes(statusParam ?? "") ? (statusParam as (typeof FILTERS)[number]) : "all";
  const pageNumber = Math.max(1, Math.floor(Number(search.get("page") ?? "1")) || 1);
  const offset = (pageNumber - 1) * PAGE_SIZE;

  const live = usePolling<RunCountsResponse>(urls.runCounts(runId), (fresh) =>
    runIsLive(fresh.run) ? LIVE_POLL_MS : null,
  );
  const pageUrl = urls.runPage(runId, {
    offset,
    limit: PAGE_SIZE,
    status: status === "all" ? undefined : status,
    q: query.trim() || undefined,
  });
  const { data: fresh, error, loading, reload } = usePolling<RunDetail>(pageUrl, () => null);
  // While the next page or search loads, the last one stays on screen (the table does not blink per keystroke).
  const previous = useRef<RunDetail | null>(null);
  if (fresh) previous.current = fresh;
  const data = fresh ?? (previous.current?.run.run_id === runId ? previous.current : null);
  const run = live.data?.run ?? data?.run;
  // New results since the page was read: read it again (its rows' statuses changed).
  const stale = live.data && data && countsKey(live.data.run) !== countsKey(data.run);
  useEffect(() => {
    if (stale) reload();
  }, [stale, reload]);

  const setParams = (q: string, s: string, page = 1) => {
    const params = new URLSearchParams();
    if (q) params.set("q", q);
    if (s !== "all") params.set("status", s);
    if (page > 1) params.set("page", String(page));
    const qs = params.toString();
    navigate(`${paths.run(runId)}${qs ? `?${qs}` : ""}`, { replace: true });
  };

  const counts: Record<string, number> = run
    ? { all: run.prompt_count, done: run.done, failed: run.failed, corrupt: run.corrupt, pending: run.pending }
    : { all: 0, done: 0, failed: 0, corrupt: 0, pending: 0 };
  const rows = data?.prompts ?? [];
  const total = data?.total ?? 0;
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));

  const manifest = data?.manifest;
  const params = manifest ? { ...(manifest.generation_params ?? {}), ...(manifest.method_params ?? {}) } : {};

  return (
    <main className="page">
      <Breadcrumbs items={[{ label: "Runs", to: paths.runs() }, { label: runId }]} />
      {error && <Notice kind="error">{error.message}</Notice>}
      {loading && !data && <Loading what="the run" />}
      {data && run && (
        <>
          <header className="page-header">
            <h1 className="mono">{runId}</h1>
            <div className="meta-row">
              <StatusBadge status={runStatus(run)} />
              {run.cancelled && <span className="badge badge-pending">cancelled</span>}
              <span className="meta">
                <span className="muted">model</span> <span className="mono">{run.model}</span>
              </span>
              <span className="meta">
                <span className="muted">method</span> {run.method}
                {run.engine !== "auto" && <span className="muted"> ({run.engine})</span>}
              </span>
              {Object.entries(params).map(([key, value]) => (
                <span className="meta" key={key}>
                  <span className="muted">{key}</span> <span className="mono">{JSON.stringify(value)}</span>
                </span>
              ))}
              <span className="meta muted">created {formatTime(run.created_at)}</span>
              <Link to={paths.insights(runId)} className="meta">Insights: the whole run</Link>
            </div>
            <ProgressBar run={run} />
          </header>
          <div className="toolbar">
            <input
              type="search"
              className="search"
              placeholder="Search prompt text or id…"
              aria-label="Search prompts"
              value={query}
              onChange={(event) => setParams(event.target.value, status)}
            />
            <div className="button-group" role="group" aria-label="Filter by status">
              {FILTERS.map((f) => (
                <button
                  key={f}
                  type="button"
                  aria-pressed={status === f}
                  onClick={() => setParams(query, f)}
                  disabled={f !== "all" && counts[f] === 0}
                >
                  {f[0].toUpperCase() + f.slice(1)} <span className="count">{counts[f]}</span>
                </button>
              ))}
            </div>
          </div>
          <div className="panel table-panel">
            <table className="table prompts-table">
              <thead>
                <tr>
                  <th>Prompt</th>
                  <th>Text</th>
                  <th>Status</th>
                  <th aria-label="Actions" />
                </tr>
              </thead>
              <tbody>
                {rows.map((p) => (
                  <tr key={p.prompt_id} data-prompt={p.prompt_id} data-status={p.status}>
                    <td className="mono nowrap">
                      {p.status === "done" ? (
                        <Link to={paths.result(runId, p.prompt_id)} className="strong">
                          {p.prompt_id}
                        </Link>
                      ) : (
                        p.prompt_id
                      )}
                    </td>
                    <td className="prompt-text">
                      {p.prompt ?? <span className="muted">(text known once attributed)</span>}
                      {p.error && (
                        <div className="error-reason">
                          <strong>{p.error.error_type}</strong>: {p.error.message}
                          <span className="muted">
                            {" "}
                            ({p.error.attempts} attempt{p.error.attempts === 1 ? "" : "s"})
                          </span>
                        </div>
                      )}
                    </td>
                    <td>
                      <StatusBadge status={p.status} />
                    </td>
                    <td className="nowrap">
                      {p.status === "done" && (
                        <Link to={paths.compare(runId, p.prompt_id)} className="small">
                          compare
                        </Link>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            {rows.length === 0 && <p className="hint pad">No prompt matches.</p>}
          </div>
          {total > 0 && (
            <nav className="pager" aria-label="Pages">
              <button
                type="button"
                disabled={pageNumber <= 1}
                onClick={() => setParams(query, status, pageNumber - 1)}
              >
                Previous
              </button>
              <span className="muted" aria-live="polite">
                {offset + 1}–{offset + rows.length} of {total} · page {pageNumber} of {pages}
              </span>
              <button
                type="button"
                disabled={pageNumber >= pages}
                onClick={() => setParams(query, status, pageNumber + 1)}
              >
                Next
              </button>
            </nav>
          )}
        </>
      )}
    </main>
  );
}
