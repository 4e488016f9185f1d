"""The gate, pure: budgets (non-inferiority margins), the statistical policy, and verdicts.

``evaluate_gate(baseline_runs, candidate_runs, budgets, policy)`` reads item records only, so a verdict
can be recomputed from stored runs without a model. Nothing here opens a model, reads a file or
imports a backend, the CLI, the reports or the application layer (``harness.api``; a test checks it).

- ``budgets``: ``Budget``, ``GatePolicy``; ``results``: ``CapabilityResult``, ``GateVerdict``
- ``verdict``: ``evaluate_gate``; ``flags``: detector flags of a pair of runs
- ``_estimate``: one budget's regression estimate; ``_sequential``: sequential early stopping
"""

from harness.gate._estimate import item_flags
from harness.gate._sequential import SequentialRule, sequential_rule
from harness.gate.budgets import ANY_FLAG, Budget, BudgetKind, GatePolicy, check_labels, flag_budget_warnings
from harness.gate.results import (
    VERDICT_SCHEMA_VERSION,
    CapabilityResult,
    Flips,
    GateVerdict,
    Status,
    WorstItem,
    read_verdict,
    verdict_exit_code,
)
from harness.gate.verdict import evaluate_gate

__all__ = [
    "ANY_FLAG",
    "VERDICT_SCHEMA_VERSION",
    "Budget",
    "BudgetKind",
    "CapabilityResult",
    "Flips",
    "GatePolicy",
    "GateVerdict",
    "SequentialRule",
    "Status",
    "WorstItem",
    "check_labels",
    "evaluate_gate",
    "flag_budget_warnings",
    "item_flags",
    "read_verdict",
    "sequential_rule",
    "verdict_exit_code",
]
