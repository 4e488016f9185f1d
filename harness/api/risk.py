"""``moegate risk``: rank a gate's capabilities by the baseline routing mass they send to the candidate's changed experts.

No suite runs and no model is loaded: the stored baseline's route traces and the checkpoint audit
(``moegate inspect`` against the baseline's weights) are all it reads, so it takes seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.api._diagnosis import audit_findings, changed_experts, risk_ranking
from harness.api.config import GateConfig
from harness.api.models import Log, resolve_testbed
from harness.diagnosis import Risk
from harness.errors import UserError
from harness.store import load_store


@dataclass
class RiskOutcome:
    risks: list[Risk]
    """Riskiest first."""
    changed: dict[int, dict[int, str]] = field(default_factory=dict)
    note: str | None = None
    """Why there is no ranking (no route traces, no changed experts, a layout the diff cannot map)."""
    seconds: float = 0.0


def assess_risk(config: GateConfig, candidate: str, *, baseline_dir: Path | None = None, log: Log | None = None) -> RiskOutcome:
    """The gate's capabilities ranked by risk for ``candidate`` (a local safetensors folder)."""
    start = time.perf_counter()
    manifest, baseline_runs = load_store(baseline_dir or config.baseline_dir)
    if manifest.backend == "openai":
        return RiskOutcome([], note="the baseline was recorded through the openai backend: no route traces to rank by")
    say = log or (lambda _m: None)
    findings = audit_findings(resolve_testbed(candidate, "transformers", say), resolve_testbed(manifest.model, manifest.backend, say))
    if findings is None:
        raise UserError(f"cannot audit {candidate} against the baseline {manifest.model}",
                        "moegate risk needs both as local safetensors folders (the candidate's diff comes from its weights)")
    risks, note = risk_ranking(baseline_runs, findings, [(b.display_label, b.suite) for b in config.budgets])
    return RiskOutcome(risks, changed_experts(findings), note, round(time.perf_counter() - start, 2))
