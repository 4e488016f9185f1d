"""Small real parts for the gate's tests: a toy suite over a real backend, gate files, stored runs.

The toy suite scores a few fixed continuations with ``backend.loglikelihood`` (a real request kind),
so the gate machinery runs end to end on a tiny model in seconds.
"""

from __future__ import annotations

import struct
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest

from harness.backends.base import Backend, LoglikelihoodRequest
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.suites import SUITES, SuiteSettings

LOGPROB = MetricSpec(name="logprob", kind="continuous", higher_is_better=True, description="toy log-likelihood")
ACC = MetricSpec(name="acc", kind="binary", higher_is_better=True, scale=100)

PAIRS = [
    ("The capital of France is", " Paris"),
    ("Two plus two equals", " four"),
    ("The sky is", " blue"),
    ("Water freezes at zero degrees", " Celsius"),
    ("The opposite of hot is", " cold"),
    ("A week has seven", " days"),
    ("Cats like to chase", " mice"),
    ("The sun rises in the", " east"),
]


class ToySettings(SuiteSettings):
    n_items: int = 6


class ToySuite:
    name = "toy"
    Settings = ToySettings
    metrics: ClassVar[list[MetricSpec]] = [LOGPROB, ACC]
    """It scores ``logprob``; ``acc`` is for stored runs made by ``acc_run``."""

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        assert isinstance(settings, ToySettings)
        pairs = PAIRS[: settings.n_items]
        results = backend.loglikelihood([LoglikelihoodRequest(c, x) for c, x in pairs])
        records = [
            ItemRecord(suite="toy", item_id=f"t{i}", prompt=c, reference=x, scores={"logprob": r.logprob})
            for i, ((c, x), r) in enumerate(zip(pairs, results, strict=True))
        ]
        return SuiteRun(
            suite="toy", settings=settings.model_dump(mode="json"), metrics=[LOGPROB], records=records,
            data_sha256={"toy-pairs": "0" * 64},
        )


DRIFT = MetricSpec(name="drift", kind="continuous", higher_is_better=False, description="|logprob - baseline's|")


class EchoSuite:
    """Stores its per-item log-likelihoods as a binary artifact and, when gating, scores each item
    against the baseline's stored artifact (the shape of a KL-divergence suite)."""

    name = "toy_echo"
    Settings = ToySettings
    metrics: ClassVar[list[MetricSpec]] = [DRIFT]
    ARTIFACT = "logprobs.f64"

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        assert isinstance(settings, ToySettings)
        pairs = PAIRS[: settings.n_items]
        values = [r.logprob for r in backend.loglikelihood([LoglikelihoodRequest(c, x) for c, x in pairs])]
        reference = struct.unpack(f"<{len(values)}d", baseline.artifacts[self.ARTIFACT]) if baseline else values
        records = [
            ItemRecord(suite=self.name, item_id=f"e{i}", prompt=c, scores={"drift": abs(v - ref)})
            for i, ((c, _), v, ref) in enumerate(zip(pairs, values, reference, strict=True))
        ]
        return SuiteRun(suite=self.name, settings=settings.model_dump(mode="json"), metrics=self.metrics,
                        records=records, artifacts={self.ARTIFACT: struct.pack(f"<{len(values)}d", *values)})


class CrashSuite:
    name = "toy_crash"
    Settings = SuiteSettings
    metrics: ClassVar[list[MetricSpec]] = [LOGPROB]

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        raise RuntimeError("toy suite exploded")


def register_toys() -> dict:
    """Register the toy suites; returns the registry snapshot to restore afterwards."""
    saved = SUITES.snapshot()
    SUITES.register("toy", ToySuite)
    SUITES.register("toy_crash", CrashSuite)
    SUITES.register("toy_echo", EchoSuite)
    return saved


def write_gate(folder: Path, model: str, *, body: str | None = None, name: str = "toy") -> Path:
    """A gate file ``folder/gates/<name>.toml`` over the toy suite (``body`` replaces suites and budgets)."""
    gates = folder / "gates"
    gates.mkdir(parents=True, exist_ok=True)
    body = body or textwrap.dedent(
        """
        [suites.toy]
        n_items = 6

        [[budgets]]
        suite = "toy"
        metric = "logprob"
        kind = "drop"
        max = 0.5
        """
    )
    head = textwrap.dedent(
        f"""
        [gate]
        name = "{name}"
        [baseline]
        model = "{model}"
        dir = "baselines/{name}"
        """
    )
    path = gates / f"{name}.toml"
    path.write_text(head + body, encoding="utf-8")
    return path


def acc_run(correct: list[int], suite: str = "toy") -> SuiteRun:
    """A 0/1-scored run with one record per item (ids q0, q1, ...)."""
    records = [
        ItemRecord(suite=suite, item_id=f"q{i}", prompt=f"question {i}", output=f"answer {c}", scores={"acc": float(c)})
        for i, c in enumerate(correct)
    ]
    return SuiteRun(suite=suite, settings={"limit": None, "seed": 1234, "n_items": 6}, metrics=[ACC], records=records)


def moegate(*args: object) -> int:
    """Run the ``moegate`` CLI in-process; its exit code."""
    from harness.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return int(info.value.code or 0)


@contextmanager
def recorded_toy_project(root: Path) -> Iterator[tuple[Path, Path]]:
    """A tiny Qwen2-MoE baseline recorded with the toy gate under ``root`` (its own request cache):
    ``(model, gate file)``; the toy suites and the environment are restored afterwards."""
    from tests.tiny_models import build_tiny_moe

    saved = register_toys()
    patch = pytest.MonkeyPatch()
    patch.setenv("MOEGATE_CACHE_DIR", str(root / "cache"))
    try:
        base = build_tiny_moe("qwen2_moe", root / "base")
        gate = write_gate(root, str(base))
        assert moegate("baseline", "record", "--gate", gate) == 0
        yield base, gate
    finally:
        patch.undo()
        SUITES.restore(saved)
