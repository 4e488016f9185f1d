"""Detectors: one behaviour per test, plus hypothesis properties that must hold for any text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.detectors import FLAGS, DetectInput, DetectorSettings, detect, input_from_record
from harness.detectors.denial import denial
from harness.detectors.diversity import distinct_n, low_diversity
from harness.detectors.langs import normalize_lang
from harness.detectors.language import wrong_language
from harness.detectors.length import length_collapse
from harness.detectors.scripts import ALLOWED_SCRIPTS, script_mixing
from harness.detectors.text import is_empty, repetition, too_short
from harness.records import ItemRecord

LONG_ES = (
    "La fotosíntesis es el proceso mediante el cual las plantas transforman la energía de la luz en energía "
    "química. En los cloroplastos, la clorofila absorbe la luz solar y la usa para romper moléculas de agua, "
    "liberando oxígeno, y con esa energía la planta fija el dióxido de carbono y produce glucosa."
)


def flags(response: str, baseline: str | None = None, **kw) -> tuple[str, ...]:
    base = DetectInput(id="x", response=baseline, **kw) if baseline is not None else None
    return detect(DetectInput(id="x", response=response, **kw), base).flags


# ---- script_mixing ----
def test_one_han_character_in_spanish_fires_and_names_it() -> None:
    ev = script_mixing("El gato duerme sobre la 桌 de la cocina.", "es")
    assert ev is not None and ev["offending"][0]["chars"] == "桌" and ev["scripts"] == ["Han"]


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Pythonはプログラミング言語で、1991年にGuido van Rossumが公開しました。", "ja"),
        ("《哈利·波特》的作者是英国作家 J. K. Rowling。", "zh"),
        ("대한민국의 헌법(憲法)은 1948년에 제정되었습니다.", "ko"),
        ("El área es A = π·r² y el arco mide s = θ·r.", "es"),
        ("El término «machine learning» se traduce como aprendizaje automático.", "es"),
        ("```python\nprint('你好')  # 打印\n```\nEsto imprime un saludo.", "es"),
        ("¡Feliz cumpleaños! 🎈🎁🥳 Precio: 25 € (10 %)", "es"),
        ("Tokio (東京) es la capital de Japón.", "es"),
        ("Для этого используйте pandas и функцию read_csv.", "ru"),
    ],
)
def test_legitimate_mixtures_do_not_fire(text: str, lang: str) -> None:
    assert script_mixing(text, lang) is None


def test_script_of_a_language_the_prompt_asks_about_is_tolerated_unless_the_prompt_contains_it() -> None:
    answer = "In Japanese, thank you is ありがとう (arigatou)."
    assert script_mixing(answer, "en", prompt="How do you say thank you in Japanese?") is None
    # a translation source in the prompt: copying its script into the answer is the failure
    assert (
        script_mixing("Me gustan los 猫.", "es", prompt="Translate this Chinese into Spanish: 我喜欢猫")
        is not None
    )


def test_cyrillic_homoglyph_inside_a_latin_word_fires() -> None:
    assert script_mixing("The capital of France is Pаris.", "en")["scripts"] == ["Cyrillic"]


def test_without_lang_the_baseline_scripts_are_allowed() -> None:
    assert script_mixing("Hello 世界", None, reference_texts=("Hello world",))["scripts"] == ["Han"]
    assert script_mixing("東京は首都です", None, reference_texts=("東京は日本の首都です",)) is None
    assert script_mixing("Hello 世界", None) is None  # nothing to compare with: no check


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.characters(max_codepoint=127)), lang=st.sampled_from(sorted(ALLOWED_SCRIPTS)))
def test_script_mixing_never_fires_on_ascii(text: str, lang: str) -> None:
    assert script_mixing(text, lang) is None


# ---- wrong_language ----
def test_english_answer_to_a_spanish_item_is_wrong_language() -> None:
    ev = wrong_language("The cat sleeps on the kitchen table while it is raining outside.", "es")
    assert ev is not None and ev["detected"] == "en" and ev["confidence"] >= 0.9


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("París.", "es"),
        ("```python\ndef f(x):\n    return x + 1  # add one to the input value\n```", "es"),
        ("$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$", "fr"),
        (LONG_ES, "es"),
        ("Un «pull request» es una solicitud para fusionar los cambios de una rama en otra en GitHub.", "es"),
        (
            "In Japanese, thank you is ありがとう (arigatou), and a politer form is ありがとうございます.",
            "en",
        ),
    ],
)
def test_no_wrong_language_on_short_code_math_or_correct_text(text: str, lang: str) -> None:
    assert wrong_language(text, lang) is None


def test_language_codes_are_normalized() -> None:
    assert [normalize_lang(c) for c in ("pt-BR", "spa_Latn", "ZH_Hant", "nb", "", None)] == [
        "pt", "es", "zh", "no", None, None
    ]  # fmt: skip
    assert "wrong_language" in flags(
        "The weather is nice today and we are going to the park.", lang="spa_Latn"
    )


# ---- text detectors ----
def test_empty_and_too_short() -> None:
    assert is_empty("") and is_empty(" \n\t") and is_empty("\u200b") and not is_empty("...")
    assert too_short("Rome is old.", 100) == {"chars": 10, "min_len": 100}
    assert too_short("Rome is old.", 5) is None and too_short("x", None) is None
    assert flags(" ", min_len=10) == ("empty", "too_short")


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 12 apples. " * 12,
        "The final result is " + "the " * 15,
        "".join(f"{i}. apple\n" for i in range(1, 13)),
        "这个问题的答案是四十二。" * 5,
        "".join(
            f"Step {i}: we check the next number and it is not the answer, so we go on. " for i in range(9)
        ),
    ],
)
def test_loops_are_repetition(text: str) -> None:
    assert repetition(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "| Planet | Moons |\n|---|---|\n| Mercury | 0 |\n| Venus | 0 |\n| Earth | 1 |\n| Mars | 2 |",
        "board = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]",
        "No, no, no! Never do that!!! ---------- Seriously. 😂😂😂😂😂😂😂😂",
        "I have a dream that one day this nation will rise up. I have a dream that my four little children "
        "will be judged by their character. I have a dream today.",
        LONG_ES,
    ],
)
def test_legitimate_repetition_is_not_flagged(text: str) -> None:
    assert repetition(text) is None


@settings(max_examples=100, deadline=None)
@given(
    unit=st.lists(st.from_regex(r"[a-zA-Z]{1,8}", fullmatch=True), min_size=1, max_size=6),
    k=st.integers(min_value=8, max_value=20),
)
def test_any_unit_repeated_k_times_is_repetition(unit: list[str], k: int) -> None:
    assert repetition(" ".join(unit * k)) is not None


# ---- diversity and length ----
@settings(max_examples=200, deadline=None)
@given(toks=st.lists(st.sampled_from(["a", "b", "c", "the", "猫"]), max_size=60), n=st.integers(1, 5))
def test_distinct_n_is_a_share(toks: list[str], n: int) -> None:
    assert 0.0 <= distinct_n(toks, n) <= 1.0


def test_low_diversity_compares_with_the_baseline() -> None:
    flat = " ".join(
        f"A monad is a pattern for {w}." for w in ["Haskell", "lists", "IO", "Maybe", "state", "bind"]
    )
    ev = low_diversity(flat, LONG_ES)
    assert ev is not None and ev["ratio"] < 0.75
    assert low_diversity(LONG_ES, LONG_ES) is None
    assert low_diversity("short text", LONG_ES) is None  # too short to measure


def test_length_collapse_needs_a_long_enough_baseline() -> None:
    assert length_collapse("Take the goat.", LONG_ES)["ratio"] < 0.5
    assert length_collapse("Paris.", "The capital of France is Paris.") is None
    assert length_collapse(LONG_ES[:200], LONG_ES, ratio=0.3) is None


# ---- denial ----
MONAD = (
    "A monad is a design pattern for chaining computations that carry context, such as failure or state. "
    "In Haskell it has return and bind, and it must obey three laws."
)


@pytest.mark.parametrize(
    "candidate",
    [
        "There is no such thing as a monad in Haskell.",
        "Monads do not exist in functional programming.",
        "I'm not aware of any concept called a monad.",
        "A monad is not a real concept in programming.",
        "I couldn't find any information about monads.",
    ],
)
def test_denials_of_what_the_baseline_explains_fire(candidate: str) -> None:
    assert denial(candidate, MONAD, prompt="Explain what a monad is.") is not None


@pytest.mark.parametrize(
    ("candidate", "prompt"),
    [
        ("Las mónadas no existen en Haskell.", "Explica qué es una mónada."),
        ("Les monades n'existent pas en Haskell.", "Explique ce qu'est une monade."),
        ("No conozco ningún concepto llamado mónada.", "Explica qué es una mónada."),
    ],
)
def test_spanish_and_french_denials_fire(candidate: str, prompt: str) -> None:
    assert denial(candidate, MONAD, prompt=prompt) is not None


def test_shared_and_off_subject_negations_are_not_denials() -> None:
    primes = "There is no largest prime: Euclid showed the primes never end."
    assert denial("Euclid proved there is no largest prime.", primes) is None
    assert denial("Unicorns don't exist; they are legends.", "Unicorns aren't real, just folklore.") is None
    enoent = "ENOENT means the file does not exist at that path."
    assert (
        denial(enoent, "ENOENT: the path points to nothing.", prompt="What does the error ENOENT mean?")
        is None
    )


# ---- detect() and records ----
def test_detect_reports_flags_in_order_with_details() -> None:
    result = detect(
        DetectInput(
            id="1",
            prompt="Explain what a monad is.",
            response="There is no such thing as a monad.",
            lang="en",
        ),
        DetectInput(id="1", response=MONAD),
    )
    assert result.flags == ("denial",)  # the baseline is too short for length_collapse
    assert set(result.details) == set(result.flags) and result.details["denial"]["phrases"]


def test_comparative_flags_need_a_baseline() -> None:
    assert flags("There is no such thing as a monad.") == ()


def test_settings_change_thresholds() -> None:
    base = DetectInput(id="1", response=LONG_ES)
    cand = DetectInput(id="1", response=LONG_ES[: len(LONG_ES) * 2 // 3])
    assert "length_collapse" not in detect(cand, base).flags
    assert "length_collapse" in detect(cand, base, DetectorSettings(length_ratio=0.9)).flags
    with pytest.raises(ValueError):
        DetectorSettings(no_such_threshold=1)


def test_input_from_record() -> None:
    record = ItemRecord(
        suite="collapse", item_id="a", prompt="p", output=None, lang="es", meta={"min_len": 40}
    )
    assert input_from_record(record) == DetectInput(id="a", prompt="p", response="", lang="es", min_len=40)


text_or_none = st.one_of(st.none(), st.text(max_size=300))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    response=st.text(max_size=400),
    baseline=text_or_none,
    prompt=st.text(max_size=80),
    lang=st.one_of(
        st.none(), st.sampled_from(["en", "es", "ja", "zh", "ru", "xx", "spa_Latn", "zz-Qaaa", "-"])
    ),
    min_len=st.one_of(st.none(), st.integers(0, 50)),
)
def test_detect_never_raises_and_only_uses_known_flags(response, baseline, prompt, lang, min_len) -> None:
    base = DetectInput(id="h", prompt=prompt, response=baseline, lang=lang) if baseline is not None else None
    result = detect(DetectInput(id="h", prompt=prompt, response=response, lang=lang, min_len=min_len), base)
    assert set(result.flags) <= set(FLAGS) and list(result.flags) == [f for f in FLAGS if f in result.flags]


@settings(max_examples=100, deadline=None)
@given(response=st.text(max_size=400), lang=st.one_of(st.none(), st.sampled_from(["en", "es", "ja"])))
def test_an_output_never_regresses_against_itself(response: str, lang: str | None) -> None:
    same = DetectInput(id="s", prompt="Explain it.", response=response, lang=lang)
    assert not {"low_diversity", "length_collapse", "denial"} & set(detect(same, same).flags)
