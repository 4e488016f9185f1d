"""The gate's checkpoint audit and expert heatmap: what a gate run reads from the checkpoints themselves.

``moegate inspect`` against the baseline's weights runs before any suite: NaN/Inf or weights that
contradict the config FAIL at once; other damage (a changed norm) FAILs next to what the suites measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.gate import CapabilityResult, GatePolicy, GateVerdict
from harness.inspect import InspectReport, audit_extra
from harness.reports import Heatmap

AUDIT_FILE = "inspect.json"
"""Where the gate keeps the audit in a run folder (``decide`` puts it in the report)."""



def _capability(findings: dict[str, Any]) -> CapabilityResult:
    problems = list(findings.get("problems") or [])
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return CapabilityResult(
        label="checkpoint audit (moegate inspect)", suite="inspect", metric="problems", kind="new_flags_count",
        status="FAIL", change=float(len(problems)), budget=0.0, reason=f"the weights must fail the gate: {shown}",
        method="moegate inspect against the baseline checkpoint",
    )


def audit_verdict(report: InspectReport, policy: GatePolicy) -> GateVerdict:
    """A FAIL verdict whose single capability lists the audit's problems (no suite was run)."""
    return GateVerdict(overall="FAIL", capabilities=[_capability(audit_extra(report))], policy=policy)


def with_audit(verdict: GateVerdict, findings: dict[str, Any] | None) -> GateVerdict:
    """``verdict`` with a failing audit (e.g. damaged norms, measured by the suites too) added as a FAIL."""
    if not findings or not findings.get("must_fail"):
        return verdict
    return verdict.model_copy(update={"overall": "FAIL", "capabilities": [*verdict.capabilities, _capability(findings)]})


def expert_heatmap(checkpoint: Path) -> Heatmap | None:
    """Per-layer expert scores with the compressed experts marked, from the compression record.

    ``pruning.json`` carries each expert's importance and the pruned ones; ``quantization.json`` the
    bits per expert. A checkpoint made elsewhere has neither, and the report shows no heatmap.
    """
    pruning, quant = checkpoint / "pruning.json", checkpoint / "quantization.json"
    if pruning.is_file():
        info = json.loads(pruning.read_text(encoding="utf-8"))
        layers = info.get("layers", [])
        return Heatmap(
            matrix=[row["scores"] for row in layers],
            marked=[[i, e] for i, row in enumerate(layers) for e in row["pruned"]],
            layer_labels=[str(row["layer"]) for row in layers],
            title=f"expert {info.get('criterion', 'importance')} per layer (pruned experts outlined)",
        )
    if quant.is_file():
        layers = json.loads(quant.read_text(encoding="utf-8")).get("layers", [])
        lowest = min((min(row["bits"]) for row in layers), default=0)
        return Heatmap(
            matrix=[row["bits"] for row in layers],
            marked=[[i, e] for i, row in enumerate(layers) for e, b in enumerate(row["bits"]) if b == lowest],
            layer_labels=[str(row["layer"]) for row in layers],
            title=f"bits per expert (the {lowest}-bit experts outlined)",
            colorbar_label="bits",
        )
    return None
