"""Do 100,000-prompt runs stay fast? Progress, the run pages, fetch and Redis at 1k vs 100k (issue 15).

    .venv/bin/python bench/bench_scale.py                   # 1k and 100k local, 1k and 20k on SeaweedFS
    .venv/bin/python bench/bench_scale.py --big 20000 --s3-big 5000 --no-write   # quicker, results.md untouched

Synthetic runs of the real layout: each result file is a real TokenLens file made by the real codec
(`tokenlens.result_codec.encode_result`, the default format; one file encoded, then given each prompt's id),
2% of prompts failed (error records), 10% pending, the prompt set in prompts.jsonl, and the progress record as
eight writers would leave it. For each size it times, in-process (median of several calls):

- `tokenlens runs` (`describe_runs`) and `tokenlens status` (`run_status`), and the same two commands as
  subprocesses (Python's start-up included);
- the UI's API: the runs page (`GET /api/runs`), a run's counts, and the first page of a run (100 rows), both
  on a fresh server (first visit) and again (the server remembers the prompt set);
- `tokenlens fetch` files/s of a whole run (local to local);

and, on a Redis server of its own: submitting 100k prompts, and the longest single command Redis ran (SLOWLOG)
while submitting a new run and cancelling or resuming a run, with 12.5k batches queued. The table goes into
bench/results.md (section "scale"); the README quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import redis
from starlette.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' fixtures (a Redis server, SeaweedFS) when this file runs as a script

from bench.report_sections import replace_section  # noqa: E402
from producer.fetch import describe_runs, fetch_run, plan_fetch  # noqa: E402
from producer.submit import cancel_run, run_status, submit_run  # noqa: E402
from storage_backends import LocalStorage, Storage, open_storage  # noqa: E402
from tests.fixtures.redis_server import free_port  # noqa: E402
from tokenlens.batch import PromptRecord  # noqa: E402
from tokenlens.progress import read_progress  # noqa: E402
from tokenlens.result_codec import encode_result  # noqa: E402
from tokenlens.results import RunStore  # noqa: E402
from tokenlens.schema import AnalysisData, AnalysisMetadata, AnalysisResult, ErrorRecord, RunManifest, TokenInfo  # noqa: E402
from tokenlens.spec import RunSpec  # noqa: E402
from ui.http_api import create_app  # noqa: E402

RESULTS_MD = REPO / "bench" / "results.md"
MODEL = "tokenlens-bench/no-such-model"
PLACEHOLDER = "PIDXXXXXXXXX"
WRITERS = 8
REPEATS = 5


def template_result(run_id: str) -> bytes:
    """One real TokenLens file (20 input, 16 output tokens) from the real codec, with a placeholder prompt id."""
    rng = np.random.default_rng(0)
    n_in, n_out = 20, 16
    scores = np.abs(rng.normal(size=(n_out, n_in + n_out))).astype(np.float32)
    for row in range(n_out):
        scores[row, n_in + row :] = 0.0
    peak = np.abs(scores).max(axis=1, keepdims=True)
    tokens = [TokenInfo(token=f"t{i}", token_id=i, clean_token=f"t{i}") for i in range(n_in + n_out)]
    result = AnalysisResult(
        metadata=AnalysisMetadata(
            llm_id=MODEL, prompt=f"Prompt {PLACEHOLDER}: which words drive the answer?", run_id=run_id,
            prompt_id=PLACEHOLDER, attribution_method="saliency",
        ),
        data=AnalysisData(
            input_tokens=tokens[:n_in], output_tokens=tokens[n_in:],
            association_matrix=scores.tolist(), normalized_association=(scores / peak).tolist(),
        ),
    )  # fmt: skip
    return encode_result(result).body


def prompt_id(i: int) -> str:
    return f"p{i:011d}"  # as long as PLACEHOLDER, so the file's bytes keep their shape


def make_run(storage: Storage, run_id: str, n: int, workers: int = 16) -> None:
    """A mid-flight run of `n` prompts: 88% done, 2% failed, 10% pending, with its progress record."""
    store = RunStore(storage, run_id)
    ids = [prompt_id(i) for i in range(n)]
    store.write_prompts([PromptRecord(id=pid, prompt=f"Prompt {pid}: which words drive the answer?") for pid in ids])
    template = template_result(run_id)
    failed = {pid for i, pid in enumerate(ids) if i % 50 == 7}
    done = [pid for pid in ids[: int(n * 0.9)] if pid not in failed]

    def write(pid: str) -> None:
        if pid in failed:
            record = ErrorRecord(run_id=run_id, prompt_id=pid, prompt="p", error_type="PromptTooLongError", message="x")
            storage.put(store.key("errors", pid), record.model_dump_json().encode())
        else:
            storage.put(store.key("results", pid), template.replace(PLACEHOLDER.encode(), pid.encode()))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(write, [*done, *failed]))
    # Eight writers' tallies, as workers leave them (tokenlens.tally), then the record rebuilt once from storage.
    for w in range(WRITERS):
        tally = {"done": len(done[w::WRITERS]), "failed": len(list(failed)[w::WRITERS]), "removed": 0,
                 "updated_at": time.time()}  # fmt: skip
        storage.put(f"runs/{run_id}/progress/w-bench-{w}.json", json.dumps(tally).encode())
    manifest = RunManifest(run_id=run_id, model=MODEL, method="saliency", prompt_count=n, prompt_ids=ids)
    read_progress(store, manifest)
    store.write_manifest(manifest)


def median_s(call: Callable[[], Any], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cli_s(*args: str, env: dict[str, str] | None = None) -> float:
    """Wall time of a `tokenlens` command (Python's start-up included), median of three."""
    tokenlens = str(Path(sys.executable).with_name("tokenlens"))

    def run() -> None:
        done = subprocess.run([tokenlens, *args], capture_output=True, text=True, env=env, check=False, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"tokenlens {' '.join(args)} failed: {done.stderr[-2000:]}")

    return median_s(run, 3)


def measure_reads(storage: Storage, run_id: str, broker: str, env: dict[str, str] | None) -> dict[str, float]:
    """Seconds per call of every reader, on a storage holding one run (plus smaller ones)."""
    row: dict[str, float] = {}
    row["runs"] = median_s(lambda: describe_runs(storage))
    row["status"] = median_s(lambda: run_status(run_id, results_url=storage.url, broker_url=broker))
    row["runs_cli"] = cli_s("runs", "--results", storage.url, env=env)
    row["status_cli"] = cli_s("status", run_id, "--results", storage.url, "--broker", broker, env=env)
    page = f"/api/runs/{run_id}?offset=0&limit=100"

    def first_visit() -> None:
        with TestClient(create_app(storage)) as client:
            assert len(client.get(page).json()["prompts"]) == 100

    row["page_first"] = median_s(first_visit, 3)

    def first_filtered_visit() -> None:  # the status filter lists the run once
        with TestClient(create_app(storage)) as client:
            client.get(page + "&status=pending").raise_for_status()

    row["page_pending_first"] = median_s(first_filtered_visit, 3)
    with TestClient(create_app(storage)) as client:
        client.get(page)
        row["runs_api"] = median_s(lambda: client.get("/api/runs").raise_for_status())
        row["counts_api"] = median_s(lambda: client.get(f"/api/runs/{run_id}/counts").raise_for_status())
        row["page"] = median_s(lambda: client.get(page).raise_for_status())
        row["page_pending"] = median_s(lambda: client.get(page + "&status=pending").raise_for_status())
    return row


def measure_fetch(storage: Storage, run_id: str, dest: Path) -> float:
    """Files per second of a whole fetch (results, errors, run files)."""
    plan = plan_fetch(storage, run_id)
    started = time.perf_counter()
    summary = fetch_run(storage, plan, dest, jobs=8)
    elapsed = time.perf_counter() - started
    assert summary.ok and summary.downloaded == len(plan.objects)
    return len(plan.objects) / elapsed


def measure_redis(tmp: Path, prompts: int) -> dict[str, float]:
    """Submit time of `prompts` prompts, and SLOWLOG's longest command around a new submit, a cancel, a resume."""
    # Configured like deploy/compose.yaml (append-only, fsync every second), on a port of its own.
    port = free_port()
    (tmp / "redis").mkdir(parents=True)
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp / "redis"), "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client = redis.Redis.from_url(url)
        client.config_set("slowlog-max-len", 100000)
        prompts_file = tmp / "prompts.jsonl"
        with prompts_file.open("w") as out:
            for i in range(prompts):
                out.write(json.dumps({"prompt": f"Prompt number {i}: which words drive the answer here?"}) + "\n")
        small = tmp / "small.jsonl"
        small.write_text("".join(json.dumps({"prompt": f"Small {i}"}) + "\n" for i in range(80)))

        def spec(run_id: str) -> RunSpec:
            results = str(tmp / "results")
            return RunSpec(run_id=run_id, model=MODEL, method="saliency", results_url=results, batch_size=8)

        started = time.perf_counter()
        report = submit_run(spec("big"), prompts_file, broker_url=url)
        row = {"submit_s": time.perf_counter() - started, "batches": float(report.enqueued_batches)}

        def longest_ms(action: Callable[[], Any]) -> float:
            client.config_set("slowlog-log-slower-than", 0)
            client.slowlog_reset()
            action()
            entries = client.slowlog_get(100000)
            client.config_set("slowlog-log-slower-than", 10000)
            return max((e["duration"] for e in entries), default=0) / 1000.0

        row["new_submit_ms"] = longest_ms(lambda: submit_run(spec("small"), small, broker_url=url))
        row["cancel_ms"] = longest_ms(lambda: cancel_run("big", broker_url=url, results_url=str(tmp / "results")))
        row["resume_ms"] = longest_ms(lambda: submit_run(spec("big"), prompts_file, broker_url=url))
        return row
    finally:
        server.terminate()
        server.wait(timeout=30)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def markdown(local: dict[int, dict[str, float]], s3: dict[int, dict[str, float]], redis_row: dict[str, float],
             meta: dict[str, str]) -> str:  # fmt: skip
    labels = [
        ("runs", "`tokenlens runs` (in-process)"),
        ("status", "`tokenlens status` (in-process)"),
        ("runs_cli", "`tokenlens runs` (command, start-up included)"),
        ("status_cli", "`tokenlens status` (command, start-up included)"),
        ("runs_api", "runs page: `GET /api/runs`"),
        ("counts_api", "a run's counts: `GET /api/runs/{id}/counts`"),
        ("page_first", "first 100 rows, first visit (fresh server)"),
        ("page", "first 100 rows, again"),
        ("page_pending_first", "first 100 pending rows (status filter), first visit: lists the run"),
        ("page_pending", "first 100 pending rows (status filter), again"),
        ("fetch_fps", "`tokenlens fetch`, files/s (local to local)"),
    ]
    lines = [
        f"## Scale: progress, run pages, fetch and Redis at {min(local):,} vs {max(local):,} prompts "
        "(`bench/bench_scale.py`)",
        "",
        f"{meta['machine']}; {meta['date']}. Synthetic mid-flight runs (88% done, 2% failed, 10% pending) of real "
        "TokenLens files from the real codec; medians of several calls.",
        "",
        f"Command: `{meta['command']}`",
        "",
    ]
    for name, table in (("local disk", local), ("SeaweedFS (S3)", s3)):
        if not table:  # --s3-big 0
            continue
        lo, hi = sorted(table)
        lines += [
            f"**{name}**",
            "",
            f"| call | {lo:,} prompts | {hi:,} prompts | {hi:,} / {lo:,} |",
            "| --- | ---: | ---: | ---: |",
        ]
        for key, label in labels:
            if key not in table[lo]:
                continue
            a, b = table[lo][key], table[hi][key]
            if key == "fetch_fps":
                lines.append(f"| {label} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |")
            else:
                lines.append(f"| {label} | {fmt_ms(a)} | {fmt_ms(b)} | {b / a:.2f}x |")
        lines.append("")
    lines += [
        f"**Redis** (a server of its own; {redis_row['batches']:,.0f} batches of 8 queued):",
        "",
        "| what | measured |",
        "| --- | ---: |",
        f"| submit {meta['redis_prompts']} prompts (read, validate, run.json, enqueue) "
        f"| {redis_row['submit_s']:.2f} s |",
        f"| longest Redis command while submitting a new run | {redis_row['new_submit_ms']:.2f} ms |",
        f"| longest Redis command while cancelling the queued run | {redis_row['cancel_ms']:.2f} ms |",
        f"| longest Redis command while resuming it (a new session) | {redis_row['resume_ms']:.2f} ms |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--s3-big", type=int, default=20_000, help="0: skip SeaweedFS")
    parser.add_argument("--redis-prompts", type=int, default=100_000)
    parser.add_argument("--no-write", action="store_true", help="print the table; leave bench/results.md alone")
    parser.add_argument(
        "--workdir", type=Path, help="work in this new directory and leave it (deleting 200k files can take minutes)"
    )
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True)
        text = run(args, args.workdir)
        print(f"left {args.workdir}: delete it when done", file=sys.stderr)
    else:
        with tempfile.TemporaryDirectory(prefix="tokenlens-bench-scale-") as tmp_name:
            text = run(args, Path(tmp_name))
    print(text)
    if not args.no_write:
        replace_section(RESULTS_MD, "scale", text)
    return 0


