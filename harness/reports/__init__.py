"""Reports of a gate verdict: report.json (everything), report.md (CI summary), report.html (people).

``write_reports`` writes all three into ``out_dir`` at once (atomically: a crash leaves either the
previous files or the new ones). report.json is ``schema.Report`` (typed, versioned; read one back with
``read_report``). Pure rendering functions are exported too, for the CLI and plugin.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from harness.atomic import atomic_write_text
from harness.diagnosis import Diagnosis
from harness.errors import UserError
from harness.gate import GateVerdict
from harness.records import SuiteRun
from harness.reports.audit import audit_markdown
from harness.reports.diagnosis import diagnosis_markdown
from harness.reports.html import render_html
from harness.reports.json_report import build_report, render_json
from harness.reports.markdown import render_markdown
from harness.reports.schema import REPORT_SCHEMA_VERSION, Heatmap, ModelRun, Report, RunInfo, read_report

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "Heatmap",
    "ModelRun",
    "Report",
    "RunInfo",
    "build_report",
    "read_report",
    "render_html",
    "render_markdown",
    "write_reports",
]

REPORT_FILES = ("report.json", "report.md", "report.html")


def write_reports(
    verdict: GateVerdict,
    baseline_runs: dict[str, SuiteRun],
    candidate_runs: dict[str, SuiteRun],
    out_dir: Path,
    *,
    run: RunInfo | None = None,
    inspect: dict[str, Any] | None = None,
    expert_heatmap: Heatmap | None = None,
    diagnosis: Diagnosis | None = None,
) -> dict[str, Path]:
    """Render report.json, report.md and report.html into ``out_dir``; returns {"json"|"md"|"html": path}.

    Everything is rendered in memory first, so a rendering error writes nothing; each file is then
    written through a temp file and a rename.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"report directory {out_dir} is a file", "pass a directory to --report-dir")
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    report = build_report(verdict, baseline_runs, candidate_runs, run=run, inspect=inspect,
                          expert_heatmap=expert_heatmap, diagnosis=diagnosis, created_utc=created)  # fmt: skip
    title = f"moegate gate {report.run.gate}" if report.run.gate else "moegate gate report"
    texts = {
        "json": render_json(report),
        "md": render_markdown(verdict, baseline_runs, candidate_runs, title=title, warnings=report.run.warnings)
        + with_audit(inspect) + with_diagnosis(diagnosis),
        "html": render_html(report, baseline_runs, candidate_runs, title=title),
    }
    paths = {key: out_dir / f"report.{key}" for key in texts}
    for key, text in texts.items():
        atomic_write_text(paths[key], text)
        paths[key].chmod(0o644)  # temp files are created 0600; reports are meant to be shared
    return paths


def with_audit(inspect: dict[str, Any] | None) -> str:
    """The checkpoint audit's classes appended to report.md (nothing without an audit against a baseline)."""
    lines = audit_markdown(inspect)
    return "\n".join(lines) + "\n" if lines else ""


def with_diagnosis(diagnosis: Diagnosis | None) -> str:
    """The expert diagnosis lines appended to report.md (nothing without a diagnosis)."""
    lines = diagnosis_markdown(diagnosis)
    return "\n".join(lines) + "\n" if lines else ""
