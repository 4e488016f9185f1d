"""``moegate detect``: JSON and table output, exit codes, and one-line errors naming the bad line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


LONG = (
    "Let's reason step by step. The farmer takes the goat across first and returns alone. He takes the wolf "
    "across and brings the goat back. He leaves the goat, carries the cabbage across to the wolf, returns "
    "alone, and finally takes the goat across again. Nothing is ever eaten, and it takes seven trips."
)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    cand = write_jsonl(tmp_path / "cand.jsonl", [
        {"id": "es-1", "prompt": "Traduce: the cat", "response": "El 猫 duerme sobre la mesa.", "lang": "es"},
        {"id": "river", "prompt": "Solve the puzzle.", "response": "Goat, wolf, cabbage.", "lang": "en"},
        {"id": "ok", "response": "Fine.", "min_len": 2},
        {"id": 7, "response": ""},
    ])  # fmt: skip
    base = write_jsonl(tmp_path / "base.jsonl", [
        {"id": "es-1", "response": "El gato duerme sobre la mesa."},
        {"id": "river", "response": LONG},
    ])  # fmt: skip
    return cand, base


def test_json_output_pairs_by_id(files, capsys) -> None:
    cand, base = files
    code, out, _ = run(["detect", "--candidate", str(cand), "--baseline", str(base), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    by_id = {item["id"]: item for item in doc["items"]}
    assert by_id["es-1"]["flags"] == ["script_mixing"]
    assert by_id["es-1"]["details"]["script_mixing"]["offending"][0]["chars"] == "猫"
    assert by_id["river"]["flags"] == ["length_collapse"]
    assert by_id["ok"]["flags"] == [] and by_id["7"]["flags"] == ["empty"]
    assert doc["summary"]["script_mixing"] == 1 and doc["summary"]["denial"] == 0
    assert set(doc["summary"]) == {
        "empty", "too_short", "repetition", "script_mixing", "wrong_language", "low_diversity",
        "length_collapse", "denial",
    }  # fmt: skip


def test_lines_may_carry_model_tokens_and_the_finish_reason(tmp_path: Path, capsys) -> None:
    cut = {"id": "river", "response": "Goat, wolf, cabbage.", "tokens": 160, "finish_reason": "length"}
    cand = write_jsonl(tmp_path / "c.jsonl", [cut])
    base = write_jsonl(tmp_path / "b.jsonl", [{"id": "river", "response": LONG, "tokens": 160, "finish_reason": "length"}])
    code, out, _ = run(["detect", "--candidate", str(cand), "--baseline", str(base), "--json"], capsys)
    assert code == 0 and json.loads(out)["items"][0]["flags"] == []  # cut at the limit: not a length collapse


def test_table_output_and_exit_0_when_flagged(files, capsys) -> None:
    cand, _ = files
    code, out, _ = run(["detect", "--candidate", str(cand)], capsys)
    assert code == 0
    assert "es-1" in out and "script_mixing" in out and "2/4 items flagged" in out


def test_unpaired_baseline_ids_are_not_errors(tmp_path: Path, capsys) -> None:
    cand = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "response": "Hello there."}])
    base = write_jsonl(tmp_path / "b.jsonl", [{"id": "zzz", "response": "Other."}])
    code, out, _ = run(["detect", "--candidate", str(cand), "--baseline", str(base), "--json"], capsys)
    assert code == 0 and json.loads(out)["items"][0]["flags"] == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"id": "a", "response": "x"}\n{"id": "b", "response": \n', "c.jsonl:2: not valid JSON"),
        (b'{"id": "a"}\n', "c.jsonl:1: missing field 'response'"),
        (b'{"response": "x"}\n', "c.jsonl:1: missing field 'id'"),
        (b'{"id": "a", "response": "x"}\n\n{"id": "a", "response": "y"}\n', "c.jsonl:3: duplicate id 'a'"),
        (b'{"id": "a", "response": "caf\xe9"}\n', "c.jsonl:1: not UTF-8"),
        (b'["a", "b"]\n', "c.jsonl:1: expected a JSON object"),
        (b'{"id": "a", "response": "x", "min_len": "ten"}\n', "c.jsonl:1: min_len must be an integer"),
        (b'{"id": "a", "response": 5}\n', "c.jsonl:1: field 'response'"),
        (b'{"id": "a", "response": "x", "finish_reason": "eos"}\n', "c.jsonl:1: field 'finish_reason'"),
    ],
)
def test_unreadable_input_exits_2_naming_the_line(
    tmp_path: Path, capsys, content: bytes, message: str
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    code, out, err = run(["detect", "--candidate", str(path)], capsys)
    assert code == 2 and message in err and out == ""
    assert len(err.strip().splitlines()) == 1


def test_bad_baseline_file_is_named(tmp_path: Path, files, capsys) -> None:
    cand, _ = files
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n", encoding="utf-8")
    code, _, err = run(["detect", "--candidate", str(cand), "--baseline", str(bad)], capsys)
    assert code == 2 and "bad.jsonl:1" in err


def test_missing_file(tmp_path: Path, capsys) -> None:
    code, _, err = run(["detect", "--candidate", str(tmp_path / "nope.jsonl")], capsys)
    assert code == 2 and "nope.jsonl" in err