def run(args: argparse.Namespace, tmp: Path) -> str:
    """Every measurement, in `tmp`; the markdown table."""

    local: dict[int, dict[str, float]] = {}
    s3: dict[int, dict[str, float]] = {}
    redis_row = measure_redis(tmp / "redis-bench", args.redis_prompts)
    print(json.dumps({"redis": redis_row}), flush=True)
    broker = "redis://127.0.0.1:1/0"  # unreachable: status says so and counts from storage alone
    for n in (args.small, args.big):
        storage = LocalStorage(tmp / f"local-{n}", fsync=False)
        started = time.perf_counter()
        make_run(storage, f"run-{n}", n)
        # The run was written without fsync: flush it now, or the kernel's writeback of 100k fresh files runs
        # during the fetch below and is billed to it (measured: 0.86x the 1k rate unsynced, 0.98x synced).
        os.sync()
        print(f"made a {n}-prompt local run in {time.perf_counter() - started:.0f} s", flush=True)
        local[n] = measure_reads(storage, f"run-{n}", broker, None)
        local[n]["fetch_fps"] = measure_fetch(storage, f"run-{n}", tmp / f"fetched-{n}")
        print(json.dumps({f"local {n}": local[n]}), flush=True)
    if args.s3_big:
        from tests.fixtures.seaweedfs import start_weed_server

        server = start_weed_server()
        try:
            env = {**os.environ, **server.env()}
            os.environ.update(server.env())
            for n in (args.small, args.s3_big):
                storage = open_storage(f"s3://{server.bucket}/scale-{n}")
                started = time.perf_counter()
                make_run(storage, f"run-{n}", n, workers=32)
                print(f"made a {n}-prompt S3 run in {time.perf_counter() - started:.0f} s", flush=True)
                s3[n] = measure_reads(storage, f"run-{n}", broker, env)
                print(json.dumps({f"s3 {n}": s3[n]}), flush=True)
        finally:
            server.cleanup()
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared; load average {os.getloadavg()[1]:.1f})",
        "date": time.strftime("%Y-%m-%d"),
        "redis_prompts": f"{args.redis_prompts:,}",
        "command": " ".join([".venv/bin/python bench/bench_scale.py", *sys.argv[1:]]),
    }
    return markdown(local, s3, redis_row, meta)


if __name__ == "__main__":
    sys.exit(main())
