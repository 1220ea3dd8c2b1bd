// A tiny history router: the app has four kinds of page, each with an addressable URL, and needs nothing more.
import { useSyncExternalStore, type AnchorHTMLAttributes, type MouseEvent, type ReactNode } from "react";

const NAVIGATE_EVENT = "tokenlens:navigate";

function subscribe(onChange: () => void): () => void {
  window.addEventListener("popstate", onChange);
  window.addEventListener(NAVIGATE_EVENT, onChange);
  return () => {
    window.removeEventListener("popstate", onChange);
    window.removeEventListener(NAVIGATE_EVENT, onChange);
  };
}

const currentHref = () => window.location.pathname + window.location.search;

/** The current path and query, re-rendering on navigation. */
export function useLocation(): { pathname: string; search: URLSearchParams } {
  const href = useSyncExternalStore(subscribe, currentHref, currentHref);
  const url = new URL(href, "http://app.invalid");
  return { pathname: url.pathname, search: url.searchParams };
}

export function navigate(to: string, options: { replace?: boolean } = {}): void {
  if (to === currentHref()) return;
  if (options.replace) window.history.replaceState(null, "", to);
  else window.history.pushState(null, "", to);
  window.dispatchEvent(new Event(NAVIGATE_EVENT));
  if (!options.replace) window.scrollTo?.(0, 0);
}

export type Route =
  | { page: "runs" }
  | { page: "run"; runId: string }
  | { page: "result"; runId: string; promptId: string }
  | { page: "compare"; runId: string; promptId: string }
  | { page: "insights"; runId: string }
  | { page: "agreement"; runId: string }
  | { page: "not-found"; path: string };

/** Which page a path names: /, /runs/<run>, /runs/<run>/<prompt>, /compare/<run>/<prompt>, /insights/<run>,
 * /agreement/<run>. */
export function matchRoute(pathname: string): Route {
  let parts: string[];
  try {
    parts = pathname.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    return { page: "not-found", path: pathname };
  }
  if (parts.length === 0) return { page: "runs" };
  if (parts[0] === "runs" && parts.length === 2) return { page: "run", runId: parts[1] };
  if (parts[0] === "runs" && parts.length === 3) return { page: "result", runId: parts[1], promptId: parts[2] };
  if (parts[0] === "compare" && parts.length === 3) return { page: "compare", runId: parts[1], promptId: parts[2] };
  if (parts[0] === "insights" && parts.length === 2) return { page: "insights", runId: parts[1] };
  if (parts[0] === "agreement" && parts.length === 2) return { page: "agreement", runId: parts[1] };
  return { page: "not-found", path: pathname };
}

const enc = encodeURIComponent;

export const paths = {
  runs: () => "/",
  run: (runId: string) => `/runs/${enc(runId)}`,
  result: (runId: string, promptId: string) => `/runs/${enc(runId)}/${enc(promptId)}`,
  compare: (runId: string, promptId: string) => `/compare/${enc(runId)}/${enc(promptId)}`,
  insights: (runId: string) => `/insights/${enc(runId)}`,
  agreement: (runId: string, otherRunId = "") =>
    `/agreement/${enc(runId)}${otherRunId ? `?with=${enc(otherRunId)}` : ""}`,
};

/** An <a> that navigates in-app on a plain left click and behaves as a normal link otherwise. */
export function Link({
  to,
  children,
  ...rest
}: { to: string; children: ReactNode } & Omit<AnchorHTMLAttributes<HTMLAnchorElement>, "href">) {
  const onClick = (event: MouseEvent<HTMLAnchorElement>) => {
    rest.onClick?.(event);
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey)
      return;
    event.preventDefault();
    navigate(to);
  };
  return (
    <a {...rest} href={to} onClick={onClick}>
      {children}
    </a>
  );
}
