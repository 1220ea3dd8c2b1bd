// `/compare/<run_id>/<prompt_id>`: the same prompt in other runs (other methods or models) side by side. The
// server matches prompts by id, else by text. One selection drives every panel: choosing output token #k
// shows the sources of output #k in each run, and the view options apply to all. ?runs=a,b picks the runs.
import { useCallback, useMemo, useState } from "react";
import { Breadcrumbs, Loading, Notice } from "../components/Common";
import { sharedChipProps, useDerived } from "../components/ResultExplorer";
import { TokenChips } from "../components/TokenChips";
import { TopSources } from "../components/TopSources";
import { ViewControls } from "../components/ViewControls";
import { urls, type CompareEntry, type CompareResponse } from "../lib/api";
import { displayToken, DEFAULT_VIEW, type ViewOptions } from "../lib/attribution";
import { Link, navigate, paths, useLocation } from "../lib/router";
import { useSelection, type Selection } from "../lib/selection";
import { usePolling } from "../lib/usePolling";
import { pinnedFromSearch, useAttribution } from "./ResultPage";

/** Panels shown at first; more can be ticked. */
const DEFAULT_PANELS = 3;

const entryKey = (entry: CompareEntry) => `${entry.run_id}:${entry.prompt_id}`;

export function ComparePage({ runId, promptId }: { runId: string; promptId: string }) {
  const { data, error, loading } = usePolling<CompareResponse>(urls.compare(runId, promptId), () => null);
  const { search } = useLocation();
  const [options, setOptions] = useState<ViewOptions>(DEFAULT_VIEW);

  const comparable = useMemo(() => (data?.entries ?? []).filter((e) => e.status === "done"), [data]);
  const chosenParam = search.get("runs");
  const chosen = useMemo(() => {
    if (chosenParam !== null) {
      const wanted = new Set(chosenParam.split(",").filter(Boolean));
      return comparable.filter((e) => wanted.has(e.run_id));
    }
    return comparable.slice(0, DEFAULT_PANELS);
  }, [chosenParam, comparable]);

  const writeUrl = useCallback(
    (runs: string[] | null, pinned: number | null) => {
      const params = new URLSearchParams();
      if (runs !== null) params.set("runs", runs.join(","));
      if (pinned !== null) params.set("t", String(pinned));
      const qs = params.toString().replace(/%2C/g, ",");
      navigate(`${paths.compare(runId, promptId)}${qs ? `?${qs}` : ""}`, { replace: true });
    },
    [runId, promptId],
  );
  const chosenRuns = chosenParam === null ? null : chosen.map((e) => e.run_id);
  const onPinChange = useCallback((row: number | null) => writeUrl(chosenRuns, row), [writeUrl, chosenRuns]);
  const selection = useSelection(pinnedFromSearch(search), onPinChange);

  const toggle = (entry: CompareEntry) => {
    const on = new Set(chosen.map((e) => e.run_id));
    if (on.has(entry.run_id)) on.delete(entry.run_id);
    else on.add(entry.run_id);
    writeUrl(
      comparable.filter((e) => on.has(e.run_id)).map((e) => e.run_id),
      selection.pinned,
    );
  };

  return (
    <main className="page page-wide">
      <Breadcrumbs
        items={[
          { label: "Runs", to: paths.runs() },
          { label: runId, to: paths.run(runId) },
          { label: promptId, to: paths.result(runId, promptId) },
          { label: "compare" },
        ]}
      />
      {error && <Notice kind="error">{error.message}</Notice>}
      {loading && !data && <Loading what="matching runs" />}
      {data && (
        <>
          <header className="page-header">
            <h1>Compare</h1>
            <p className="prompt-title">{data.prompt ?? <span className="muted">(prompt text unknown)</span>}</p>
          </header>
          <div className="panel compare-picker">
            <h2>
              Runs with this prompt <span className="muted small">matched by prompt id, else by prompt text</span>
            </h2>
            {data.entries.length <= 1 && (
              <p className="hint">
                No other run has this prompt yet. Run the same prompt set with another method or model to compare.
              </p>
            )}
            <ul className="entry-list">
              {data.entries.map((entry) => (
                <li key={entryKey(entry)}>
                  <label className={entry.status !== "done" ? "disabled" : undefined}>
                    <input
                      type="checkbox"
                      checked={chosen.some((e) => e.run_id === entry.run_id)}
                      disabled={entry.status !== "done"}
                      onChange={() => toggle(entry)}
                    />
                    <span className="mono strong">{entry.run_id}</span>
                    <span>{entry.method}</span>
                    <span className="mono muted">{entry.model}</span>
                    {entry.matched_by !== "self" && (
                      <span className={`badge ${entry.same_text ? "badge-done" : "badge-failed"}`}>
                        {entry.matched_by === "id" ? (entry.same_text ? "same id" : "same id, different text") : "same text"}
                      </span>
                    )}
                    {entry.status !== "done" && <span className="badge badge-failed">failed</span>}
                  </label>
                </li>
              ))}
            </ul>
          </div>
          <ViewControls options={options} onChange={setOptions} templateCount={-1} />
          <div className="compare-grid" style={{ ["--panels" as string]: String(Math.max(chosen.length, 1)) }}>
            {chosen.map((entry) => (
              <ComparePanel key={entryKey(entry)} entry={entry} options={options} selection={selection} />
            ))}
          </div>
        </>
      )}
    </main>
  );
}

function ComparePanel({ entry, options, selection }: { entry: CompareEntry; options: ViewOptions; selection: Selection }) {
  const { att, error } = useAttribution(urls.result(entry.run_id, entry.prompt_id));
  const d = useDerived(att, options, selection.active, 5);
  return (
    <section className="panel compare-panel" data-run={entry.run_id} aria-label={`${entry.method} on ${entry.model}`}>
      <header className="compare-panel-header">
        <div>
          <strong>{entry.method}</strong> <span className="mono muted small">{entry.model}</span>
        </div>
        <Link to={paths.result(entry.run_id, entry.prompt_id)} className="mono small">
          {entry.run_id}/{entry.prompt_id}
        </Link>
      </header>
      {error && <Notice kind="error">{error.message}</Notice>}
      {!att && !error && <Loading what={entry.run_id} />}
      {att && (
        <>
          <h3>Input</h3>
          <TokenChips
            {...sharedChipProps(att, d, options)}
            kind="input"
            columns={d.inputColumns}
            ariaLabel={`Input tokens in ${entry.run_id}`}
          />
          <h3>Output</h3>
          <TokenChips
            {...sharedChipProps(att, d, options)}
            kind="output"
            columns={d.outputColumns}
            selection={selection}
            ariaLabel={`Output tokens in ${entry.run_id}`}
          />
          <h3>Top sources</h3>
          {selection.active !== null && selection.active >= att.nOut ? (
            <p className="hint">This run has only {att.nOut} output tokens.</p>
          ) : (
            <TopSources att={att} row={d.activeRow} sources={d.sources} mode={options.mode} compact />
          )}
          {d.activeRow !== null && (
            <p className="muted small">
              output #{d.activeRow} here is <span className="tok tok-inline">{displayToken(att.outputTokens[d.activeRow])}</span>
            </p>
          )}
        </>
      )}
    </section>
  );
}
