"""deploy/slurm/worker.sbatch: it passes bash -n and shellcheck, and, run for real with a stand-in `tokenlens`,
starts one worker per GPU of the job (each line accepted by the real CLI), restarts a crashed one, forwards
SIGTERM and waits for every worker before it exits."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_files import SBATCH, option_value, parse_cli
from worker.lease import SHUTDOWN_GRACE_S

#: A stand-in for `tokenlens`: records how it was started, and on SIGTERM takes a moment before exiting 0,
#: like a worker finishing its sub-batch. STUB_CRASH_GPU makes the first start on that GPU exit 3.
STUB = """\
#!{python}
import json, os, signal, sys, time
events = os.path.join(os.environ["STUB_DIR"], "events.jsonl")
def record(event, **extra):
    with open(events, "a") as handle:
        handle.write(json.dumps(dict(event=event, pid=os.getpid(), **extra)) + "\\n")
def stop(*_):
    record("term")
    time.sleep(float(os.environ.get("STUB_STOP_DELAY_S", "1")))
    record("exit")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
argv = sys.argv[1:]
gpu = argv[argv.index("--gpu") + 1] if "--gpu" in argv else None
record("start", argv=argv, gpu=gpu, cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
       results=os.environ.get("TOKENLENS_RESULTS"), hf_token=os.environ.get("HF_TOKEN"))
marker = os.path.join(os.environ["STUB_DIR"], f"crashed-{{gpu}}")
if gpu is not None and gpu == os.environ.get("STUB_CRASH_GPU") and not os.path.exists(marker):
    open(marker, "w").close()
    record("crash")
    sys.exit(3)
while True:
    time.sleep(0.05)
