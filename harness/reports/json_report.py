"""report.json: everything a later tool (or person) needs, in one versioned document."""

from __future__ import annotations

import json
import math
from typing import Any

from harness._version import __version__
from harness.gate.verdict import GateVerdict, verdict_exit_code
from harness.records import SuiteRun
from harness.reports._common import item_sections, sequential_totals, suite_summary, to_jsonable

REPORT_SCHEMA_VERSION = 1


def _finite(obj: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) with None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def build_report(
    verdict: GateVerdict,
    baseline_runs: dict[str, SuiteRun],
    candidate_runs: dict[str, SuiteRun],
    *,
    extra: dict[str, Any] | None = None,
    created_utc: str | None = None,
) -> dict[str, Any]:
    """The report.json document as a dict (see ``write_reports`` for the schema)."""
    names = sorted(set(baseline_runs) | set(candidate_runs))
    doc = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "moegate_version": __version__,
        "created_utc": created_utc,
        "overall": verdict.overall,
        "exit_code": verdict_exit_code(verdict.overall),
        "verdict": verdict.model_dump(mode="json"),
        "suites": {
            name: {
                "baseline": suite_summary(baseline_runs[name]) if name in baseline_runs else None,
                "candidate": suite_summary(candidate_runs[name]) if name in candidate_runs else None,
            }
            for name in names
        },
        "items": item_sections(verdict, baseline_runs, candidate_runs),
        "sequential": sequential_totals(verdict, candidate_runs),
        "extra": extra or {},
    }
    # Round-trip through json with the converters so numpy arrays, paths and sets become plain JSON.
    return _finite(json.loads(json.dumps(doc, default=to_jsonable)))


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
