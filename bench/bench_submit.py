"""How long `tokenlens submit` takes for a large prompt set: read + validate + manifest + pipelined enqueue.

    .venv/bin/python bench/bench_submit.py                       # 100k prompts, Redis at 127.0.0.1:6379/14
    .venv/bin/python bench/bench_submit.py --prompts 20000 --batch-size 16 --broker redis://host:6379/3

It submits to a model queue no worker serves, times the whole `submit_run`
call and its parts, then removes everything it queued. The Redis database it
uses must be empty (it refuses otherwise), so it never touches real runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import redis

from producer.submit import submit_run
from tokenlens.prompt_sets import read_prompt_set
from tokenlens.queue import RunKeys, RunQueue, connect_broker, queue_name
from tokenlens.spec import RunSpec

BENCH_MODEL = "tokenlens-bench/no-such-model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=100_000, help="prompts to submit (default 100000)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per queued batch (default 8)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14", help="an EMPTY Redis database")
    args = parser.parse_args(argv)

    client = connect_broker(args.broker)
    if client.dbsize():
        print(f"refusing: {args.broker} is not empty; point --broker at an empty database", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tokenlens-bench-") as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        with prompts.open("w") as out:
            for i in range(args.prompts):
                out.write(json.dumps({"prompt": f"Prompt number {i}: which words drive the answer here?"}) + "\n")
        started = time.perf_counter()
        read_prompt_set(prompts)
        read_s = time.perf_counter() - started

        started = time.perf_counter()
        spec = RunSpec(
            run_id="bench-submit",
            model=BENCH_MODEL,
            method="saliency",
            results_url=str(Path(tmp) / "results"),
            batch_size=args.batch_size,
        )
        report = submit_run(spec, prompts, broker_url=args.broker)
        total_s = time.perf_counter() - started
        queued = client.llen(queue_name(BENCH_MODEL))
        queued_bytes = client.memory_usage(queue_name(BENCH_MODEL)) or 0
        try:
            assert queued == report.enqueued_batches, f"{queued} messages queued, expected {report.enqueued_batches}"
        finally:
            RunQueue(client, "bench-submit").remove_queued(queue_name(BENCH_MODEL))
            client.delete(*RunKeys("bench-submit").all())
            _delete_kombu_keys(client)
    print(
        f"submit: {report.enqueued_prompts} prompts in {report.enqueued_batches} batches of {args.batch_size} "
        f"in {total_s:.2f}s ({report.enqueued_prompts / total_s:,.0f} prompts/s; reading and validating the "
        f"prompt set alone takes {read_s:.2f}s); the queue held {queued_bytes / 1e6:.1f} MB"
    )
    return 0


def _delete_kombu_keys(client: redis.Redis) -> None:
    for key in client.scan_iter("_kombu.*"):
        client.delete(key)


if __name__ == "__main__":
    sys.exit(main())
