// Load a result for a page: in a worker where the browser has them (so a large file never freezes the page),
// else on the main thread. Recent results are kept, so going back and forth between pages is instant.
import { ApiError } from "./api";
import type { Attribution } from "./attribution";
import { fetchAttribution } from "./fetchAttribution";
import type { WorkerReply } from "./resultWorker";

const RECENT_LIMIT = 6;
const recent = new Map<string, Promise<Attribution>>();

function loadInWorker(url: string): Promise<Attribution> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL("./resultWorker.ts", import.meta.url), { type: "module" });
    worker.onmessage = (event: MessageEvent<WorkerReply>) => {
      worker.terminate();
      const reply = event.data;
      if (reply.ok) resolve(reply.attribution);
      else reject(new ApiError(reply.status, reply.message));
    };
    worker.onerror = (event) => {
      worker.terminate();
      event.preventDefault();
      // A worker that can't start (e.g. a strict proxy): fall back to the main thread.
      fetchAttribution(url).then(resolve, reject);
    };
    worker.postMessage({ url });
  });
}

export function loadResult(url: string): Promise<Attribution> {
  const cached = recent.get(url);
  if (cached) {
    recent.delete(url);
    recent.set(url, cached);
    return cached;
  }
  const pending = typeof Worker === "undefined" ? fetchAttribution(url) : loadInWorker(url);
  recent.set(url, pending);
  pending.catch(() => recent.delete(url));
  while (recent.size > RECENT_LIMIT) recent.delete(recent.keys().next().value as string);
  return pending;
}

export function forgetLoadedResults(): void {
  recent.clear();
}
