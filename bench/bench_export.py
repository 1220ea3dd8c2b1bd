"""Export benchmark: `tokenlens export` of a synthetic run, its memory, and a DuckDB question on the output.

A run of N prompts (default 20,000), each 20 input x 64 output tokens with random scores, is written in the
real layout (half json, half compact, like a run with ``--result-format auto`` around the threshold). Then,
in a fresh process (so its peak RSS is the export's own), `tokenlens.export.export_run` writes the token-level
Parquet tables, and DuckDB answers "the top 20 input tokens by total attribution" on them.

Goals (issue 16): export under 60 s with under 1 GB RSS; the DuckDB query under 1 s.

    python bench/bench_export.py                 # 20,000 prompts; writes bench/export_results.json and a
                                                 # section of bench/results.md
    python bench/bench_export.py --prompts 2000  # a quick look
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from report_sections import replace_section  # noqa: E402 (bench/ is on sys.path when this file runs)

from tests.fixtures.synthetic_runs import synthetic_result  # noqa: E402
from tokenlens.result_codec import encode_result  # noqa: E402
from tokenlens.results import RunStore  # noqa: E402
from tokenlens.schema import RunManifest  # noqa: E402

RUN_ID = "bench-export"
TEMPLATES = 200
QUERY = (
    "SELECT source_clean_token, sum(score) AS total FROM read_parquet('{dest}/attributions/*.parquet') "
    "WHERE source_kind = 'prompt' GROUP BY 1 ORDER BY total DESC LIMIT 20"
)

EXPORT_CHILD = """
import json, resource, sys, time
from tokenlens.export import default_jobs, export_run
jobs = int(sys.argv[4]) if sys.argv[4] != "default" else default_jobs()
started = time.perf_counter()
report = export_run(sys.argv[1], sys.argv[2], sys.argv[3], jobs=jobs)
seconds = time.perf_counter() - started
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)
peak_mb = max(u.ru_maxrss for u in usage) / 1024  # the largest single process (workers are separate)
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_rss_mb": peak_mb, "rows": report.rows, "jobs": jobs}))
"""


def run_measuring_memory(command: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run `command`; its stdout, and the largest RSS its processes held together (sampled every 50 ms), in MB."""
    import psutil

    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as child:
        parent, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            try:
                family = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(process.memory_info().rss for process in family))
            except psutil.Error:  # a worker that ended between listing and reading
                pass
            time.sleep(0.05)
        out = child.stdout.read() if child.stdout else ""
        if child.returncode:
            raise SystemExit(f"the export failed (exit {child.returncode})")
    return out, peak / 2**20


