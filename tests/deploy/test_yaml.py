"""Every YAML file in deploy/ parses, document by document, and none is empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.deploy_files import DEPLOY, load_yaml_documents, yaml_files


def test_deploy_has_yaml_files() -> None:
    names = {path.relative_to(DEPLOY).as_posix() for path in yaml_files()}
    assert {"compose.yaml", "k8s/kustomization.yaml", "prometheus/prometheus.yml"} <= names


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path: Path) -> None:
    documents = load_yaml_documents(path)
    assert documents, f"{path} holds no YAML document"
    for document in documents:
        assert isinstance(document, dict), f"{path}: a document is a {type(document).__name__}, not a mapping"
