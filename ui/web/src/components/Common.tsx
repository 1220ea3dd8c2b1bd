// Small building blocks shared by the pages: breadcrumbs, progress bars, status badges, notices.
import type { ReactNode } from "react";
import { Link } from "../lib/router";
import type { PromptStatus, RunSummary } from "../lib/api";

export function Breadcrumbs({ items }: { items: { label: string; to?: string }[] }) {
  return (
    <nav className="breadcrumbs" aria-label="Breadcrumb">
      {items.map((item, index) => (
        <span key={index}>
          {index > 0 && <span className="crumb-sep" aria-hidden>›</span>}
          {item.to ? <Link to={item.to}>{item.label}</Link> : <span aria-current="page">{item.label}</span>}
        </span>
      ))}
    </nav>
  );
}

export function ProgressBar({ run }: { run: Pick<RunSummary, "done" | "failed" | "pending" | "prompt_count"> }) {
  const total = Math.max(run.prompt_count, run.done + run.failed + run.pending, 1);
  const pct = (n: number) => `${(100 * n) / total}%`;
  return (
    <div className="progress" data-testid="progress">
      <div
        className="progress-bar"
        role="progressbar"
        aria-valuemin={0}
        aria-valuemax={total}
        aria-valuenow={run.done + run.failed}
        aria-label={`${run.done} done, ${run.failed} failed, ${run.pending} pending`}
      >
        <span className="progress-done" style={{ width: pct(run.done) }} />
        <span className="progress-failed" style={{ width: pct(run.failed) }} />
      </div>
      <span className="progress-text">
        <strong>{run.done}</strong> done
        {run.failed > 0 && (
          <>
            {" · "}
            <strong className="text-failed">{run.failed}</strong> failed
          </>
        )}
        {run.pending > 0 && (
          <>
            {" · "}
            <strong>{run.pending}</strong> pending
          </>
        )}
        <span className="muted"> of {run.prompt_count}</span>
      </span>
    </div>
  );
}

export function StatusBadge({ status }: { status: PromptStatus | "running" | "complete" | "failures" }) {
  const labels: Record<string, string> = {
    done: "done",
    failed: "failed",
    corrupt: "corrupt: resume the run",
    pending: "pending",
    running: "in progress",
    complete: "complete",
    failures: "complete, with failures",
  };
  return <span className={`badge badge-${status}`}>{labels[status]}</span>;
}

export function runStatus(run: RunSummary): "running" | "complete" | "failures" | "corrupt" {
  // A corrupt result waits for a resume, not for a worker: say so rather than "in progress".
  if (run.pending === 0 && run.corrupt > 0) return "corrupt";
  if (!run.complete) return "running";
  return run.failed > 0 ? "failures" : "complete";
}

export function Notice({ kind = "info", children }: { kind?: "info" | "error"; children: ReactNode }) {
  return (
    <div className={`notice notice-${kind}`} role={kind === "error" ? "alert" : "status"}>
      {children}
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <div className="loading" role="status">
      <span className="spinner" aria-hidden /> Loading {what}…
    </div>
  );
}

/** "2026-11-27T13:00:00Z" as a short local date and time. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}
