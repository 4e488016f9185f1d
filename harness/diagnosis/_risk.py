"""Risk before running anything: rank a gate's capabilities by the baseline routing mass they send to changed experts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel

from harness.diagnosis._diagnose import ChangedExperts, suite_share
from harness.diagnosis._routes import RouteMass


class Risk(BaseModel):
    label: str
    suite: str
    share: float | None
    """Share of the suite's baseline routing mass that went to changed experts (None: no stored routes)."""


def rank_risk(
    routes: Mapping[str, RouteMass], changed: ChangedExperts, capabilities: Sequence[tuple[str, str]]
) -> list[Risk]:
    """``capabilities``: (label, suite) in gate order. Riskiest first; capabilities without routes last, in gate order."""
    risks = [Risk(label=label, suite=suite, share=round(suite_share(routes[suite], changed), 4) if suite in routes else None)
             for label, suite in capabilities]  # fmt: skip
    order = sorted(range(len(risks)), key=lambda i: (risks[i].share is None, -(risks[i].share or 0.0), i))
    return [risks[i] for i in order]


def suite_order(risks: Sequence[Risk], suites: Sequence[str]) -> list[str]:
    """``suites`` reordered so each suite runs at the rank of its riskiest capability; unranked ones keep their place after."""
    ranked = list(dict.fromkeys(r.suite for r in risks if r.suite in suites))
    return ranked + [s for s in suites if s not in ranked]
