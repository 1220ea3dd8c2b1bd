// `/runs/<run_id>`: one run's prompts, searchable by text or id and filterable by status, with the reason each
// failed prompt failed. Search and filter live in the URL (?q=...&status=...), so a view can be shared.
import { useMemo, useState } from "react";
import { Breadcrumbs, formatTime, Loading, Notice, ProgressBar, runStatus, StatusBadge } from "../components/Common";
import { urls, type PromptStatus, type RunDetail } from "../lib/api";
import { Link, navigate, paths, useLocation } from "../lib/router";
import { usePolling } from "../lib/usePolling";
import { LIVE_POLL_MS } from "./RunsPage";

const PAGE_SIZE = 100;
const FILTERS: ("all" | PromptStatus)[] = ["all", "done", "failed", "corrupt", "pending"];

export function RunPage({ runId }: { runId: string }) {
  const { data, error, loading } = usePolling<RunDetail>(urls.run(runId), (fresh) =>
    fresh.run.complete ? null : LIVE_POLL_MS,
  );
  const { search } = useLocation();
  const query = search.get("q") ?? "";
  const statusParam = search.get("status");
  const status = (FILTERS as string[]).includes(statusParam ?? "") ? (statusParam as (typeof FILTERS)[number]) : "all";
  const [shown, setShown] = useState(PAGE_SIZE);

  const setParams = (q: string, s: string) => {
    const params = new URLSearchParams();
    if (q) params.set("q", q);
    if (s !== "all") params.set("status", s);
    const qs = params.toString();
    navigate(`${paths.run(runId)}${qs ? `?${qs}` : ""}`, { replace: true });
    setShown(PAGE_SIZE);
  };

  const counts = useMemo(() => {
    const c: Record<string, number> = { all: 0, done: 0, failed: 0, corrupt: 0, pending: 0 };
    for (const p of data?.prompts ?? []) {
      c.all++;
      c[p.status]++;
    }
    return c;
  }, [data]);

  const filtered = useMemo(() => {
    const needle = query.trim().toLowerCase();
    return (data?.prompts ?? []).filter(
      (p) =>
        (status === "all" || p.status === status) &&
        (!needle ||
          p.prompt_id.toLowerCase().includes(needle) ||
          (p.prompt ?? "").toLowerCase().includes(needle) ||
          (p.error?.message ?? "").toLowerCase().includes(needle)),
    );
  }, [data, query, status]);

  const manifest = data?.manifest;
  const params = manifest ? { ...(manifest.generation_params ?? {}), ...(manifest.method_params ?? {}) } : {};

  return (
    <main className="page">
      <Breadcrumbs items={[{ label: "Runs", to: paths.runs() }, { label: runId }]} />
      {error && <Notice kind="error">{error.message}</Notice>}
      {loading && !data && <Loading what="the run" />}
      {data && (
        <>
          <header className="page-header">
            <h1 className="mono">{runId}</h1>
            <div className="meta-row">
              <StatusBadge status={runStatus(data.run)} />
              <span className="meta">
                <span className="muted">model</span> <span className="mono">{data.run.model}</span>
              </span>
              <span className="meta">
                <span className="muted">method</span> {data.run.method}
                {data.run.engine !== "auto" && <span className="muted"> ({data.run.engine})</span>}
              </span>
              {Object.entries(params).map(([key, value]) => (
                <span className="meta" key={key}>
                  <span className="muted">{key}</span> <span className="mono">{JSON.stringify(value)}</span>
                </span>
              ))}
              <span className="meta muted">created {formatTime(data.run.created_at)}</span>
              <Link to={paths.insights(runId)} className="meta">Insights: the whole run</Link>
            </div>
            <ProgressBar run={data.run} />
          </header>
          <div className="toolbar">
            <input
              type="search"
              className="search"
              placeholder="Search prompt text, id or error…"
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
                {filtered.slice(0, shown).map((p) => (
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
            {filtered.length === 0 && <p className="hint pad">No prompt matches.</p>}
          </div>
          {filtered.length > shown && (
            <button type="button" className="more" onClick={() => setShown(shown + PAGE_SIZE)}>
              Show {Math.min(PAGE_SIZE, filtered.length - shown)} more of {filtered.length - shown}
            </button>
          )}
        </>
      )}
    </main>
  );
}
