// The read-only API that `tokenlens ui` serves (ui/http_api.py), typed. Every URL the app fetches is built here.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export interface RunSummary {
  run_id: string;
  model: string;
  method: string;
  engine: string;
  mode: string;
  source: string | null;
  created_at: string;
  prompt_count: number;
  done: number;
  failed: number;
  /** Result files that don't parse or validate; resuming the run attributes them again. */
  corrupt: number;
  pending: number;
  complete: boolean;
  /** Stopped by `tokenlens cancel` until a resume: nothing more will come. */
  cancelled?: boolean;
  /** Set, with nothing else but run_id, when the run's run.json can't be read. */
  error?: string;
}

export interface RunsResponse {
  results_url: string;
  runs: RunSummary[];
}

export type PromptStatus = "done" | "failed" | "corrupt" | "pending";

export interface PromptError {
  error_type: string;
  message: string;
  attempts: number;
  timestamp: string;
}

export interface PromptEntry {
  prompt_id: string;
  status: PromptStatus;
  prompt: string | null;
  error: PromptError | null;
}

/** One page of a run (GET /api/runs/{id}?offset&limit&status&q): `total` rows match the search and filter. */
export interface RunDetail {
  run: RunSummary;
  manifest: Record<string, unknown> & { method_params?: Record<string, unknown>; generation_params?: Record<string, unknown> };
  prompts: PromptEntry[];
  total: number;
  offset: number;
  limit: number;
}

/** A run's counts only (GET /api/runs/{id}/counts): what the run page polls. */
export interface RunCountsResponse {
  run: RunSummary;
}

export interface RunPageQuery {
  offset: number;
  limit: number;
  status?: PromptStatus;
  q?: string;
}

/** Whether more results can still arrive: prompts pending and not cancelled (a corrupt one waits for a resume). */
export function runIsLive(run: RunSummary): boolean {
  return !run.error && run.pending > 0 && !run.cancelled;
}

export interface CompareEntry {
  run_id: string;
  prompt_id: string;
  model: string;
  method: string;
  engine: string;
  created_at: string;
  matched_by: "self" | "id" | "text";
  status: "done" | "failed";
  same_text: boolean;
}

export interface CompareResponse {
  run_id: string;
  prompt_id: string;
  prompt: string | null;
  entries: CompareEntry[];
}

const enc = encodeURIComponent;

export const urls = {
  runs: () => "/api/runs",
  run: (runId: string) => `/api/runs/${enc(runId)}`,
  runPage: (runId: string, page: RunPageQuery) => {
    const params = new URLSearchParams({ offset: String(page.offset), limit: String(page.limit) });
    if (page.status) params.set("status", page.status);
    if (page.q) params.set("q", page.q);
    return `/api/runs/${enc(runId)}?${params.toString()}`;
  },
  runCounts: (runId: string) => `/api/runs/${enc(runId)}/counts`,
  result: (runId: string, promptId: string) => `/api/runs/${enc(runId)}/results/${enc(promptId)}`,
  resultDownload: (runId: string, promptId: string) => `/api/runs/${enc(runId)}/results/${enc(promptId)}?download=1`,
  compare: (runId: string, promptId: string) => `/api/compare?run_id=${enc(runId)}&prompt_id=${enc(promptId)}`,
};

/** GET a JSON endpoint; a non-2xx answer becomes an ApiError with the server's message. */
export async function getJson<T>(url: string, signal?: AbortSignal): Promise<T> {
  let response: Response;
  try {
    response = await fetch(url, { headers: { accept: "application/json" }, signal });
  } catch (error) {
    if ((error as Error).name === "AbortError") throw error;
    throw new ApiError(0, "the TokenLens server can't be reached; is `tokenlens ui` still running?");
  }
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return (await response.json()) as T;
}

async function errorMessage(response: Response): Promise<string> {
  try {
    const body = (await response.json()) as { error?: string };
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText || "error"} for ${response.url}`;
}
