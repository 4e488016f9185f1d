"""FLORES suite: one record per sentence and direction, chrF++ per item, expected output language."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.backends.base import GenerateRequest
from harness.errors import UserError
from harness.resources import data_file
from harness.suites import suite_settings
from harness.suites._common import read_jsonl
from harness.suites.translation import (
    ALL_DIRECTIONS,
    FLORES_FILE,
    FLORES_SHA256,
    LANGUAGES,
    FloresSettings,
    FloresSuite,
    clean_translation,
    corpus_chrf,
    sentence_chrf,
)
from tests.suite_fakes import WordBackend


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return read_jsonl(data_file(FLORES_FILE, FLORES_SHA256))


def _oracle(rows: list[dict]):
    """Answers with the reference translation, wrapped the way chat models wrap it."""
    by_text = {}
    for row in rows:
        for code, (column, _, _) in LANGUAGES.items():
            by_text[row[column].strip()] = (row, code)

    def answer(request: GenerateRequest) -> str:
        text = request.prompt.rsplit("\n\n", 1)[1]
        row, _ = by_text[text]
        target = next(c for c, (_, name, _) in LANGUAGES.items() if f"into {name}." in request.prompt)
        return f'Translation: "{row[LANGUAGES[target][0]]}"\nNote: this is extra.'

    return answer


def test_records_scores_and_languages(rows: list[dict]) -> None:
    settings = FloresSettings(limit=2, directions=["eng-spa", "eng-zho", "arb-eng"], max_tokens=32)
    backend = WordBackend(_oracle(rows))
    run = FloresSuite().run(backend, settings)
    assert backend.calls == [("generate", 6)], "one batched call"
    assert len(run.records) == 6
    ids = {r.item_id.split(":")[0] for r in run.records}
    assert len(ids) == 2, "the same sentences in every direction"
    by_dir = {r.group: r for r in run.records}
    assert (
        by_dir["eng-spa"].lang == "es" and by_dir["eng-zho"].lang == "zh" and by_dir["arb-eng"].lang == "en"
    )
    for record in run.records:
        assert record.item_id == f"{record.meta['sentence_id']}:{record.group}"
        assert record.scores["chrf"] == pytest.approx(100.0), record.output
        assert record.scores[f"chrf_{record.group}"] == record.scores["chrf"]
        assert record.output == record.reference
    request = backend.generate_requests[0]
    assert (
        request.chat and request.temperature == 0.0 and request.stop == ("\n",) and request.max_tokens == 32
    )
    assert [m.name for m in run.metrics] == ["chrf", "chrf_eng-spa", "chrf_eng-zho", "chrf_arb-eng"]
    assert corpus_chrf(run.records, "eng-zho") == pytest.approx(100.0)
    assert run.data_sha256 == {FLORES_FILE: FLORES_SHA256}


def test_wrong_language_scores_low(rows: list[dict]) -> None:
    run = FloresSuite().run(
        WordBackend(lambda r: "This is not a translation at all."), FloresSettings(limit=2)
    )
    assert len(run.records) == 2 * len(ALL_DIRECTIONS)
    assert all(r.scores["chrf"] < 35 for r in run.records)


def test_chrf_is_sacrebleu_chrf_plus_plus() -> None:
    from sacrebleu.metrics import CHRF

    hyp, ref = "El gato está sobre la mesa.", "El gato se sienta en la mesa."
    assert sentence_chrf(hyp, ref) == pytest.approx(CHRF(word_order=2).sentence_score(hyp, [ref]).score)
    assert sentence_chrf(ref, ref) == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("raw", "source", "expected"),
    [
        ("Translation: Hola mundo.", "Hello world.", "Hola mundo."),
        ("Spanish: Hola mundo.", "Hello world.", "Hola mundo."),
        ('"Hola mundo."', "Hello world.", "Hola mundo."),
        ("Here is the translation: «Hola»", "Hello", "Hola"),
        ("**Translation:** 你好世界", "Hello world", "你好世界"),
        ('"Hola," dijo.', '"Hello," he said.', '"Hola," dijo.'),
        ("  Hola mundo.  ", "Hello world.", "Hola mundo."),
    ],
)
def test_clean_translation(raw: str, source: str, expected: str) -> None:
    assert clean_translation(raw, source) == expected


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_clean_translation_only_shortens(raw: str) -> None:
    cleaned = clean_translation(raw, "source")
    assert len(cleaned) <= len(raw) and cleaned == cleaned.strip()


def test_profiles_and_bad_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ci = suite_settings("flores", "ci")
    full = suite_settings("flores", "full")
    assert ci.limit == 3 and "eng-zho" in ci.directions
    assert full.limit is None and tuple(full.directions) == ALL_DIRECTIONS
    with pytest.raises(UserError, match="directions"):
        suite_settings("flores", "ci", {"directions": ["eng-xxx"]})
    broken = tmp_path / "flores.jsonl"
    broken.write_text('{"id": 1, "eng_Latn": "x"}\n')
    from harness.resources import file_sha256

    monkeypatch.setenv("MOEGATE_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"flores.jsonl:1: missing field"):
        FloresSuite().run(
            WordBackend(), FloresSettings(data_file="flores.jsonl", data_sha256=file_sha256(broken))
        )


@pytest.mark.slow
def test_real_model_translation_records() -> None:
    from harness.backends import open_backend
    from harness.smollm2 import smollm2_gguf

    backend = open_backend(str(smollm2_gguf()))
    run = FloresSuite().run(
        backend, FloresSettings(limit=1, directions=["eng-spa", "spa-eng"], max_tokens=40)
    )
    assert [r.lang for r in run.records] == ["es", "en"]
    for record in run.records:
        assert 0.0 <= record.scores["chrf"] <= 100.0
        assert record.meta["finish_reason"] in ("stop", "length")
        assert record.output == clean_translation(
            record.meta["raw_output"], record.prompt.rsplit("\n\n", 1)[1]
        )
    assert run.records[1].scores["chrf"] > 10, run.records[1].output  # Spanish -> English is within its reach
