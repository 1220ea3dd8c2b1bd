"""`tokenlens methods` tells whether ReAGent's tagger data is installed without importing NLTK (1.7 s), and
answers as NLTK itself would: checked in fresh interpreters, where NLTK is not loaded yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PROBE = """
import json, sys
from tokenlens.engine import registry
roots = registry.nltk_data_roots()
ours = registry._nltk_has_tagger_data()
imported = "nltk" in sys.modules
import nltk.data
try:
    nltk.data.find(registry.NLTK_TAGGER_RESOURCE)
    theirs = True
except LookupError:
    theirs = False
print(json.dumps({"roots": roots, "nltk_path": nltk.data.path, "ours": ours, "theirs": theirs, "imported": imported}))
"""


def probe(nltk_data: Path, home: Path) -> dict[str, object]:
    env = {**os.environ, "NLTK_DATA": str(nltk_data), "HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def tagger_folder(root: Path) -> Path:
    folder = root / "taggers" / "averaged_perceptron_tagger_eng"
    folder.mkdir(parents=True)
    (folder / "averaged_perceptron_tagger_eng.weights.json").write_text("{}")
    return folder


def tagger_zip(root: Path, inner: str) -> None:
    (root / "taggers").mkdir(parents=True)
    with zipfile.ZipFile(root / "taggers" / "averaged_perceptron_tagger_eng.zip", "w") as archive:
        archive.writestr(f"{inner}/weights.json", "{}")


@pytest.mark.parametrize("layout", ["missing", "folder", "zip", "zip of something else", "in home"])
def test_the_check_without_nltk_agrees_with_nltk(tmp_path: Path, layout: str) -> None:
    data, home = tmp_path / "data", tmp_path / "home"
    data.mkdir()
    home.mkdir()
    if layout == "folder":
        tagger_folder(data)
    elif layout == "zip":
        tagger_zip(data, "averaged_perceptron_tagger_eng")
    elif layout == "zip of something else":
        tagger_zip(data, "other_tagger")
    elif layout == "in home":
        tagger_folder(home / "nltk_data")
    answer = probe(data, home)
    assert answer["imported"] is False, "the check imported NLTK"
    assert answer["roots"] == answer["nltk_path"], "the roots are NLTK's search path"
    assert answer["ours"] == answer["theirs"] == (layout in ("folder", "zip", "in home"))
