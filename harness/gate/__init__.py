"""The gate: budgets (non-inferiority margins), the statistical policy, and verdicts.

``evaluate_gate(baseline_runs, candidate_runs, budgets, policy)`` is pure: it reads item records
only, so a verdict can be recomputed from stored runs without a model. Gate files live in
``harness.gate.config``.
"""

from harness.gate.budgets import ANY_FLAG, Budget, GatePolicy
from harness.gate.verdict import (
    VERDICT_SCHEMA_VERSION,
    CapabilityResult,
    Flips,
    GateVerdict,
    WorstItem,
    evaluate_gate,
    verdict_exit_code,
)

__all__ = [
    "ANY_FLAG",
    "VERDICT_SCHEMA_VERSION",
    "Budget",
    "CapabilityResult",
    "Flips",
    "GatePolicy",
    "GateVerdict",
    "WorstItem",
    "evaluate_gate",
    "verdict_exit_code",
]
