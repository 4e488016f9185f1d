"""The gate's first step: audit the candidate's weights against the baseline's before any suite runs.

A candidate that is not a compression of the baseline (other tensors, other tokenizer) cannot be
compared: that is a ``UserError`` (exit 2). One whose weights are broken (NaN/Inf, config mismatch,
tensors outside experts/routers changed) FAILs at once, with the findings as its one capability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.inspect._report import InspectReport, inspect_checkpoint

AUDIT_FILE = "inspect.json"
"""Where the gate keeps the audit in a run folder (``decide`` puts it in the report's ``extra``)."""


def _local_safetensors(model: str) -> Path | None:
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file() and (
            any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()):
        return path
    return None


def audit_for_gate(candidate: str, baseline: str) -> InspectReport | None:
    """Inspect ``candidate`` against ``baseline``; ``None`` unless both are local safetensors folders.

    Raises ``UserError`` when the candidate is unreadable or is not comparable with the baseline.
    """
    cand = _local_safetensors(candidate)
    base = _local_safetensors(baseline)
    if cand is None or base is None:
        return None
    report = inspect_checkpoint(cand, against=base)
    if report.incomparable:
        raise UserError(f"candidate {candidate} cannot be compared with baseline {baseline}: {report.incomparable[0]}",
                        "gate a checkpoint compressed from the baseline model, or record a baseline of this model")
    return report


def audit_extra(report: InspectReport) -> dict[str, Any]:
    """The audit as the report shows it: findings and counts, not every tensor."""
    data = report.model_dump(mode="json", exclude={"tensors"})
    data["tensors"] = len(report.tensors)
    return data


def _capability(audit: dict[str, Any]) -> Any:
    from harness.gate.verdict import CapabilityResult

    problems = list(audit.get("problems") or [])
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return CapabilityResult(
        label="checkpoint audit (moegate inspect)", suite="inspect", metric="problems", kind="new_flags",
        status="FAIL", change=float(len(problems)), budget=0.0, reason=f"the weights must fail the gate: {shown}",
        method="moegate inspect against the baseline checkpoint",
    )


def audit_verdict(report: InspectReport, policy: Any) -> Any:
    """A FAIL verdict whose single capability lists the audit's problems (no suite was run)."""
    from harness.gate.verdict import GateVerdict

    return GateVerdict(overall="FAIL", capabilities=[_capability(audit_extra(report))], policy=policy)


def with_audit(verdict: Any, audit: dict[str, Any] | None) -> Any:
    """``verdict`` with a failing audit (e.g. damaged norms, measured by the suites too) added as a FAIL."""
    if not audit or not audit.get("must_fail"):
        return verdict
    return verdict.model_copy(update={"overall": "FAIL", "capabilities": [*verdict.capabilities, _capability(audit)]})
