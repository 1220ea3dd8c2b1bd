"""Real `tokenlens worker` processes for integration tests, and helpers to submit runs and wait for them.

Every worker runs in its own process group, so a test can kill -9 the whole
tree, and teardown always kills whatever a test left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.seed_validators import SeedAnalysisResult, ui_accepts
from tokenlens.queue import RunKeys
from tokenlens.results import RunStore
from tokenlens.schema import AnalysisResult

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENLENS = str(Path(sys.executable).with_name("tokenlens"))
CELERY = str(Path(sys.executable).with_name("celery"))
#: Short leases so a lost batch comes back within seconds in tests.
TEST_LEASE_TIMEOUT_S = 15
BATCH_LINE = re.compile(r"batch ([\w-]+) run (\S+): done=(\S+) skipped=(\S+) failed=(\S+) retry=(\S+)")


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            # The repository root first, so `worker` and `producer` import from this checkout.
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # Two workers share two cores with everything else: one thread each.
            "OMP_NUM_THREADS": "1",
            "TOKENLENS_LEASE_TIMEOUT": str(TEST_LEASE_TIMEOUT_S),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    """One worker (or a shell loop restarting it), in its own process group, logging to a file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
        )

    @property
    def pgid(self) -> int:
        return self.process.pid  # start_new_session: the leader's pid is the group id

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 120.0, count: int = 1) -> None:
        """Wait until the worker consumes its queue (`count` times, for a restarting loop)."""
        deadline = time.monotonic() + timeout_s
        while self.log().count("worker ready: model") < count:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode} before it was ready:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker not ready after {timeout_s}s:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def kill_tree(self) -> None:
        """kill -9 the worker and every process it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout_s: float) -> int:
        """SIGTERM the worker (only the worker process, as an orchestrator would) and wait for it to exit."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill_tree()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)  # anything the leader left behind
        self._log.close()

    def batches(self) -> list[dict[str, list[str] | str]]:
        """Every batch this worker finished, as logged by worker/tasks.py."""
        rows = []
        for match in BATCH_LINE.finditer(self.log()):
            batch_id, run_id, *lists = match.groups()
            names = ("done", "skipped", "failed", "retry")
            row: dict[str, list[str] | str] = {"batch": batch_id, "run": run_id}
            for name, value in zip(names, lists, strict=True):
                row[name] = [] if value == "-" else value.split(",")
            rows.append(row)
        return rows

    def received(self, batch_id: str) -> bool:
        """Whether this worker took the batch (Celery logs each task it receives)."""
        return f":{batch_id}] received" in self.log()

    def done_ids(self) -> list[str]:
        return [pid for row in self.batches() for pid in row["done"]]


#: The `start_worker` fixture: start(model, broker_url, *, name, extra_args, env, restart_loop, via_celery, wait).
StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Start real `tokenlens worker` processes; all of them are killed (process groups) at teardown."""
    started: list[WorkerProcess] = []

    def start(
        model: str | Path,
        broker_url: str,
        *,
        name: str | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        restart_loop: bool = False,
        via_celery: bool = False,
        wait: bool = True,
    ) -> WorkerProcess:
        name = name or f"worker{len(started)}"
        # Workers write only to their results locations: by default the test's own `tmp_path / "results"`.
        own_env = {"TOKENLENS_RESULTS": str(tmp_path / "results"), **(env or {})}
        if via_celery:
            argv = [CELERY, "-A", "worker.app", "worker", "--loglevel=INFO"]
            environment = worker_env(TOKENLENS_MODEL=str(model), TOKENLENS_BROKER_URL=broker_url, **own_env)
        else:
            argv = [TOKENLENS, "worker", "--model", str(model), "--broker", broker_url, *extra_args]
            environment = worker_env(**own_env)
        if restart_loop:
            # What systemd's Restart=always or a Kubernetes restart does for a worker that died.
            quoted = " ".join(f"'{a}'" for a in argv)
            argv = ["bash", "-c", f"while true; do {quoted}; sleep 0.5; done"]
        worker = WorkerProcess(argv, tmp_path / f"{name}.log", environment)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def write_prompts(path: Path, count: int, *, prefix: str = "p", extra: list[dict[str, object]] | None = None) -> Path:
    rows: list[dict[str, object]] = [
        {"id": f"{prefix}{i:03d}", "prompt": f"Item {i}: the quick brown fox"} for i in range(count)
    ]
    rows += extra or []
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `tokenlens` command line."""
    return subprocess.run(
        [TOKENLENS, *args],
        capture_output=True,
        text=True,
        env=worker_env(**(env or {})),
        cwd=REPO_ROOT,
        timeout=timeout_s,
        check=False,
    )


def submit(
    prompts: Path,
    model: str | Path,
    results: Path,
    broker_url: str,
    run_id: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> str:
    """Submit with the CLI (`env` added to its environment); returns its output. Fails the test if submit fails."""
    proc = run_cli(
        "submit", str(prompts), "--model", str(model), "--results", str(results), "--broker", broker_url,
        "--run-id", run_id, *args, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, f"submit failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> float:
    """Wait for `condition`; returns the seconds it took. Fails the test with `what` on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


def finished_count(store: RunStore) -> int:
    return len(store.ids("results") | store.ids("errors"))


def assert_exactly_one_valid_result(store: RunStore, prompt_ids: list[str]) -> None:
    """Every prompt has one result file that parses as TokenLens JSON for this run and prompt, and no other file.

    Plain JSON results must also pass both of the seed project's validators, unchanged.
    """
    results_dir = Path(store.storage.url) / store.prefix / "results"
    # A worker killed mid-write may leave a hidden temp file; only the .json files are results.
    files = sorted(p.name for p in results_dir.iterdir() if not p.name.startswith("."))
    assert files == sorted(f"{pid}.json" for pid in prompt_ids), "result files are not exactly one per prompt"
    for pid in prompt_ids:
        raw = (results_dir / f"{pid}.json").read_bytes()
        result = AnalysisResult.from_json_bytes(raw)
        if raw[:1] == b"{":
            document = json.loads(raw)
            assert ui_accepts(document), f"the seed UI's validator refuses {pid}.json"
            SeedAnalysisResult.model_validate(document)
        assert result.metadata.run_id == store.run_id
        assert result.metadata.prompt_id == pid
        assert len(result.data.output_tokens) >= 1


def assert_queue_drained(broker_url: str, run_id: str, queue: str) -> None:
    """Nothing of the run is left waiting, running or unacknowledged in Redis."""
    client = redis.Redis.from_url(broker_url)
    keys = RunKeys(run_id)
    assert client.llen(queue) == 0
    assert client.hlen(keys.queued) == 0
    assert client.hlen(keys.in_flight) == 0
    assert client.hlen("unacked") == 0
