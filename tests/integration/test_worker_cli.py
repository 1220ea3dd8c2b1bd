"""`tokenlens worker` start-up rules: the GPU is pinned before torch loads, and bad flags are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.workers import REPO_ROOT, run_cli, worker_env

pytestmark = pytest.mark.integration


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=worker_env(), cwd=REPO_ROOT, timeout=120
    )


def test_the_worker_command_does_not_import_torch() -> None:
    proc = _python("import sys, tokenlens.cli, worker.cli, worker.runtime; print('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_gpu_pinning_happens_before_torch_and_limits_what_torch_sees() -> None:
    code = (
        "import os\n"
        "from worker.runtime import pin_gpu\n"
        "pin_gpu(7)\n"
        "import torch\n"
        "print(os.environ['CUDA_VISIBLE_DEVICES'], torch.cuda.device_count())\n"
        "try:\n"
        "    pin_gpu(1)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    visible, count, error = proc.stdout.split()
    assert visible == "7" and int(count) <= 1
    assert error == "TokenLensError"  # too late once torch is loaded


def test_several_gpus_are_pinned_together() -> None:
    proc = _python(
        "import os\nfrom worker.runtime import pin_gpu\npin_gpu((2, 3))\nprint(os.environ['CUDA_VISIBLE_DEVICES'])"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2,3"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--concurrency", "2"], "one batch at a time"),
        (["--gpu", "0", "--device", "cpu"], "--gpu pins a GPU"),
        (["--gpu", "-1"], "is not a GPU index"),
        (["--gpu", "0,x"], "is not a GPU index"),
        (["--gpu", "1,1"], "lists GPU 1 twice"),
        (["--gpu", "0,1", "--device", "cpu"], "--gpu pins a GPU"),
    ],
)
def test_bad_worker_flags_are_refused(flags: list[str], message: str) -> None:
    proc = run_cli("worker", "--model", "some-org/some-model", "--broker", "redis://127.0.0.1:1/0", *flags)
    assert proc.returncode == 2
    assert message in proc.stderr
