"""A two-choice quiz suite for sequential gate runs: enough items to stop early, selectable by id.

Item ``q007`` asks the backend's loglikelihood of two continuations after a fixed context; it is right
when the model prefers the one ``answers`` names. With the answers taken from a baseline model's own
preferences, that model scores 100% and any other model scores what it shares with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from harness.backends.base import Backend, LoglikelihoodRequest
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.suites import ChosenItems, SuiteSettings

ACC = MetricSpec(name="acc", kind="binary", higher_is_better=True, scale=100)
WORDS = ("river", "stone", "cloud", "apple", "green", "seven", "table", "music", "light", "north", "sugar", "glass",
         "horse", "paper", "water", "bread", "dance", "earth", "fruit", "heart", "money", "night", "plant", "smile")


class QuizSettings(ChosenItems):
    n_items: int = 200
    answers: str = ""
    """JSON file: item id -> index of the right continuation (missing: 0)."""


def quiz_items(n: int) -> list[tuple[str, str, tuple[str, str]]]:
    """(id, question, two continuations) per item; the words vary so that models differ item by item."""
    out = []
    for i in range(n):
        a, b, c = (WORDS[(i * k + k) % len(WORDS)] for k in (1, 5, 7))
        out.append((f"q{i:03d}", f"Question {i}: which goes with {a}?", (f" {b}", f" {c}" if c != b else " none")))
    return out


class QuizSuite:
    name = "quiz"
    Settings = QuizSettings
    metrics: ClassVar[list[MetricSpec]] = [ACC]

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        assert isinstance(settings, QuizSettings)
        items = quiz_items(settings.n_items)
        if settings.item_ids is not None:
            by_id = {item[0]: item for item in items}
            items = [by_id[i] for i in settings.item_ids]
        answers = json.loads(Path(settings.answers).read_text()) if settings.answers else {}
        results = backend.loglikelihood([LoglikelihoodRequest(q, c) for _, q, pair in items for c in pair])
        records = []
        for k, (item_id, question, pair) in enumerate(items):
            lls = [results[2 * k].logprob, results[2 * k + 1].logprob]
            picked = max(range(2), key=lambda j: lls[j])
            right = int(answers.get(item_id, 0))
            records.append(ItemRecord(suite="quiz", item_id=item_id, prompt=question, output=pair[picked],
                                      reference=pair[right], scores={"acc": float(picked == right)},
                                      meta={"loglikelihoods": lls}))  # fmt: skip
        return SuiteRun(suite="quiz", settings=settings.model_dump(mode="json"), metrics=self.metrics,
                        records=records, data_sha256={"quiz": "0" * 64})  # fmt: skip
