"""Reports of a gate verdict: report.json (everything), report.md (CI summary), report.html (people).

``write_reports`` writes all three into ``out_dir`` at once (atomically: a crash leaves either the
previous files or the new ones). Pure rendering functions are exported too, for the CLI and plugin.

report.json schema (``schema_version`` 1)::

    schema_version: int          # REPORT_SCHEMA_VERSION
    moegate_version: str
    created_utc: str             # ISO 8601
    overall: "PASS" | "FAIL" | "INCONCLUSIVE"
    exit_code: 0 | 1 | 3
    verdict: GateVerdict         # harness.gate.verdict, incl. policy and every CapabilityResult
    suites: {name: {baseline: Summary | null, candidate: Summary | null}}
        Summary = {suite, n_items, error, seconds, settings, data_sha256,
                   metrics: {name: {name, kind, higher_is_better, scale, description, value}},
                   flag_counts: {flag: items}}
    items: [{label, suite, status, kind: "changed" | "worst", total,
             items: [{item_id, note, prompt, reference,
                      baseline: {output, scores, flags} | null, candidate: {...} | null}]}]
    sequential: {items_saved, items_total, note,   # null unless a suite ran in chunks
                 suites: {name: {items_used, items_total, items_saved, looks, spending}}} | null
    extra: {...}                 # caller's: gate, baseline, candidate, fingerprints, profile,
                                 # expert_heatmap {matrix, marked, title}, ...
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from harness._version import __version__
from harness.atomic import atomic_write_text
from harness.errors import UserError
from harness.gate.verdict import GateVerdict
from harness.records import SuiteRun
from harness.reports.html import render_html
from harness.reports.json_report import REPORT_SCHEMA_VERSION, build_report, render_json
from harness.reports.markdown import render_markdown

__all__ = ["REPORT_SCHEMA_VERSION", "build_report", "render_html", "render_markdown", "write_reports"]

REPORT_FILES = ("report.json", "report.md", "report.html")


def write_reports(
    verdict: GateVerdict,
    baseline_runs: dict[str, SuiteRun],
    candidate_runs: dict[str, SuiteRun],
    out_dir: Path,
    *,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Render report.json, report.md and report.html into ``out_dir``; returns {"json"|"md"|"html": path}.

    Everything is rendered in memory first, so a rendering error writes nothing; each file is then
    written through a temp file and a rename.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"report directory {out_dir} is a file", "pass a directory to --report-dir")
    extra = dict(extra or {})
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    title = f"moegate gate {extra['gate']}" if extra.get("gate") else "moegate gate report"
    doc = build_report(verdict, baseline_runs, candidate_runs, extra=extra, created_utc=created)
    texts = {
        "json": render_json(doc),
        "md": render_markdown(verdict, baseline_runs, candidate_runs, title=title),
        "html": render_html(
            verdict,
            baseline_runs,
            candidate_runs,
            extra={**doc["extra"], "created_utc": created, "moegate_version": __version__},
            title=title,
        ),
    }
    paths = {key: out_dir / f"report.{key}" for key in texts}
    for key, text in texts.items():
        atomic_write_text(paths[key], text)
        paths[key].chmod(0o644)  # temp files are created 0600; reports are meant to be shared
    return paths