def write_run(results: Path, n_prompts: int, n_in: int, n_out: int) -> None:
    """The run's files, written straight to disk (setup, not measured): a few hundred distinct results, each
    stored under many prompt ids with its prompt_id rewritten, so that setup takes seconds, not minutes."""
    rng = np.random.default_rng(0)
    folder = results / "runs" / RUN_ID / "results"
    folder.mkdir(parents=True)
    bodies = []
    for index in range(TEMPLATES):
        result = synthetic_result(RUN_ID, "TEMPLATE", rng, n_in=n_in, n_out=n_out)
        fmt = "json" if index % 2 == 0 else "compact"
        body = encode_result(result, fmt).body
        bodies.append((fmt, gzip.decompress(body) if fmt == "compact" else body))
    ids = [f"p{index:06d}" for index in range(n_prompts)]
    for index, prompt_id in enumerate(ids):
        fmt, plain = bodies[index % TEMPLATES]
        body = plain.replace(b'"prompt_id":"TEMPLATE"', f'"prompt_id":"{prompt_id}"'.encode())
        (folder / f"{prompt_id}.json").write_bytes(gzip.compress(body, 1, mtime=0) if fmt == "compact" else body)
    from storage_backends import LocalStorage

    RunStore(LocalStorage(results), RUN_ID).write_manifest(
        RunManifest(
            run_id=RUN_ID, model="synthetic/tiny-model", method="saliency", prompt_count=n_prompts, prompt_ids=ids
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20_000)
    parser.add_argument("--n-in", type=int, default=20)
    parser.add_argument("--n-out", type=int, default=64)
    parser.add_argument("--jobs", type=int, help="Export processes (default: the export's, one per CPU).")
    parser.add_argument("--no-report", action="store_true", help="Print only; leave bench/results.md alone.")
    parser.add_argument(
        "--report-only", action="store_true", help="Rewrite the results.md section from bench/export_results.json."
    )
    args = parser.parse_args()
    if args.report_only:
        write_section(json.loads((REPO / "bench" / "export_results.json").read_text()))
        return
    import duckdb

    with tempfile.TemporaryDirectory(prefix="tokenlens-bench-export-") as work:
        results, dest = Path(work) / "results", Path(work) / "export"
        started = time.perf_counter()
        write_run(results, args.prompts, args.n_in, args.n_out)
        print(f"wrote {args.prompts} results in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        jobs = "default" if args.jobs is None else str(args.jobs)
        out, total_rss_mb = run_measuring_memory(
            [sys.executable, "-c", EXPORT_CHILD, str(results), RUN_ID, str(dest), jobs], env
        )
        export = json.loads(out.strip().splitlines()[-1])
        size_mb = sum(path.stat().st_size for path in dest.rglob("*.parquet")) / 2**20
        query = QUERY.format(dest=dest)
        timings, cpu_timings = [], []
        for _ in range(3):
            connection = duckdb.connect()
            began, began_cpu = time.perf_counter(), time.process_time()
            top = connection.sql(query).fetchall()
            timings.append(time.perf_counter() - began)
            cpu_timings.append(time.process_time() - began_cpu)  # DuckDB's threads run in this process
            connection.close()
    report = {
        "prompts": args.prompts,
        "shape": [args.n_in, args.n_out],
        "jobs": export["jobs"],
        "export_s": round(export["seconds"], 2),
        # CPU seconds of all the export's processes and threads together.
        "export_cpu_s": round(export["cpu_s"], 2),
        "export_peak_rss_mb": round(export["peak_rss_mb"]),
        "export_total_rss_mb": round(total_rss_mb),
        "rows": export["rows"],
        "parquet_mb": round(size_mb, 1),
        "duckdb_top20_first_s": round(timings[0], 3),
        "duckdb_top20_best_s": round(min(timings), 3),
        "duckdb_top20_cpu_best_s": round(min(cpu_timings), 3),
        "top_tokens": [row[0] for row in top[:5]],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}",
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(report, indent=2))
    if args.no_report:
        return
    (REPO / "bench" / "export_results.json").write_text(json.dumps(report, indent=2) + "\n")
    write_section(report)


#: The run size the goals are stated for (issue 16); smaller runs are reported without a verdict.
GOAL_PROMPTS = 20_000


def write_section(report: dict[str, Any]) -> None:
    """The export section of bench/results.md, from one run's report."""
    full_size = report["prompts"] >= GOAL_PROMPTS

    def met(value: float, goal: float) -> str:
        if not full_size:
            return f"(goal is for {GOAL_PROMPTS:,} prompts)"
        return "yes" if value < goal else "**no**"

    rows = report["rows"]["attributions"]
    query_s = (
        f"{report['duckdb_top20_first_s']} s first, {report['duckdb_top20_best_s']} s best of 3 "
        f"({report.get('duckdb_top20_cpu_best_s', '?')} s CPU)"
    )
    total_rss = report.get("export_total_rss_mb")
    rss_met = met(report["export_peak_rss_mb"], 1024)
    text = f"""## Export: a run as Parquet (`bench/bench_export.py`)

{report["prompts"]:,} synthetic results of {report["shape"][0]} x {report["shape"][1]} tokens (half json, half
compact), token level, {report.get("jobs", 1)} export process(es), on {report["machine"]}, load average
{report["load_average"]:.1f} when it ran. Command: `python bench/bench_export.py --prompts {report["prompts"]}`.

| measure | result | goal | met |
| --- | --- | --- | --- |
| `export_run` wall time | {report["export_s"]} s | < 60 s | {met(report["export_s"], 60)} |
| `export_run` CPU time (user + system, all threads and processes) | {report["export_cpu_s"]} s | | |
| export peak RSS, the largest process | {report["export_peak_rss_mb"]} MB | < 1 GB | {rss_met} |
| export peak RSS, all its processes together (sampled) | {total_rss} MB | | |
| rows written | {rows:,} ({report["parquet_mb"]} MB of Parquet) | | |
| DuckDB: top 20 input tokens by total attribution | {query_s} | < 1 s | {met(report["duckdb_top20_best_s"], 1)} |

On a shared machine the wall times are several times the CPU time (the load average is the number of
processes wanting the 2 cores). The CPU time is what the export costs on its own: on idle cores it would
take about that long divided by the number of export processes.
"""
    replace_section(REPO / "bench" / "results.md", "export", text)


if __name__ == "__main__":
    main()
