"""moegate: evaluation harness and regression gate for compressed Mixture-of-Experts LLMs.

Where things are (one hop from here), from the top layer down; a layer imports only those below it:

- ``harness.cli``, ``harness.pytest_plugin`` — the ``moegate`` command and the pytest plugin: thin callers of
- ``harness.api``        — the application: gate files, ``record_baseline``, ``gate_candidate``, ``decide``, ``evaluate``
- ``harness.runner``     — runs suites on an open backend (optionally in chunks, by a stopping rule)
- ``harness.routing``    — the baseline's route traces, recorded per item with the baseline
- ``harness.store``      — stored runs (baselines and candidates): records, artifacts, hashes, versions
- ``harness.reports``    — report.json (typed, versioned), Markdown and HTML
- ``harness.suites``     — suites that turn a model into item records (``harness.records``)
- ``harness.cache``      — SQLite request cache keyed by model fingerprint
- ``harness.backends``   — the request kinds; transformers, mlx-lm, OpenAI-compatible servers; options models
- ``harness.checkpoint`` — model files: checks, loading, fingerprints, MoE layout, expert/router names
- ``harness.gate``       — pure: budgets, policy, verdicts (``harness.stats`` statistics, ``harness.detectors`` flags)
- ``harness.diagnosis``  — pure: which changed experts carried the items that broke; risk before a run
- ``harness.inspect``, ``harness.compress``, ``harness.profiler``, ``harness.testbed`` — audit, test subjects, expert profiles

The Python API is re-exported here (``harness.gate_candidate`` ...), loaded on first use so that
``import harness`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from harness._version import __version__
from harness.errors import UserError
from harness.records import ItemRecord, MetricSpec, SuiteRun

_API = ("GateConfig", "GateOutcome", "ModelSpec", "decide", "evaluate", "gate_candidate", "load_gate", "record_baseline")

__all__ = ["ItemRecord", "MetricSpec", "SuiteRun", "UserError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("harness.api"), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
