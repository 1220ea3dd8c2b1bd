"""Hostile and malformed prompt files: each is refused with one line naming the file and line, before a model loads,
and nothing is written (no run.json, no results directory). Nothing a prompt file says becomes a path or an option."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenlens import prompt_sets
from tokenlens.cli import main
from tokenlens.errors import PromptSetError
from tokenlens.prompt_sets import read_prompt_set


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        # CSV, read strictly: a quote never closed used to merge every following row into one prompt.
        ("quote.csv", 'id,prompt\na,"never closed\nb,two\nc,three\n', "quote.csv:2: a quoted field is never closed"),
        ("stray.csv", 'id,prompt\na,ok\nb,"x"y\n', "stray.csv:3: malformed CSV"),
        ("wide.csv", "id,prompt\na,one\nb,two,three\n", "wide.csv:3: 3 fields, but the header has 2"),
        ("narrow.csv", "id,prompt,target\na,one,yes\nb,two\n", "narrow.csv:3: 2 fields, but the header has 3"),
        ("columns.csv", "id,prompt,temperature\na,one,2\n", "columns.csv:1: unknown column(s) temperature"),
        ("twice.csv", "prompt,prompt\na,b\n", "twice.csv:1: column(s) prompt appear more than once"),
        ("header.csv", "id,prompt\n", "header.csv: no prompts found"),
        ("path.csv", "id,prompt\n../../etc/passwd,x\n", "path.csv:2: id '../../etc/passwd' is not a safe file name"),
        ("dup.csv", "id,prompt\na,x\n\na,y\n", "dup.csv:4: duplicate id 'a' (first used on line 2)"),
        ("tokens.csv", "prompt,max_new_tokens\nx,lots\n", "tokens.csv:2: max_new_tokens must be an integer"),
        # JSONL
        ("huge.jsonl", '{"prompt": "x", "max_new_tokens": 1000000000}\n', "huge.jsonl:1: max_new_tokens"),
        ("long.jsonl", '{"prompt": "' + "x" * 1_000_001 + '"}\n', "long.jsonl:1: prompt"),
        ("object.jsonl", '{"prompt": {"$eval": "os.system(1)"}}\n', "object.jsonl:1: missing or empty 'prompt'"),
        ("options.jsonl", '{"prompt": "x", "trust_remote_code": true}\n', "options.jsonl:1: unknown field(s)"),
        ("boolid.jsonl", '{"id": true, "prompt": "x"}\n', "boolid.jsonl:1: id True is not a safe file name"),
        ("nul.jsonl", '{"id": "a\\u0000b", "prompt": "x"}\n', "nul.jsonl:1: id 'a\\x00b' is not a safe file name"),
        ("latin1.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "latin1.jsonl:2: bytes that are not UTF-8"),
        # Plain text
        ("blank.txt", "\n   \n\n", "blank.txt: no prompts found"),
    ],
)
@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "line-by-line"])
def test_hostile_prompt_files_name_file_and_line(
    tmp_path: Path, name: str, content: str | bytes, expected: str, one_pass: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompt_sets, "ONE_PASS_JSONL", one_pass)
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptSetError) as caught:
        read_prompt_set(path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/{expected}"), message
    assert "\n" not in message


def test_a_quoted_field_may_span_lines_and_keep_its_commas(tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"
    path.write_text('id,prompt\na,"Hello, world\nsecond line"\nb,"She said ""hi"""\n', encoding="utf-8")
    records = read_prompt_set(path)
    assert [(r.id, r.prompt) for r in records] == [("a", "Hello, world\nsecond line"), ("b", 'She said "hi"')]


def test_a_bad_prompt_file_writes_nothing_and_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.csv"
    path.write_text('id,prompt\na,"never closed\nb,two\n', encoding="utf-8")
    with pytest.raises(SystemExit) as caught:
        main(["run", str(path), "--results", str(tmp_path / "results"), "--model", "org/never-loaded"])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        f'error: {path}:2: a quoted field is never closed; quote fields with " and double a " inside one'
    ]
    assert not (tmp_path / "results").exists()
