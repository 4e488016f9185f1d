"""The application layer: the typed Python API behind ``moegate``'s CLI, its pytest plugin and ``moegate demo``.

- ``load_gate(path) -> GateConfig``: a gate file, validated whole (``config``).
- ``record_baseline(config)``, ``gate_candidate(config, candidate, run_dir)``, ``decide(config, run_dir)``,
  ``evaluate(model, suites)`` (``gating``): each takes a model as a spec string, a ``ModelSpec`` or an
  already open ``Backend``.
- ``derived_spec``, ``spec_differences``, ``open_model`` (``models``): the one place the candidate's
  backend settings are derived from the baseline's.

It opens models, runs suites (``harness.runner``), stores runs (``harness.store``), decides
(``harness.gate``) and writes reports (``harness.reports``); nothing below it imports it.
"""

from harness.api.config import GateConfig, ModelSpec, load_gate
from harness.api.gating import (
    CANDIDATE_STORE,
    Evaluation,
    GateOutcome,
    decide,
    default_run_dir,
    evaluate,
    gate_candidate,
    record_baseline,
)
from harness.api.models import TESTBED, derived_spec, open_model, resolve_testbed, spec_differences

__all__ = [
    "CANDIDATE_STORE",
    "TESTBED",
    "Evaluation",
    "GateConfig",
    "GateOutcome",
    "ModelSpec",
    "decide",
    "default_run_dir",
    "derived_spec",
    "evaluate",
    "gate_candidate",
    "load_gate",
    "open_model",
    "record_baseline",
    "resolve_testbed",
    "spec_differences",
]