"""


@dataclass
class SbatchRun:
    process: subprocess.Popen[str]
    directory: Path

    def events(self) -> list[dict[str, Any]]:
        path = self.directory / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def wait_for(self, event: str, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e["event"] == event]
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        stderr = self.process.stderr.read() if self.process.poll() is not None and self.process.stderr else ""
        raise AssertionError(f"waited for {count} {event!r} events, have {self.events()}; script stderr: {stderr}")


def _environment(directory: Path, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory),
        "STUB_DIR": str(directory),
        "TOKENLENS_BIN": str(directory / "tokenlens"),
        "TOKENLENS_ENV_FILE": str(directory / "absent.env"),
        "TOKENLENS_LOG_DIR": str(directory),
        "TOKENLENS_MODEL": "smollm2-135m-instruct",
        "TOKENLENS_BROKER_URL": "redis://queue.internal:6379/0",
        "TOKENLENS_RESULTS": "s3://bucket/tokenlens",
        "TOKENLENS_RESTART_DELAY_S": "0",
        "SLURM_JOB_ID": "4242",
        "SLURM_ARRAY_JOB_ID": "4240",
        "SLURM_ARRAY_TASK_ID": "2",
    }
    env.update(overrides)
    return env


@pytest.fixture
def run_sbatch(tmp_path: Path) -> Iterator[Any]:
    stub = tmp_path / "tokenlens"
    stub.write_text(STUB.format(python=sys.executable), encoding="utf-8")
    stub.chmod(0o755)
    runs: list[SbatchRun] = []

    def start(**overrides: str) -> SbatchRun:
        process = subprocess.Popen(
            ["bash", str(SBATCH)],
            cwd=tmp_path,
            env=_environment(tmp_path, **overrides),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Its own process group: the script, its supervisor subshells and the stand-ins, to clean up at once.
            start_new_session=True,
        )
        run = SbatchRun(process, tmp_path)
        runs.append(run)
        return run

    yield start
    for run in runs:
        # A failed test can leave the script running, and its supervisors would restart killed stand-ins.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.process.pid, signal.SIGKILL)
        run.process.wait(timeout=10)


def _sbatch_options() -> dict[str, str]:
    options = {}
    for line in SBATCH.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#SBATCH\s+--([a-z-]+)(?:=(\S+))?", line)
        if match:
            options[match.group(1)] = match.group(2) or ""
    return options


def test_bash_parses_the_script() -> None:
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install -y shellcheck)"
)
def test_shellcheck_finds_nothing() -> None:
    result = subprocess.run(["shellcheck", str(SBATCH)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_slurm_warns_the_script_early_enough_for_a_clean_stop() -> None:
    options = _sbatch_options()
    match = re.fullmatch(r"B:TERM@(\d+)", options["signal"])
    assert match, "--signal=B:TERM@<seconds>: to the batch shell, which forwards it"
    assert int(match.group(1)) >= SHUTDOWN_GRACE_S
    assert "array" in options and "time" in options
    assert any(key in options for key in ("gpus-per-node", "gres", "gpus"))


def test_starts_one_worker_per_gpu_and_stops_them_cleanly(run_sbatch: Any, tmp_path: Path) -> None:
    sd_dir = tmp_path / "targets"
    sd_dir.mkdir()
    run = run_sbatch(CUDA_VISIBLE_DEVICES="0,1", SLURM_JOB_GPUS="4,5", TOKENLENS_PROMETHEUS_SD_DIR=str(sd_dir))
    starts = run.wait_for("start", 2)
    assert sorted(s["gpu"] for s in starts) == ["0", "1"], "one worker per GPU, each given exactly one"
    ports = sorted(int(option_value(s["argv"], "--metrics-port") or 0) for s in starts)
    assert ports == [9804, 9805], "ports follow the node-wide GPU numbers, so two jobs on a node don't clash"
    for start in starts:
        context = parse_cli(start["argv"])
        assert context.params["gpu"] == (int(start["gpu"]),)
        assert context.params["model"] == "smollm2-135m-instruct"
    (target_file,) = sd_dir.glob("*.json")
    (group,) = json.loads(target_file.read_text(encoding="utf-8"))
    assert sorted(int(target.rsplit(":", 1)[1]) for target in group["targets"]) == ports
    assert group["labels"]["slurm_job"] == "4240_2"

    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=30) == 0, run.process.stderr.read() if run.process.stderr else ""
    events = run.events()
    for start in starts:
        mine = [e["event"] for e in events if e["pid"] == start["pid"]]
        # The script exited only after each worker had finished stopping.
        assert mine == ["start", "term", "exit"], mine
    assert not list(sd_dir.glob("*.json")), "the target file goes away with the job"


def test_restarts_a_crashed_worker(run_sbatch: Any) -> None:
    run = run_sbatch(CUDA_VISIBLE_DEVICES="0,1", STUB_CRASH_GPU="1")
    starts = run.wait_for("start", 3)
    assert sorted(s["gpu"] for s in starts) == ["0", "1", "1"]
    assert [e["event"] for e in run.events()].count("crash") == 1
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=30) == 0
    assert len([e for e in run.events() if e["event"] == "exit"]) == 2


def test_gpu_count_alone_gives_gpus_zero_to_n(run_sbatch: Any) -> None:
    run = run_sbatch(SLURM_GPUS_ON_NODE="3")
    starts = run.wait_for("start", 3)
    assert sorted(s["gpu"] for s in starts) == ["0", "1", "2"]
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=30) == 0


def test_gpu_uuids_are_handed_to_cuda_as_they_are(run_sbatch: Any) -> None:
    uuid = "MIG-4b4bf1c3-7a1e-5c5d-9a3e-0e0f7a2b9c11"
    run = run_sbatch(CUDA_VISIBLE_DEVICES=uuid)
    (start,) = run.wait_for("start", 1)
    assert start["gpu"] is None and start["cuda_visible_devices"] == uuid
    assert parse_cli(start["argv"]).params["gpu"] is None
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=30) == 0


def test_a_job_without_gpus_fails_with_a_clear_message(run_sbatch: Any) -> None:
    run = run_sbatch()
    _out, err = run.process.communicate(timeout=30)
    assert run.process.returncode != 0
    assert "was given no GPU" in err and "--gpus-per-node" in err
    assert run.events() == []


def test_a_missing_model_fails_with_a_clear_message(run_sbatch: Any, tmp_path: Path) -> None:
    run = run_sbatch(CUDA_VISIBLE_DEVICES="0", TOKENLENS_MODEL="")
    _out, err = run.process.communicate(timeout=30)
    assert run.process.returncode != 0 and "TOKENLENS_MODEL" in err
    assert run.events() == []


def test_settings_come_from_the_env_file_unless_already_set(run_sbatch: Any, tmp_path: Path) -> None:
    env_file = tmp_path / "worker.env"
    env_file.write_text(
        "TOKENLENS_MODEL=from-the-file\nTOKENLENS_RESULTS=s3://from-the-file/x\nHF_TOKEN=hf_from_the_file\n",
        encoding="utf-8",
    )
    overrides = {"CUDA_VISIBLE_DEVICES": "0", "TOKENLENS_ENV_FILE": str(env_file), "TOKENLENS_MODEL": "from-export"}
    run = run_sbatch(**overrides)
    (start,) = run.wait_for("start", 1)
    assert option_value(start["argv"], "--model") == "from-export", "sbatch --export beats the file"
    assert start["results"] == "s3://bucket/tokenlens"
    assert start["hf_token"] == "hf_from_the_file", "what the environment lacks comes from the file"
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=30) == 0
