"""report.json: everything a later tool (or person) needs, in one versioned, typed document (``schema.Report``)."""

from __future__ import annotations

from typing import Any

from harness._version import __version__
from harness.diagnosis import Diagnosis
from harness.gate import GateVerdict, verdict_exit_code
from harness.records import SuiteRun
from harness.reports._common import item_sections, sequential_totals, suite_summary
from harness.reports.schema import Heatmap, Report, RunInfo, SuitePair


def build_report(
    verdict: GateVerdict,
    baseline_runs: dict[str, SuiteRun],
    candidate_runs: dict[str, SuiteRun],
    *,
    run: RunInfo | None = None,
    inspect: dict[str, Any] | None = None,
    expert_heatmap: Heatmap | None = None,
    diagnosis: Diagnosis | None = None,
    created_utc: str | None = None,
) -> Report:
    """The report.json document (see ``harness.reports.schema.Report``)."""
    names = sorted(set(baseline_runs) | set(candidate_runs))
    return Report(
        moegate_version=__version__,
        created_utc=created_utc,
        overall=verdict.overall,
        exit_code=verdict_exit_code(verdict.overall),
        run=run or RunInfo(),
        verdict=verdict,
        suites={
            name: SuitePair(
                baseline=suite_summary(baseline_runs[name]) if name in baseline_runs else None,
                candidate=suite_summary(candidate_runs[name]) if name in candidate_runs else None,
            )
            for name in names
        },
        items=item_sections(verdict, baseline_runs, candidate_runs),
        sequential=sequential_totals(verdict, candidate_runs),
        inspect=inspect,
        expert_heatmap=expert_heatmap,
        diagnosis=diagnosis,
    )


def render_json(report: Report) -> str:
    return report.model_dump_json(indent=2) + "\n"
