"""report.json as a typed, versioned model (``Report``), and the one way to read one back (``read_report``).

CI scripts read ``overall``, ``exit_code`` and, per capability in ``verdict.capabilities``, ``label``,
``suite``, ``metric``, ``status``, ``baseline_value``, ``candidate_value``, ``change``, ``ci_low``,
``ci_high`` and ``budget``: those keep their place in every version. Non-finite numbers are written as
``null``. A report of another schema version is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from harness.diagnosis import Diagnosis
from harness.errors import UserError
from harness.gate import GateVerdict, Status, read_verdict
from harness.records import MetricSpec

REPORT_SCHEMA_VERSION = 2
"""2: typed ``run`` (models, backends, options, fingerprints), ``inspect`` and ``expert_heatmap`` at the top."""


class ModelRun(BaseModel):
    """One side of the comparison: what ran, on which backend, with which options."""

    model: str
    backend: str
    options: dict[str, Any] = Field(default_factory=dict)
    fingerprint: str
    """The backend's fingerprint (weights sample, tokenizer, dtype, scoring settings)."""
    store: str | None = None
    """Where its records are stored."""
    engine: dict[str, Any] | None = None
    """What computed its numbers: engine, version, model, max_context (None: a store older than that)."""


class RunInfo(BaseModel):
    """Where the verdict comes from."""

    gate: str | None = None
    gate_file: str | None = None
    baseline: ModelRun | None = None
    candidate: ModelRun | None = None
    warnings: list[str] = Field(default_factory=list)
    backend_differences: list[str] = Field(default_factory=list)
    """Backend settings in which the candidate ran differently from the baseline, each marked asked for or not."""


class MetricSummary(MetricSpec):
    value: float | None = None
    """The suite-level value in display units."""


class SuiteSummary(BaseModel):
    suite: str
    n_items: int
    error: str | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = Field(default_factory=dict)
    data_sha256: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, MetricSummary] = Field(default_factory=dict)
    flag_counts: dict[str, int] = Field(default_factory=dict)


class SuitePair(BaseModel):
    baseline: SuiteSummary | None = None
    candidate: SuiteSummary | None = None


class ItemSide(BaseModel):
    output: str | None = None
    scores: dict[str, float | None] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)


class ShownItem(BaseModel):
    item_id: str
    note: str = ""
    prompt: str = ""
    reference: str | None = None
    baseline: ItemSide | None = None
    candidate: ItemSide | None = None


class ItemSection(BaseModel):
    """Per capability: its flipped or newly flagged items (else its worst), both sides' text."""

    label: str
    suite: str
    status: Status
    kind: Literal["changed", "worst"]
    total: int
    items: list[ShownItem] = Field(default_factory=list)


class SequentialSuite(BaseModel):
    items_used: int
    items_total: int
    items_saved: int
    looks: int
    spending: str


class SequentialTotals(BaseModel):
    items_saved: int
    items_total: int
    suites: dict[str, SequentialSuite]
    note: str


class Heatmap(BaseModel):
    """Per-layer expert scores with the compressed experts marked."""

    matrix: list[list[float | None]]
    marked: list[list[int]] = Field(default_factory=list)
    """(row, column) cells to outline."""
    layer_labels: list[str] | None = None
    title: str = "Expert usage per layer"
    colorbar_label: str = ""

    @field_validator("matrix", mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        return value.tolist() if hasattr(value, "tolist") else value


class Report(BaseModel):
    """Everything a later tool (or person) needs about one gate run."""

    schema_version: int = REPORT_SCHEMA_VERSION
    moegate_version: str
    created_utc: str | None = None
    overall: Status
    exit_code: int
    """0 PASS, 1 FAIL, 3 INCONCLUSIVE."""
    run: RunInfo = Field(default_factory=RunInfo)
    verdict: GateVerdict
    suites: dict[str, SuitePair] = Field(default_factory=dict)
    items: list[ItemSection] = Field(default_factory=list)
    sequential: SequentialTotals | None = None
    """Set when a suite ran in chunks (sequential early stopping)."""
    inspect: dict[str, Any] | None = None
    """The checkpoint audit against the baseline (``harness.inspect.InspectReport`` without its tensor list)."""
    expert_heatmap: Heatmap | None = None
    diagnosis: Diagnosis | None = None
    """Which changed experts carried the items that broke (``harness.diagnosis``); ``available`` False says why not."""


def read_report(path: str | Path) -> Report:
    """A report.json read back and checked: its schema version first, then every field."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is not a readable report.json ({type(exc).__name__})",
                        "recompute it: moegate verdict RUN_DIR --gate GATE") from exc
    version = document.get("schema_version") if isinstance(document, dict) else None
    if version != REPORT_SCHEMA_VERSION:
        raise UserError(f"{path} has report schema version {version!r}; this moegate reads version {REPORT_SCHEMA_VERSION}",
                        "recompute it with this moegate: moegate verdict RUN_DIR --gate GATE")
    read_verdict(document.get("verdict"), where=f"{path} (verdict)")
    try:
        return Report.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path}: '{where}': {first['msg']}", "recompute it: moegate verdict RUN_DIR --gate GATE") from exc
