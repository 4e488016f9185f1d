"""Degenerate character runs (``!!!!``, ``? ? ?``) and lengths in model tokens."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.detectors import DetectInput, detect, input_from_record
from harness.detectors.length import length_collapse
from harness.detectors.runs import STRUCTURAL, degenerate_run
from harness.detectors.text import repetition, tokens
from harness.records import ItemRecord

PROSE = (
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make "
    "glucose and oxygen. It happens in the chloroplasts, where chlorophyll absorbs light."
)
SYMBOLS = "!?,;\"'`@$&…。、！？😂\ufffd"
"""Characters a broken model loops on, structural ones (``;``) included."""
NON_STRUCTURAL = [ch for ch in SYMBOLS if ch not in STRUCTURAL]


@settings(max_examples=150, deadline=None)
@given(
    ch=st.sampled_from(NON_STRUCTURAL),
    k=st.integers(12, 300),
    sep=st.sampled_from(["", " ", "\n", " \n "]),
    lead=st.sampled_from(["", "The answer is 42", PROSE]),
)
def test_a_symbol_repeated_twelve_times_or_more_is_a_loop(ch: str, k: int, sep: str, lead: str) -> None:
    text = lead + sep.join([ch] * k)
    found = repetition(text)
    assert found is not None and found["run"]["unit"] == ch and found["run"]["repeats"] == k


@settings(max_examples=100, deadline=None)
@given(ch=st.sampled_from(NON_STRUCTURAL), k=st.integers(2, 11))
def test_short_emphasis_is_not_a_loop(ch: str, k: int) -> None:
    assert degenerate_run(PROSE + ch * k + " " + PROSE) is None


@settings(max_examples=100, deadline=None)
@given(ch=st.sampled_from(sorted(STRUCTURAL)), k=st.integers(2, 99))
def test_rules_and_leaders_shorter_than_100_are_layout_beside_prose(ch: str, k: int) -> None:
    text = f"{PROSE}\n\n{ch * k}\n\n{PROSE}"
    assert degenerate_run(text) is None
    assert degenerate_run(PROSE + ch * (100 + k)) is not None


@settings(max_examples=100, deadline=None)
@given(inner=st.text(max_size=300), fence=st.sampled_from(["```", "~~~", "````"]))
def test_nothing_inside_a_closed_code_block_is_read(inner: str, fence: str) -> None:
    inner = inner.replace(fence[0] * 3, "")
    assert degenerate_run(f"{PROSE}\n{fence}python\n{inner}\n{fence}\n{PROSE}") is None


@settings(max_examples=100, deadline=None)
@given(digits=st.from_regex(r"[0-9][0-9.,]{20,200}", fullmatch=True))
def test_numbers_never_form_a_run(digits: str) -> None:
    assert degenerate_run(f"The value is {digits}.") is None


@pytest.mark.parametrize(
    "text",
    [
        "monad_def" + "_def" * 20,
        "That joke is " + "ha" * 20,
        "Here:\n" + "-" * 300,
        "The answer is 42" + "." * 64,
        "?!" * 12,
        "```\ndef reverse(s):\n    pass\n```\n\n" + "```\n\n```\n\n" * 24,  # the test bed's own loop
    ],
)
def test_short_patterns_and_long_or_dominant_structure_are_loops(text: str) -> None:
    assert degenerate_run(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "| a | b | c | d | e | f | g | h | i | j | k | l |\n|" + "---|" * 12 + "\n| 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 12 |",
        "Title\n=====\n\n" + PROSE + "\n\n---\n\n" + PROSE,
        "Intro " + "." * 40 + " 1\nMethods " + "." * 38 + " 4\n" + PROSE,
        "```\n+------+\n| !!!!!!!!!!!!!!!! |\n+------+\n```\nCopy the box.",
        "Use `print('!' * 40)` or `'?????????????????'` in Python.",
        "Wait... what?! Really?!",
        "(defun f (n) (if (< n 2) 1 (* n (f (- n 1)))))",
    ],
)
def test_layout_code_and_emphasis_are_not_loops(text: str) -> None:
    assert degenerate_run(text) is None


def test_underscores_separate_word_tokens() -> None:
    assert tokens("monad_def_def __init__") == ["monad", "def", "def", "init"]
    assert repetition("In Haskell a monad is monad" + "_def" * 10) is not None


# ---- lengths in model tokens ----
LONG = PROSE * 2


@settings(max_examples=150, deadline=None)
@given(cand=st.integers(0, 400), base=st.integers(0, 400), text=st.text(max_size=200))
def test_model_token_counts_decide_when_both_sides_have_them(cand: int, base: int, text: str) -> None:
    found = length_collapse(text, LONG, candidate_tokens=cand, baseline_tokens=base)
    assert (found is not None) == (base >= 40 and cand < 0.5 * base)
    if found:
        assert found["unit"] == "model tokens" and found["candidate_tokens"] == cand


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200), cand=st.one_of(st.none(), st.integers(0, 400)))
def test_an_output_cut_at_the_token_limit_is_never_a_length_collapse(text: str, cand: int | None) -> None:
    assert length_collapse(text, LONG, candidate_tokens=cand, baseline_tokens=160, candidate_at_limit=True) is None


def test_without_model_tokens_words_are_compared() -> None:
    found = length_collapse("Plants use light.", LONG)
    assert found is not None and found["unit"] == "words"
    assert length_collapse("Plants use light.", LONG, candidate_tokens=90, baseline_tokens=None)["unit"] == "words"


def test_the_int8_case_both_at_the_limit_and_one_long_word() -> None:
    """The issue's false FAIL: ``monad_def_def…`` against a long baseline, both cut at 160 tokens."""
    record = ItemRecord(
        suite="collapse", item_id="knowledge-monad", prompt="Explain what a monad is.", lang="en",
        output="A monad is monad_def" + "_def" * 150, meta={"tokens": 160, "finish_reason": "length"},
    )  # fmt: skip
    base = DetectInput(id="knowledge-monad", response=LONG, lang="en", tokens=160, finish_reason="length")
    cand = input_from_record(record)
    assert cand.tokens == 160 and cand.finish_reason == "length"
    assert "length_collapse" not in detect(cand, base).flags
    assert "repetition" in detect(cand, base).flags


def test_unknown_token_counts_are_not_carried_over() -> None:
    record = ItemRecord(suite="s", item_id="a", prompt="p", output="x", meta={"tokens": 0, "finish_reason": "eos"})
    assert input_from_record(record).tokens is None and input_from_record(record).finish_reason is None
