// The run-level views that ui/run_views_api.py serves (computed by tokenlens/run_views.py), typed, and the
// pure helpers the Insights and Agreement pages draw them with.

const enc = encodeURIComponent;

/** The units token importance ranks: tokens, or words (tokens grouped by tokenlens/words.py). */
export const IMPORTANCE_LEVELS = ["token", "word"] as const;
export type ImportanceLevel = (typeof IMPORTANCE_LEVELS)[number];

/** The level a URL's ?level= names; tokens for anything else. */
export function importanceLevel(value: string | null): ImportanceLevel {
  return (IMPORTANCE_LEVELS as readonly string[]).includes(value ?? "") ? (value as ImportanceLevel) : "token";
}

export const viewUrls = {
  importance: (runId: string, level: ImportanceLevel = "token", limit = 50) =>
    `/api/views/${enc(runId)}/importance?level=${level}&limit=${limit}`,
  attention: (runId: string) => `/api/views/${enc(runId)}/attention`,
  agreement: (runId: string, otherRunId: string) => `/api/views/${enc(runId)}/agreement?with=${enc(otherRunId)}`,
  performance: () => "/api/views/performance",
};

export interface Unreadable {
  prompt_id: string;
  error: string;
}

interface ViewSummary {
  run_id: string;
  prompts: number;
  unreadable: Unreadable[];
}

export interface ImportantToken {
  token: string;
  score: number;
  total: number;
  count: number;
  mean: number;
  top_prompts: { prompt_id: string; score: number }[];
}

export interface ImportanceView extends ViewSummary {
  level: string;
  formula: string;
  prior_count: number;
  mean_per_occurrence: number;
  distinct_tokens: number;
  tokens: ImportantToken[];
}

export interface Shares {
  prompt: number;
  template: number;
  generated: number;
}

export interface AttentionView extends ViewSummary {
  overall: Shares & { rows: number };
  by_position: (Shares & { position: number; rows: number })[];
  distance: { bucket: string; share: number }[];
}

export interface AgreementView {
  run_id: string;
  other_run_id: string;
  top_k: number;
  compared: number;
  not_compared: Record<string, number>;
  only_in_run: number;
  only_in_other: number;
  spearman: { mean: number | null; median: number | null };
  top_k_overlap: { mean: number | null };
  histogram: { low: number; high: number; count: number }[];
  disagree_most: { prompt_id: string; spearman: number; top_k_overlap: number; rows: number }[];
}

export interface PhaseCost {
  per_prompt_s: number;
  per_output_token_s: number | null;
  prompts: number;
}

export interface PerformanceGroup {
  model: string;
  method: string;
  device: string;
  runs: string[];
  prompts: number;
  output_tokens: number;
  phases: Record<string, PhaseCost>;
}

export interface PerformanceView {
  groups: PerformanceGroup[];
  skipped_runs: { run_id: string; error: string }[];
}

/** A number as the pages show it: fixed `digits` decimals, "–" for none. */
export function fixed(value: number | null | undefined, digits = 3): string {
  return value === null || value === undefined || !Number.isFinite(value) ? "–" : value.toFixed(digits);
}

/** A share in [0, 1] as a percentage with one decimal. */
export function percent(value: number): string {
  return `${(100 * value).toFixed(1)}%`;
}

/** Seconds in a readable unit (ms below one second). */
export function seconds(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return value < 1 ? `${(1000 * value).toFixed(1)} ms` : `${value.toFixed(2)} s`;
}

/** Each value's bar length as a fraction of the largest (0 when all are 0). */
export function barFractions(values: number[]): number[] {
  const largest = Math.max(0, ...values);
  return values.map((v) => (largest > 0 ? Math.max(0, v) / largest : 0));
}

/** The phases any group recorded, "total" last (the columns of the performance table). */
export function phaseColumns(groups: PerformanceGroup[]): string[] {
  const names = new Set<string>();
  for (const group of groups) for (const phase of Object.keys(group.phases)) names.add(phase);
  const sorted = [...names].filter((n) => n !== "total").sort();
  return names.has("total") ? [...sorted, "total"] : sorted;
}

/** Other runs worth comparing with `runId`: the same prompt count first (likely the same prompts), then newest. */
export function agreementCandidates<T extends { run_id: string; prompt_count: number; created_at: string; error?: string }>(
  runs: T[],
  runId: string,
): T[] {
  const self = runs.find((r) => r.run_id === runId);
  return runs
    .filter((r) => r.run_id !== runId && !r.error)
    .sort((a, b) => {
      const sameA = self && a.prompt_count === self.prompt_count ? 0 : 1;
      const sameB = self && b.prompt_count === self.prompt_count ? 0 : 1;
      return sameA - sameB || b.created_at.localeCompare(a.created_at) || a.run_id.localeCompare(b.run_id);
    });
}

/** The distance profile without its empty far end (buckets beyond the longest distance in the run). */
export function withoutEmptyTail<T extends { share: number }>(rows: T[]): T[] {
  let end = rows.length;
  while (end > 1 && rows[end - 1].share === 0) end--;
  return rows.slice(0, end);
}
