"""Perplexity suites: windows become records, the first-n prefix equals the whole text's windows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.suites import SUITES, suite_settings
from harness.suites.perplexity import (
    WIKITEXT2_FILE,
    CorpusSettings,
    WikiText2Settings,
    WikiText2Suite,
    perplexity,
    score_windows,
)
from tests.suite_fakes import WordBackend


def test_wikitext2_records_follow_the_published_join() -> None:
    backend = WordBackend()
    settings = WikiText2Settings(seq_len=64, limit=5)
    run = WikiText2Suite().run(backend, settings)
    assert [r.item_id for r in run.records] == [f"w{i}" for i in range(5)]
    assert all(r.scores["tokens"] == 64 for r in run.records)
    assert run.data_sha256 == {WIKITEXT2_FILE: settings.data_sha256}
    assert run.settings["seq_len"] == 64 and run.settings["limit"] == 5
    assert run.metrics[0].name == "ppl" and not run.metrics[0].higher_is_better
    assert backend.calls == [("loglikelihood_rolling", 1)], "one batched call"
    # The text sent is a prefix of the published "\n\n".join(rows) (rows include the empty ones).
    rows = [json.loads(line)["text"] for line in Path(_data(WIKITEXT2_FILE)).read_text().splitlines()]
    assert "\n\n".join(rows).startswith(backend.rolling_texts[0])
    assert backend.rolling_texts[0].startswith("\n\n = Robert Boulter = \n")


def test_first_windows_of_a_prefix_equal_those_of_the_whole_text() -> None:
    text = " ".join(f"w{i % 97}x{'y' * (i % 5)}" for i in range(3000))
    whole = WordBackend().loglikelihood_rolling([_req(text, 50)])[0].windows
    for limit in (1, 3, 10, 59):
        windows, sent = score_windows(WordBackend(), text, 50, limit)
        assert list(windows) == list(whole[:limit])
        assert sent <= len(text)
    everything, _ = score_windows(WordBackend(), text, 50, None)
    assert list(everything) == list(whole)


def test_prefix_grows_when_tokens_are_short() -> None:
    text = " ".join("a" for _ in range(10_000))  # 2 chars per "token": the first guess is long enough
    windows, _ = score_windows(WordBackend(), text, 100, 20)
    assert len(windows) == 20 and all(w.tokens == 100 for w in windows)
    dense = " ".join("abcdefghijklmnopqrstuvwxyz" * 2 for _ in range(2000))  # 53 chars per token: must grow
    backend = WordBackend()
    windows, _ = score_windows(backend, dense, 10, 30)
    assert len(windows) == 30 and len(backend.rolling_texts) > 1


def test_perplexity_of_records() -> None:
    run = WikiText2Suite().run(WordBackend(), WikiText2Settings(seq_len=32, limit=3))
    expected = math.exp(
        sum(r.scores["nll"] for r in run.records) / sum(r.scores["tokens"] for r in run.records)
    )
    assert perplexity(run.records) == pytest.approx(expected)


def test_c4_shuffles_documents_with_the_seed() -> None:
    suite = SUITES.get("c4")()
    first = WordBackend()
    suite.run(first, suite_settings("c4", "ci", {"seq_len": 16, "limit": 2}))
    second = WordBackend()
    suite.run(second, suite_settings("c4", "ci", {"seq_len": 16, "limit": 2, "seed": 7}))
    assert first.rolling_texts[0] != second.rolling_texts[0]
    again = WordBackend()
    suite.run(again, suite_settings("c4", "ci", {"seq_len": 16, "limit": 2}))
    assert again.rolling_texts == first.rolling_texts


def test_settings_profiles_and_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ci = suite_settings("wikitext2", "ci")
    full = suite_settings("wikitext2", "full")
    assert isinstance(ci, CorpusSettings) and ci.seq_len == 512 and ci.limit == 8
    assert full.seq_len == 2048 and full.limit is None and full.seed == 42
    with pytest.raises(UserError, match="seq_len"):
        suite_settings("wikitext2", "ci", {"seq_len": 0})
    with pytest.raises(UserError, match="sha256"):
        WikiText2Suite().run(WordBackend(), WikiText2Settings(data_sha256="0" * 64))
    monkeypatch.setenv("MOEGATE_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match="missing"):
        WikiText2Suite().run(WordBackend(), WikiText2Settings())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    from harness.resources import file_sha256

    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        WikiText2Suite().run(
            WordBackend(), WikiText2Settings(data_file="bad.jsonl", data_sha256=file_sha256(bad))
        )
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"body": "x"}\n')
    with pytest.raises(UserError, match="row 1 has no string field 'text'"):
        WikiText2Suite().run(
            WordBackend(), WikiText2Settings(data_file="wrong.jsonl", data_sha256=file_sha256(wrong))
        )


def _req(text: str, window: int):
    from harness.backends.base import RollingRequest

    return RollingRequest(text=text, window=window)


def _data(name: str) -> Path:
    from harness.resources import data_dir

    return data_dir() / name


@pytest.fixture(scope="module")
def smollm2():
    from harness.backends import open_backend
    from harness.smollm2 import smollm2_gguf

    return open_backend(str(smollm2_gguf()))


@pytest.mark.slow
def test_real_model_prefix_windows_match_and_perplexity_is_sane(smollm2) -> None:
    """On SmolLM2's real BPE tokenizer, the first windows of a prefix are the whole text's windows."""
    rows = [json.loads(line)["text"] for line in Path(_data(WIKITEXT2_FILE)).read_text().splitlines()]
    text = "\n\n".join(rows)
    short, _ = score_windows(smollm2, text[:6000], 128, 3)
    longer, _ = score_windows(smollm2, text[:12000], 128, 3)
    assert [w.tokens for w in short] == [127, 127, 127]
    assert [w.logprob for w in short] == pytest.approx([w.logprob for w in longer], abs=1e-3)
    run = WikiText2Suite().run(smollm2, WikiText2Settings(seq_len=128, limit=3))
    assert [r.scores["nll"] for r in run.records] == pytest.approx([-w.logprob for w in short], abs=1e-3)
    assert 5 < perplexity(run.records) < 300
