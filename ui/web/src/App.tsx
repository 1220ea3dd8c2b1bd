// The app shell: a header, and the page the URL names.
import { useEffect, useState } from "react";
import { getJson } from "./lib/api";
import { Link, matchRoute, paths, useLocation } from "./lib/router";
import { AgreementPage } from "./pages/AgreementPage";
import { ComparePage } from "./pages/ComparePage";
import { InsightsPage } from "./pages/InsightsPage";
import { ResultPage } from "./pages/ResultPage";
import { RunPage } from "./pages/RunPage";
import { RunsPage } from "./pages/RunsPage";

function useResultsUrl(): string | null {
  const [url, setUrl] = useState<string | null>(null);
  useEffect(() => {
    getJson<{ results_url: string }>("/api/health").then(
      (health) => setUrl(health.results_url),
      () => setUrl(null),
    );
  }, []);
  return url;
}

export function App() {
  const { pathname } = useLocation();
  const route = matchRoute(pathname);
  const resultsUrl = useResultsUrl();

  useEffect(() => {
    const titles: Record<string, string> = {
      runs: "Runs",
      run: "runId" in route ? route.runId : "",
      result: "promptId" in route ? `${route.promptId} · ${route.runId}` : "",
      compare: "promptId" in route ? `Compare ${route.promptId}` : "",
      insights: "runId" in route ? `Insights · ${route.runId}` : "",
      agreement: "runId" in route ? `Agreement · ${route.runId}` : "",
      "not-found": "Not found",
    };
    document.title = `${titles[route.page]} — TokenLens`;
  }, [route]);

  let page;
  switch (route.page) {
    case "runs":
      page = <RunsPage />;
      break;
    case "run":
      page = <RunPage key={route.runId} runId={route.runId} />;
      break;
    case "result":
      page = <ResultPage key={`${route.runId}/${route.promptId}`} runId={route.runId} promptId={route.promptId} />;
      break;
    case "compare":
      page = <ComparePage key={`${route.runId}/${route.promptId}`} runId={route.runId} promptId={route.promptId} />;
      break;
    case "insights":
      page = <InsightsPage key={route.runId} runId={route.runId} />;
      break;
    case "agreement":
      page = <AgreementPage key={route.runId} runId={route.runId} />;
      break;
    default:
      page = (
        <main className="page">
          <h1>Not found</h1>
          <p>
            Nothing lives at <code>{route.path}</code>. <Link to={paths.runs()}>See all runs</Link>.
          </p>
        </main>
      );
  }
  return (
    <>
      <header className="app-header">
        <Link to={paths.runs()} className="brand" aria-label="TokenLens: all runs">
          <span className="brand-mark" aria-hidden>
            <span />
            <span />
            <span />
          </span>
          TokenLens
        </Link>
        {resultsUrl && (
          <span className="app-source mono" title="The results URL this server reads">
            {resultsUrl}
          </span>
        )}
      </header>
      {page}
    </>
  );
}
