// Fetch a JSON endpoint and keep it fresh: re-fetch after `nextPollMs(data)` milliseconds (null: stop) while the
// tab is visible, so a run in progress shows its progress without a reload. A slow answer backs polling off: the
// next request waits at least BACKOFF_FACTOR times as long as the last one took, so a busy server (a huge run,
// a slow S3) is asked less often instead of being kept busy by its own pages.
import { useCallback, useEffect, useRef, useState } from "react";
import { getJson } from "./api";

/** The next poll waits at least this many times as long as the last answer took. */
export const BACKOFF_FACTOR = 10;
/** ... but never longer than this between polls. */
export const MAX_POLL_MS = 60000;

/** How long to wait before the next poll: what the page asked for, backed off by how long the last answer took. */
export function pollDelayMs(requestedMs: number, lastAnswerMs: number): number {
  return Math.min(Math.max(requestedMs, lastAnswerMs * BACKOFF_FACTOR), Math.max(requestedMs, MAX_POLL_MS));
}

export interface Polled<T> {
  data: T | null;
  error: Error | null;
  loading: boolean;
  reload: () => void;
}

export function usePolling<T>(url: string, nextPollMs: (data: T) => number | null, retryMs = 5000): Polled<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const nextRef = useRef(nextPollMs);
  nextRef.current = nextPollMs;

  useEffect(() => {
    setData(null);
    setError(null);
    setLoading(true);
  }, [url]);

  useEffect(() => {
    const controller = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    // A hidden tab stops polling; the visibilitychange listener below picks up again.
    const again = (delayMs: number) => {
      timer = setTimeout(() => {
        if (document.visibilityState !== "hidden") setTick((t) => t + 1);
      }, delayMs);
    };
    const startedMs = performance.now();
    getJson<T>(url, controller.signal)
      .then((fresh) => {
        setData(fresh);
        setError(null);
        setLoading(false);
        const delayMs = nextRef.current(fresh);
        if (delayMs !== null) again(pollDelayMs(delayMs, performance.now() - startedMs));
      })
      .catch((failure: Error) => {
        if (failure.name === "AbortError") return;
        setError(failure);
        setLoading(false);
        // Keep trying: the server may be restarting, and a run may appear later.
        again(retryMs);
      });
    return () => {
      controller.abort();
      if (timer) clearTimeout(timer);
    };
  }, [url, tick, retryMs]);

  useEffect(() => {
    const onVisible = () => {
      if (document.visibilityState === "visible") setTick((t) => t + 1);
    };
    document.addEventListener("visibilitychange", onVisible);
    return () => document.removeEventListener("visibilitychange", onVisible);
  }, []);

  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, loading, reload };
}
