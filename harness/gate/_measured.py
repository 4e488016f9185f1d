"""What an estimate of one budget's regression is (``Measured``) or why there is none (``Refused``), and
the small record helpers the estimators share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from harness.gate.results import WorstItem
from harness.records import ItemRecord
from harness.stats.interval import Estimator


@dataclass
class Measured:
    """A statistical (or, with ``estimator=None``, exact count) comparison ready for a decision."""

    estimator: Estimator | None
    baseline_value: float | None
    candidate_value: float | None
    n_items: int
    log_scale: bool = False
    method: str = ""
    flips: tuple[int, int] | None = None
    mcnemar_p: float | None = None
    changed: list[str] = field(default_factory=list)
    worst: list[WorstItem] = field(default_factory=list)
    count: int | None = None
    not_evidence: list[str] = field(default_factory=list)
    """Flag budgets: items newly flagged where the baseline had already failed (not counted)."""


@dataclass
class Refused:
    reason: str
    n_items: int = 0


def finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def item_scores(records: list[ItemRecord], key: str, side: str) -> np.ndarray | Refused:
    vals = [r.scores.get(key) for r in records]
    bad = [r.item_id for r, v in zip(records, vals, strict=True) if v is None or not math.isfinite(v)]
    if bad:
        return Refused(
            f"{len(bad)} {side} items have no finite {key!r} score (e.g. {bad[0]!r})", len(records)
        )
    return np.asarray(vals, dtype=float)


def worst_by(
    ids: list[str], b: np.ndarray, c: np.ndarray, reg: np.ndarray, note: str, k: int = 10
) -> list[WorstItem]:
    order = [i for i in np.argsort(-reg, kind="stable") if reg[i] > 0][:k]
    return [WorstItem(item_id=ids[i], baseline_score=float(b[i]), candidate_score=float(c[i]), note=note) for i in order]
