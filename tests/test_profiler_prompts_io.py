"""Prompt-file reader: both formats, and one clear UserError for each kind of bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import UserError
from harness.prompts_io import Prompt, read_prompts


def test_txt_one_prompt_per_line_skips_blanks(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("first prompt\n\n  \nsecond prompt\r\nthird\n", encoding="utf-8")
    assert read_prompts(f) == [Prompt("first prompt"), Prompt("second prompt"), Prompt("third")]


def test_jsonl_text_and_domain(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    rows = [{"text": "a b", "domain": "code"}, {"text": "c\u2028d", "url": "x"}, {"text": "e", "domain": None}]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    assert read_prompts(f) == [Prompt("a b", "code"), Prompt("c\u2028d", None), Prompt("e", None)]


def test_jsonl_gz(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl.gz"
    with gzip.open(f, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "hello", "domain": "web"}) + "\n")
    assert read_prompts(f) == [Prompt("hello", "web")]


def test_real_c4_sample_reads() -> None:
    from harness.resources import data_dir

    prompts = read_prompts(data_dir() / "c4_validation_sample_2k.jsonl.gz")
    assert len(prompts) == 2000 and all(p.text.strip() for p in prompts)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.txt", "", "holds no prompts"),
        ("blank.txt", "\n \n", "holds no prompts"),
        ("empty.jsonl", "\n", "holds no prompts"),
        ("bad.jsonl", '{"text": "ok"}\n{not json}\n', "bad.jsonl:2: not valid JSON"),
        ("list.jsonl", "[1, 2]\n", "list.jsonl:1: expected a JSON object"),
        ("notext.jsonl", '{"prompt": "x"}\n', "notext.jsonl:1: field 'text' is missing"),
        ("numtext.jsonl", '{"text": 3}\n', "numtext.jsonl:1: field 'text' is a int"),
        ("blanktext.jsonl", '{"text": "ok"}\n\n{"text": "  "}\n', "blanktext.jsonl:3: field 'text' is empty"),
        ("dom.jsonl", '{"text": "x", "domain": 5}\n', "dom.jsonl:1: field 'domain'"),
        ("p.csv", "a,b\n", "unsupported suffix"),
    ],
)
def test_bad_files_raise_one_line(tmp_path: Path, name: str, content: str, needle: str) -> None:
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_prompts(f)
    line = info.value.line()
    assert needle in line and "\n" not in line and info.value.fix


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")
    d = tmp_path / "dir.jsonl"
    d.mkdir()
    with pytest.raises(UserError, match="is not a file"):
        read_prompts(d)


def test_corrupt_gzip_and_non_utf8(tmp_path: Path) -> None:
    g = tmp_path / "p.jsonl.gz"
    g.write_bytes(b"definitely not gzip")
    with pytest.raises(UserError, match="cannot read prompt file"):
        read_prompts(g)
    t = tmp_path / "p.txt"
    t.write_bytes(b"caf\xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_prompts(t)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1).filter(lambda s: s.strip()), st.none() | st.text(min_size=1)),
                min_size=1, max_size=8))
def test_jsonl_roundtrip(tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str | None]]) -> None:
    f = tmp_path_factory.mktemp("rt") / "p.jsonl"
    f.write_text("".join(json.dumps({"text": t, "domain": d}, ensure_ascii=False) + "\n" for t, d in rows),
                 encoding="utf-8")
    assert read_prompts(f) == [Prompt(t, d or None) for t, d in rows]
