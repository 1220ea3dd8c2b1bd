"""Prompt set readers: the three formats, and every bad input named by file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenlens import prompt_sets
from tokenlens.errors import PromptSetError
from tokenlens.prompt_sets import read_prompt_set


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_jsonl_with_ids_targets_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.jsonl",
        '{"id": "a", "prompt": "Hello"}\n\n{"prompt": "World", "target": "Yes", "max_new_tokens": 5}\n',
    )
    records = read_prompt_set(path)
    assert [r.id for r in records] == ["a", "p0002"]
    assert records[1].target == "Yes" and records[1].max_new_tokens == 5


def test_one_pass_and_line_by_line_reading_give_the_same_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        '{"id": "a", "prompt": "Hello", "target": "Yes"}',
        "",
        '  {"prompt": "caf\u00e9 \\"quoted\\"", "max_new_tokens": 5}',
        '{"id": 7, "prompt": "seven", "contrast_target": "eight"}',
        "   ",
        '{"prompt": "last"}',
    ]
    path = write(tmp_path, "p.jsonl", "\n".join(lines))
    read = {}
    for one_pass in (True, False):
        monkeypatch.setattr(prompt_sets, "ONE_PASS_JSONL", one_pass)
        read[one_pass] = read_prompt_set(path)
    assert read[True] == read[False]
    assert [r.model_dump_json(exclude_none=True) for r in read[True]] == [
        r.model_dump_json(exclude_none=True) for r in read[False]
    ]
    assert [r.id for r in read[True]] == ["a", "p0002", "7", "p0004"]
    assert read[True][1].prompt == 'café "quoted"' and read[True][1].max_new_tokens == 5


def test_csv_and_txt(tmp_path: Path) -> None:
    csv_records = read_prompt_set(write(tmp_path, "p.csv", 'id,prompt\nx1,"Hi, there"\nx2,Bye\n'))
    assert [(r.id, r.prompt) for r in csv_records] == [("x1", "Hi, there"), ("x2", "Bye")]
    txt_records = read_prompt_set(write(tmp_path, "p.txt", "first prompt\n\nsecond prompt\n"))
    assert [r.prompt for r in txt_records] == ["first prompt", "second prompt"]
    assert len({r.id for r in txt_records}) == 2


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": oops}\n', "bad.jsonl:2: malformed JSON"),
        ("bad.jsonl", '{"prompt": "ok"}\n{"id": "z"}\n', "bad.jsonl:2: missing or empty 'prompt'"),
        ("bad.jsonl", '{"prompt": "   "}\n', "bad.jsonl:1: missing or empty 'prompt'"),
        ("bad.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "bad.jsonl:2: duplicate id 'a'"),
        ("bad.jsonl", '{"id": "../etc", "prompt": "x"}\n', "bad.jsonl:1: id '../etc' is not a safe file name"),
        ("bad.jsonl", '{"id": "a/b", "prompt": "x"}\n', "not a safe file name"),
        ("bad.jsonl", '{"prompt": "x", "temperature": 1}\n', "bad.jsonl:1: unknown field"),
        ("bad.jsonl", '["x"]\n', "bad.jsonl:1: each line must be a JSON object"),
        ("bad.jsonl", '{"prompt": "x", "max_new_tokens": 0}\n', "positive integer"),
        # One object split over two lines, made up for by a line of two: every line is bad JSON on its own, yet
        # the lines joined with commas parse as three objects.
        ("bad.jsonl", '{"id": "a"\n"prompt": "p"}\n{"prompt": "x"},{"prompt": "y"}\n', "bad.jsonl:1: malformed JSON"),
        ("bad.jsonl", '{"prompt": "p", "target": [0\n1]}\n', "bad.jsonl:1: malformed JSON"),
        ("bad.jsonl", "", "no prompts found"),
        ("bad.csv", "text\nhello\n", "bad.csv:1: the CSV header needs a 'prompt' column"),
        ("bad.xlsx", "whatever", "unknown prompt file type"),
    ],
)
@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "line-by-line"])
def test_bad_prompt_sets_name_file_and_line(
    tmp_path: Path, name: str, content: str, expected: str, one_pass: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompt_sets, "ONE_PASS_JSONL", one_pass)
    path = write(tmp_path, name, content)
    with pytest.raises(PromptSetError) as caught:
        read_prompt_set(path)
    assert expected in str(caught.value)
    assert str(caught.value).startswith(str(path))


def test_non_utf8_bytes_report_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.jsonl", b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(PromptSetError, match=r"latin.jsonl:2: bytes that are not UTF-8"):
        read_prompt_set(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PromptSetError, match="file not found"):
        read_prompt_set(tmp_path / "nope.jsonl")


def test_contrast_target_is_read_and_required_under_a_contrastive_function(tmp_path: Path) -> None:
    path = write(
        tmp_path, "c.jsonl", '{"id": "a", "prompt": "Hi", "contrast_target": " Lyon"}\n{"id": "b", "prompt": "Yo"}\n'
    )
    assert read_prompt_set(path)[0].contrast_target == " Lyon"
    with pytest.raises(PromptSetError, match=r"c.jsonl:2: prompt 'b' has no 'contrast_target'"):
        read_prompt_set(path, contrastive=True)
    csv_path = write(tmp_path, "c.csv", "id,prompt,contrast_target\nx,Hi, Lyon\n")
    assert read_prompt_set(csv_path, contrastive=True)[0].contrast_target == " Lyon"
    bad = write(tmp_path, "bad.jsonl", '{"id": "z", "prompt": "Hi", "contrast_target": 3}\n')
    with pytest.raises(PromptSetError, match=r"bad.jsonl:1: prompt 'z': 'contrast_target' must be a non-empty string"):
        read_prompt_set(bad)
