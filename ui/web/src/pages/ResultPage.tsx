// `/runs/<run_id>/<prompt_id>`: one result. The pinned output token lives in the URL (?t=5), so a finding can
// be shared as a link.
import { useCallback, useEffect, useMemo, useState } from "react";
import { Breadcrumbs, formatTime, Loading, Notice } from "../components/Common";
import { ResultExplorer, templateCount, useDerived } from "../components/ResultExplorer";
import { ViewControls } from "../components/ViewControls";
import { urls } from "../lib/api";
import { DEFAULT_VIEW, groupAttribution, hasGroups, type Attribution, type ViewOptions } from "../lib/attribution";
import { renderHeatmapPng, saveBlob } from "../lib/heatmap";
import { loadResult } from "../lib/loadResult";
import { Link, navigate, paths, useLocation } from "../lib/router";
import { useSelection } from "../lib/selection";

export function useAttribution(url: string): { att: Attribution | null; error: Error | null } {
  const [state, setState] = useState<{ url: string; att: Attribution | null; error: Error | null }>({
    url,
    att: null,
    error: null,
  });
  useEffect(() => {
    let current = true;
    setState({ url, att: null, error: null });
    loadResult(url).then(
      (att) => current && setState({ url, att, error: null }),
      (error: Error) => current && setState({ url, att: null, error }),
    );
    return () => {
      current = false;
    };
  }, [url]);
  return state.url === url ? state : { att: null, error: null };
}

export function pinnedFromSearch(search: URLSearchParams): number | null {
  const raw = search.get("t");
  const row = raw === null ? NaN : Number(raw);
  return Number.isInteger(row) && row >= 0 ? row : null;
}

export function ResultPage({ runId, promptId }: { runId: string; promptId: string }) {
  const { att, error } = useAttribution(urls.result(runId, promptId));
  const { search } = useLocation();
  const onPinChange = useCallback(
    (row: number | null) => {
      const base = paths.result(runId, promptId);
      navigate(row === null ? base : `${base}?t=${row}`, { replace: true });
    },
    [runId, promptId],
  );
  const selection = useSelection(pinnedFromSearch(search), onPinChange);
  const [options, setOptions] = useState<ViewOptions>(DEFAULT_VIEW);
  const [pngError, setPngError] = useState<string | null>(null);
  const shown = useMemo(() => (att ? groupAttribution(att, options.level) : null), [att, options.level]);
  const derived = useDerived(shown, options, null);
  const changeOptions = (next: ViewOptions) => {
    if (next.level !== options.level) selection.pin(null); // row numbers mean other rows at another level
    setOptions(next);
  };

  const downloadPng = async () => {
    if (!shown || !derived.strengths) return;
    setPngError(null);
    try {
      const blob = await renderHeatmapPng(shown, derived.strengths, derived.rows, derived.columns, {
        title: `${runId} / ${promptId}`,
        subtitle: `${shown.metadata.llm_id} · ${shown.metadata.attribution_method} · threshold ${options.threshold.toFixed(2)}`,
        threshold: options.threshold,
        valueLabel: options.mode === "raw" ? "raw, share of the largest |value|" : "normalized per row",
      });
      saveBlob(blob, `${runId}_${promptId}_heatmap.png`);
    } catch (failure) {
      setPngError((failure as Error).message);
    }
  };

  const meta = att?.metadata;
  return (
    <main className="page">
      <Breadcrumbs
        items={[{ label: "Runs", to: paths.runs() }, { label: runId, to: paths.run(runId) }, { label: promptId }]}
      />
      {error && <Notice kind="error">{error.message}</Notice>}
      {!att && !error && <Loading what="the result" />}
      {att && meta && (
        <>
          <header className="page-header result-header">
            <div className="result-title">
              <h1 className="prompt-title" title={meta.prompt}>
                {meta.prompt}
              </h1>
              <div className="meta-row">
                <span className="meta">
                  <span className="muted">model</span> <span className="mono">{meta.llm_id}</span>
                </span>
                <span className="meta">
                  <span className="muted">method</span> {meta.attribution_method}
                  {meta.engine && <span className="muted"> ({meta.engine})</span>}
                </span>
                <span className="meta">
                  <span className="muted">tokens</span> {att.nIn} in · {att.nOut} out
                </span>
                {meta.timings_s && Object.keys(meta.timings_s).length > 0 && (
                  <span className="meta">
                    <span className="muted">time</span>{" "}
                    {Object.entries(meta.timings_s)
                      .map(([phase, seconds]) => `${phase} ${Number(seconds).toFixed(2)} s`)
                      .join(" · ")}
                  </span>
                )}
                {meta.timestamp && <span className="meta muted">{formatTime(meta.timestamp)}</span>}
              </div>
            </div>
            <div className="actions">
              <Link to={paths.compare(runId, promptId)} className="button">
                Compare runs
              </Link>
              <a className="button" href={urls.resultDownload(runId, promptId)} download>
                Download JSON
              </a>
              <button type="button" className="button" onClick={downloadPng}>
                Download PNG
              </button>
            </div>
          </header>
          {pngError && <Notice kind="error">Could not make the PNG: {pngError}</Notice>}
          <ViewControls
            options={options}
            onChange={changeOptions}
            templateCount={templateCount(shown ?? att)}
            canGroup={hasGroups(att)}
          />
          <ResultExplorer att={shown ?? att} options={options} selection={selection} />
        </>
      )}
    </main>
  );
}
