"""The checkpoint audit in the reports: changed tensors per class, casts with their error, renumbering, damage."""

from __future__ import annotations

from html import escape
from typing import Any

from harness.inspect import audit_lines


def audit_markdown(inspect: dict[str, Any] | None) -> list[str]:
    """Markdown lines for report.md (empty without an audit against the baseline)."""
    lines = audit_lines(inspect or {})
    return ["", "### Checkpoint audit", "", *[f"- {line}" for line in lines]] if lines else []


def audit_html(inspect: dict[str, Any] | None) -> list[str]:
    """HTML parts for report.html (empty without an audit against the baseline)."""
    lines = audit_lines(inspect or {})
    if not lines:
        return []
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    return ["<h2>Checkpoint audit</h2>",
            '<p class="small muted">Every tensor that differs from the baseline, in one class; only damage outside '
            "the experts and routers fails the gate.</p>", f'<ul class="small">{items}</ul>']  # fmt: skip
