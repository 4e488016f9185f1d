"""Collapse suite: the prompt set is well formed, and its checks catch the three reported failures of a
pruned Qwen3.5-397B that a plain collapse test (length, keyword, repetition, non-empty) let through."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.resources import suites_dir
from harness.suites import suite_settings
from harness.suites.collapse import (
    CollapsePrompt,
    CollapseSettings,
    CollapseSuite,
    check_output,
    load_prompts,
    repeated_ngram_ratio,
    words,
)
from tests.suite_fakes import WordBackend

PROMPTS = {p.id: p for p in load_prompts(suites_dir() / "collapse_prompts.toml")}

# --- the three reported failures (reconstructed in the reported form) and answers a healthy model gives
SPANISH_WITH_HAN = "Hoy hace buen tiempo, así que vamos a la playa con nuestros amigos y comeremos pescado en un pequeño 餐厅."
SPANISH_GOOD = "Hoy hace buen tiempo, así que vamos a la playa con nuestros amigos y comeremos pescado en un pequeño restaurante."
MONAD_DENIAL = (
    "There is no such thing as a monad in functional programming. Monads do not exist as a concept in Haskell "
    "or in any other language; you may be thinking of modules, which organise code into reusable units. In "
    "Haskell you organise code with modules and type classes, and a function gives back its result with the "
    "return keyword, just as in other programming languages."
)
MONAD_GOOD = (
    "A monad is a design pattern from functional programming for sequencing computations that carry some "
    "context, such as possible failure, state, or input/output. A monad is a type constructor m with two "
    "operations: return (or pure), which wraps a plain value, and bind (>>=), which feeds the result of one "
    "computation into the next. They must satisfy three laws: left identity, right identity and associativity.\n\n"
    "Example in Haskell with Maybe:\n\n```haskell\nsafeDiv :: Int -> Int -> Maybe Int\nsafeDiv _ 0 = Nothing\n"
    "safeDiv x y = Just (x `div` y)\n\nresult = Just 100 >>= safeDiv 1000 >>= safeDiv 50\n```\n\n"
    "If any step returns Nothing, the whole chain is Nothing, without explicit checks."
)
RIVER_SHORT = (
    "The farmer takes the goat across first, then returns and takes the wolf, then brings the cabbage. "
    "All three are across safely."
)
RIVER_GOOD = (
    "Here is a safe sequence of crossings:\n\n"
    "1. The farmer takes the goat across first and leaves it on the far bank. The wolf and the cabbage are "
    "safe together.\n"
    "2. He goes back alone to the starting bank.\n"
    "3. He takes the wolf across. On the far bank he leaves the wolf, but he takes the goat back with him, "
    "because the wolf would eat the goat.\n"
    "4. Back on the starting bank, he leaves the goat and takes the cabbage across. The wolf and the cabbage "
    "can stay together safely.\n"
    "5. He returns alone to fetch the goat.\n"
    "6. He takes the goat across.\n\n"
    "Now the wolf, the goat and the cabbage are all on the far bank, and nothing was eaten. The key idea is "
    "that the goat must travel back once, since it is the only item that conflicts with both others."
)


def _plain_collapse_test(output: str) -> bool:
    """What the 15-prompt suite checked: non-empty, some length, a keyword, no loop."""
    return len(output) > 50 and repeated_ngram_ratio(output) < 0.5


def test_chinese_character_in_spanish_translation_is_caught() -> None:
    prompt = PROMPTS["translate-es-beach"]
    assert _plain_collapse_test(SPANISH_WITH_HAN)
    checks, evidence = check_output(prompt, SPANISH_WITH_HAN)
    assert checks["script"] is False
    assert "餐厅" in str(evidence["script"])
    assert not all(checks.values())
    good, _ = check_output(prompt, SPANISH_GOOD)
    assert all(good.values()), good


def test_the_gate_files_detector_thresholds_reach_the_checks() -> None:
    from harness.detectors import DetectorSettings

    prompt = PROMPTS["math-train-speed"]
    greek = "Speed is 180 km over 2.5 h, which is 72 km/h; the word λόγος here names that ratio of distance to time."
    assert check_output(prompt, greek)[0]["script"] is False  # a five-letter Greek run is Greek text by default
    assert check_output(prompt, greek, DetectorSettings(greek_max_run=10))[0]["script"] is True


def test_denying_that_monads_exist_is_caught() -> None:
    prompt = PROMPTS["knowledge-monad"]
    assert _plain_collapse_test(MONAD_DENIAL)
    checks, evidence = check_output(prompt, MONAD_DENIAL)
    assert checks["no_denial"] is False and checks["forbidden"] is False
    assert checks["min_len"] and checks["required_all"] and checks["required_any"], (
        "only the new checks catch it"
    )
    assert "no such" in " ".join(evidence["no_denial"]["phrases"])
    good, evidence = check_output(prompt, MONAD_GOOD)
    assert all(good.values()), evidence


def test_river_crossing_answered_in_a_fifth_of_the_length_is_caught() -> None:
    prompt = PROMPTS["reasoning-river-crossing"]
    assert len(RIVER_SHORT) * 4 < len(RIVER_GOOD), "the failure is about a fifth of the healthy answer"
    checks, evidence = check_output(prompt, RIVER_SHORT)
    assert checks["min_len"] is False and checks["min_words"] is False
    assert checks["required_all"], "it names wolf, goat, cabbage and 'return': keywords alone miss it"
    good, evidence = check_output(prompt, RIVER_GOOD)
    assert all(good.values()), evidence


@pytest.mark.parametrize(
    ("prompt_id", "output"),
    [
        ("translate-zh-tea", "我每天早上上班前喝一杯绿茶。"),
        ("translate-ru-train", "Поезд в Москву отправляется в семь часов вечера."),
        ("translate-ar-school", "يذهب الأطفال إلى المدرسة كل يوم بالحافلة."),
        ("translate-ja-cherry", "今年の春、公園の桜はとても美しいです。"),
        ("math-train-speed", "2 hours 30 minutes is 2.5 hours, so the speed is 180 / 2.5 = 72 km/h."),
        (
            "code-reverse-string",
            "```python\ndef reverse_words(s):\n    return ' '.join(s.split()[::-1])\n```\n"
            "Example: reverse_words('a b c') returns 'c b a'.",
        ),
    ],
)
def test_good_answers_pass(prompt_id: str, output: str) -> None:
    checks, evidence = check_output(PROMPTS[prompt_id], output)
    assert all(checks.values()), evidence


@pytest.mark.parametrize(
    ("prompt_id", "output", "failed"),
    [
        ("translate-zh-tea", "I drink green tea (绿茶) every morning before I go to work.", "language"),
        ("translate-ru-train", "Поезд в Москву отправляется в семь 時 вечера.", "script"),
        ("translate-ja-cherry", "Ce printemps, les cerisiers du parc sont magnifiques.", "required_any"),
        (
            "translate-es-library",
            "The library opens at nine in the morning and closes at eight, except Sundays.",
            "language",
        ),
        ("creative-haiku-autumn", "leaves fall down, leaves fall down, " * 12, "repetition"),
    ],
)
def test_broken_answers_fail(prompt_id: str, output: str, failed: str) -> None:
    checks, _ = check_output(PROMPTS[prompt_id], output)
    assert checks[failed] is False


def test_prompt_set_coverage() -> None:
    assert len(PROMPTS) >= 40
    categories = Counter(p.category for p in PROMPTS.values())
    assert set(categories) >= {
        "coding",
        "math",
        "reasoning",
        "knowledge",
        "creative",
        "instruction",
        "translation",
    }
    assert all(n >= 5 for n in categories.values()), categories
    langs = {p.lang for p in PROMPTS.values() if p.category == "translation"}
    assert langs >= {"es", "zh", "ru", "ar", "ja"}
    assert any(p.no_denial for p in PROMPTS.values() if p.category == "knowledge")


def test_suite_run_builds_records() -> None:
    canned = {
        PROMPTS[i].prompt: text
        for i, text in [
            ("translate-es-beach", SPANISH_WITH_HAN),
            ("knowledge-monad", MONAD_GOOD),
            ("reasoning-river-crossing", RIVER_GOOD),
        ]
    }
    backend = WordBackend(lambda request: canned.get(request.prompt, ""))
    settings = suite_settings("collapse", "ci")
    run = CollapseSuite().run(backend, settings)
    assert backend.calls == [("generate", len(settings.item_ids))]
    assert [r.item_id for r in run.records] == settings.item_ids
    by_id = {r.item_id: r for r in run.records}
    assert by_id["translate-es-beach"].scores["pass"] == 0.0 and by_id["translate-es-beach"].lang == "es"
    assert by_id["knowledge-monad"].scores["pass"] == 1.0
    assert by_id["reasoning-river-crossing"].scores["pass"] == 1.0
    assert (
        by_id["translate-zh-tea"].scores["pass"] == 0.0
        and "min_len" in by_id["translate-zh-tea"].meta["failed"]
    )
    assert by_id["knowledge-monad"].meta["min_len"] == PROMPTS["knowledge-monad"].min_chars
    request = backend.generate_requests[0]
    assert request.chat and request.temperature == 0.0 and request.max_tokens == settings.max_tokens
    assert run.metrics[0].name == "pass" and run.metrics[0].kind == "binary"
    assert list(run.data_sha256) == ["collapse_prompts.toml"]
    full = suite_settings("collapse", "full")
    assert isinstance(full, CollapseSettings) and full.item_ids is None and full.max_tokens == 200


def test_bad_prompt_files_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text(
        '[[prompt]]\nid = "a"\ncategory = "x"\nprompt = "hi"\n\n[[prompt]]\nid = "b"\ncategory = "x"\n'
        'prompt = "hi"\nmin_chars = -3\n'
    )
    with pytest.raises(UserError, match=r"p.toml:7: prompt #2 field 'min_chars'"):
        load_prompts(bad)
    bad.write_text(
        '[[prompt]]\nid = "a"\ncategory = "x"\nprompt = "hi"\n[[prompt]]\nid = "a"\ncategory = "y"\nprompt = "x"\n'
    )
    with pytest.raises(UserError, match="duplicate prompt id 'a'"):
        load_prompts(bad)
    bad.write_text("[[prompt]\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_prompts(bad)
    with pytest.raises(UserError, match="missing"):
        load_prompts(tmp_path / "nope.toml")
    with pytest.raises(UserError, match="unknown collapse prompt id"):
        CollapseSuite().run(WordBackend(), CollapseSettings(item_ids=["no-such-prompt"]))
    with pytest.raises(UserError, match=r"unknown field|Extra inputs"):
        suite_settings("collapse", "ci", {"idz": ["x"]})


def test_words_and_repetition_helpers() -> None:
    assert words("Hello, world! 3 apples.") == 4
    assert words("我喝茶") == 3
    assert repeated_ngram_ratio("short text") == 0.0
    assert repeated_ngram_ratio("the cat sat on the mat " * 10) > 0.5
    assert CollapsePrompt(id="x", category="c", prompt="p").lang == "en"


@pytest.mark.slow
def test_real_model_collapse_records() -> None:
    from harness.backends import open_backend
    from harness.smollm2 import smollm2_gguf

    backend = open_backend(str(smollm2_gguf()))
    settings = CollapseSettings(item_ids=["math-train-speed", "translate-es-beach"], max_tokens=48)
    run = CollapseSuite().run(backend, settings)
    assert [r.item_id for r in run.records] == settings.item_ids
    for record in run.records:
        assert record.output and set(record.checks) >= {"min_len", "script", "repetition"}
        assert record.scores["pass"] == float(all(record.checks.values()))
        assert set(record.meta["failed"]) == {k for k, ok in record.checks.items() if not ok}
