"""Every file in deploy/ is read by at least one test: a new deploy file needs a test before it lands."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.deploy.deploy_files import DEPLOY, REPO

HERE = Path(__file__).parent

#: deploy file -> the test modules that exercise it (each must name the file, directly or by its constant).
EXERCISED_BY: dict[str, tuple[tuple[str, str], ...]] = {
    "Dockerfile": (("test_dockerfile.py", "DOCKERFILE"),),
    "Dockerfile.dockerignore": (("test_dockerfile.py", "Dockerfile.dockerignore"),),
    ".gitignore": (("test_compose.py", '".gitignore"'),),
    ".env.example": (("test_compose.py", "ENV_EXAMPLE"), ("test_systemd.py", "ENV_EXAMPLE")),
    "compose.yaml": (("test_compose.py", "compose_config"), ("test_worker_metrics.py", "compose_config")),
    "k8s/namespace.yaml": (("test_kubernetes.py", "k8s_objects"),),
    "k8s/config.yaml": (("test_kubernetes.py", "k8s_config_values"),),
    "k8s/redis.yaml": (("test_kubernetes.py", '"StatefulSet"'),),
    "k8s/ui.yaml": (("test_kubernetes.py", '"tokenlens-ui"'),),
    "k8s/worker-smollm2-135m-instruct.yaml": (
        ("test_kubernetes.py", "worker_deployments"),
        ("test_keda_queue.py", "worker_deployments"),
    ),
    "k8s/monitoring.yaml": (("test_kubernetes.py", '"PodMonitor"'),),
    "k8s/kustomization.yaml": (("test_kubernetes.py", '"kustomization.yaml"'),),
    "slurm/worker.sbatch": (("test_slurm.py", "SBATCH"),),
    "systemd/tokenlens-worker@.service": (("test_systemd.py", "SYSTEMD_UNIT"),),
    "prometheus/prometheus.yml": (("test_prometheus.py", "PROMETHEUS_CONFIG"),),
    "prometheus/alerts.yml": (("test_prometheus.py", "PROMETHEUS_ALERTS"),),
}


def _deploy_files() -> set[str]:
    """Files under deploy/ that git would track (a user's own deploy/.env is not one of ours)."""
    files = {path.relative_to(DEPLOY).as_posix() for path in DEPLOY.rglob("*") if path.is_file()}
    if not files:
        return files
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO,
        input="\n".join(f"deploy/{name}" for name in sorted(files)),
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return files - {name.removeprefix("deploy/") for name in ignored}


def test_every_deploy_file_has_a_test() -> None:
    files = _deploy_files()
    assert "compose.yaml" in files
    untested = files - set(EXERCISED_BY)
    assert not untested, f"deploy files no test reads: {sorted(untested)}; add a test and list it in EXERCISED_BY"
    vanished = set(EXERCISED_BY) - files
    assert not vanished, f"EXERCISED_BY lists files that are gone: {sorted(vanished)}"


def test_the_named_tests_really_read_their_files() -> None:
    for deploy_file, checks in EXERCISED_BY.items():
        for module, reference in checks:
            source = (HERE / module).read_text(encoding="utf-8")
            assert reference in source, f"{module} does not use {reference} (for deploy/{deploy_file})"
