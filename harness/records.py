"""Item records: what a suite produces for one item, and the metric facts the gate needs.

Everything after the model calls (detectors, statistics, gate, reports) reads only these types,
so a verdict can be recomputed from stored records without loading a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, field_validator
from pydantic_core import core_schema

RECORD_SCHEMA_VERSION = 1

MetricKind = Literal["binary", "continuous", "perplexity", "rate", "token"]
TokenStatistic = Literal["mean", "rms"] | float
"""How a ``token`` metric summarizes per-token values: their mean, their root mean square, or a quantile
(a level in [0, 1]; 1 is the maximum)."""


class MetricSpec(BaseModel):
    """All the gate must know about a metric, in one place."""

    model_config = ConfigDict(frozen=True)

    name: str
    """Key into ``ItemRecord.scores`` (for ``perplexity``: the records carry ``nll`` and ``tokens``)."""
    kind: MetricKind
    """``binary``: 0/1 per item (McNemar). ``continuous``: a per-item score whose mean is the metric
    (paired bootstrap). ``perplexity``: exp(sum nll / sum tokens) over windows (bootstrap of the ratio).
    ``rate``: share of items carrying a flag (new-flag counts). ``token``: a statistic (``statistic``) of
    per-token values pooled over every token of the items (logit divergence): each record carries
    ``scores["tokens"]`` and its own value over its tokens in ``scores[name]`` (mean: pooled weighted by
    tokens; rms: root of the token-weighted mean square) or, for a quantile, its per-token values in
    ``ItemRecord.per_token[values]``."""
    higher_is_better: bool
    scale: float = 1.0
    """Multiply the mean by this for display and budgets (100 for accuracies in points)."""
    description: str = ""
    statistic: TokenStatistic = "mean"
    """``token`` metrics: ``mean``, ``rms`` or a quantile level (e.g. 0.99)."""
    values: str | None = None
    """``token`` metrics that are quantiles: the key of ``ItemRecord.per_token`` they are read from."""

    @field_validator("statistic")
    @classmethod
    def _level(cls, v: TokenStatistic) -> TokenStatistic:
        if not isinstance(v, str) and not 0.0 <= v <= 1.0:
            raise ValueError(f"a quantile level is in [0, 1], got {v}")
        return v


class ItemRecord(BaseModel):
    """One item of one suite, as one model answered it."""

    model_config = ConfigDict(extra="forbid")

    version: int = RECORD_SCHEMA_VERSION
    """Record schema version."""
    suite: str
    """Suite name that produced the record."""
    item_id: str
    """Stable id, the same for baseline and candidate: pairing key."""
    prompt: str = ""
    """What the model saw (after few-shot and templating), or a short description for scored text."""
    output: str | None = None
    """Generated text, when the suite generates."""
    reference: str | None = None
    """Gold answer or reference translation."""
    scores: dict[str, float] = Field(default_factory=dict)
    """Per-item metric values, keyed by ``MetricSpec.name`` (0/1 for binary metrics)."""
    group: str | None = None
    """Cluster for clustered standard errors (e.g. MMLU-Pro subject)."""
    lang: str | None = None
    """Expected output language (ISO 639-1), for the language detectors."""
    checks: dict[str, bool] = Field(default_factory=dict)
    """Named pass/fail checks (collapse suite): True means the check passed."""
    flags: list[str] = Field(default_factory=list)
    """Detector flags raised on this item (see ``harness.detectors``)."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Anything else worth keeping (loglikelihoods per choice, token counts, extraction details)."""
    per_token: dict[str, list[float]] = Field(default_factory=dict)
    """Per-token values of an item whose metrics summarize tokens (``kld``: ``kl`` per scored position),
    pooled over items by quantile (``token`` metrics)."""


class SequentialInfo(BaseModel):
    """How a suite was run in chunks with sequential early stopping (``[gate] sequential = true``).

    The candidate answered the first ``items_used`` of the baseline's ``items_total`` items, in the
    baseline's stored order; looks are planned on ``items_total`` (``harness.stats.sequential.look_points``).
    ``moegate verdict`` re-decides from the records with this plan, so only the plan is trusted here.
    """

    items_total: int
    """Items the baseline has (N)."""
    items_used: int
    """Items the candidate was run on: a prefix of the baseline's records."""
    looks: int
    """Planned looks (the last one at all items)."""
    spending: Literal["obf", "pocock"] = "obf"
    """Alpha-spending function."""
    min_items: int = 20
    """No look before this many items."""
    alpha: float
    """One-sided alpha per capability the run stopped by (the gate's alpha / m with Holm); informative."""
    decisions: dict[str, str] = Field(default_factory=dict)
    """Budget label -> decision when the run stopped; informative (the verdict recomputes it)."""

    @property
    def decided(self) -> bool:
        """Every budget decided at this look: the suite may stop."""
        return "INCONCLUSIVE" not in self.decisions.values()


ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""An artifact's name is also its file name in a store."""


class Artifacts(Mapping[str, bytes]):
    """Binary side data of a suite run, by name: e.g. the baseline's top-k next-token distributions, or
    per-item route traces. Records stay JSON; what is large or binary goes here.

    A fresh run holds its bytes in memory. A stored run reads each artifact from the store on first
    access (``loaders``), so loading a store, or deciding a verdict that never looks at them, costs
    no memory for them.
    """

    def __init__(self, data: Mapping[str, bytes] | None = None, *,
                 loaders: Mapping[str, Callable[[], bytes]] | None = None) -> None:  # fmt: skip
        self._data = dict(data or {})
        self._loaders = dict(loaders or {})
        for name in [*self._data, *self._loaders]:
            if not ARTIFACT_NAME.match(name):
                raise ValueError(f"artifact name {name!r} must be a plain file name ([A-Za-z0-9_.-], at most 128)")
        for name, blob in self._data.items():
            if not isinstance(blob, bytes):
                raise ValueError(f"artifact {name!r} must be bytes, got {type(blob).__name__}")

    def __getitem__(self, name: str) -> bytes:
        if name not in self._data:
            if name not in self._loaders:
                raise KeyError(name)
            self._data[name] = self._loaders[name]()
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self._data, *self._loaders}))

    def __len__(self) -> int:
        return len({*self._data, *self._loaders})

    def loaded(self) -> list[str]:
        """Names whose bytes are in memory now."""
        return sorted(self._data)

    def __repr__(self) -> str:
        return f"Artifacts({list(self)})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def validate(value: Any) -> Artifacts:
            if isinstance(value, Artifacts):
                return value
            if isinstance(value, Mapping):
                return cls(value)
            raise ValueError(f"artifacts must be a mapping of names to bytes, got {type(value).__name__}")

        return core_schema.no_info_plain_validator_function(
            validate, serialization=core_schema.plain_serializer_function_ser_schema(lambda a: sorted(a))
        )


class SuiteRun(BaseModel):
    """One suite run on one model: its records and what produced them."""

    suite: str
    settings: dict[str, Any]
    """The pinned settings actually used (a baseline refuses comparison when these differ)."""
    data_sha256: dict[str, str] = Field(default_factory=dict)
    """File name -> sha256 of every data file read."""
    metrics: list[MetricSpec] = Field(default_factory=list)
    records: list[ItemRecord] = Field(default_factory=list)
    error: str | None = None
    """Set when the suite failed; the gate fails a suite with an error."""
    seconds: float = 0.0
    sequential: SequentialInfo | None = None
    """Set when the suite ran in chunks and may have stopped early (candidate runs only)."""
    artifacts: Artifacts = Field(default_factory=Artifacts, exclude=True)
    """Binary side data by name (``Artifacts``); stored as files beside the records, hashed in the manifest."""


def metric_value(records: list[ItemRecord], spec: MetricSpec) -> float | None:
    """The suite-level value of ``spec`` in display units: corpus perplexity, or the scaled mean.

    None when no record carries the metric (perplexity: when any record lacks ``nll`` or ``tokens``).
    """
    if spec.kind == "perplexity":
        nll = [r.scores.get("nll") for r in records]
        tokens = [r.scores.get("tokens") for r in records]
        if not records or None in nll or None in tokens or sum(tokens) <= 0:  # type: ignore[arg-type]
            return None
        return math.exp(sum(nll) / sum(tokens))  # type: ignore[arg-type]
    if spec.kind == "token":
        value = token_metric(records, spec)
        return None if value is None else spec.scale * value
    values = [r.scores[spec.name] for r in records if spec.name in r.scores]
    return spec.scale * sum(values) / len(values) if values else None


def token_metric(records: list[ItemRecord], spec: MetricSpec) -> float | None:
    """A ``token`` metric over every token of ``records`` (unscaled); None when a record lacks what it needs."""
    if isinstance(spec.statistic, str):
        pairs = [(r.scores.get(spec.name), r.scores.get("tokens")) for r in records]
        if not pairs or any(v is None or n is None for v, n in pairs):
            return None
        total = sum(n for _, n in pairs if n is not None)
        if total <= 0:
            return None
        if spec.statistic == "rms":
            return math.sqrt(sum(v * v * n for v, n in pairs if v is not None and n is not None) / total)
        return sum(v * n for v, n in pairs if v is not None and n is not None) / total
    key = spec.values or spec.name
    pooled = [x for r in records for x in r.per_token.get(key, ())]
    if not pooled or any(key not in r.per_token for r in records):
        return None
    return pooled_quantile(pooled, spec.statistic)


def pooled_quantile(values: list[float], level: float) -> float:
    """The ``level`` quantile by linear interpolation at ``level · (n − 1)`` of the sorted values (numpy's and
    llama.cpp's definition)."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), level))


def display_output(record: ItemRecord | None) -> str | None:
    """What the model answered, for people: the generated text, or the choice a multiple-choice
    item's loglikelihoods picked (lm-eval records keep ``meta.choices`` and ``meta.loglikelihoods``)."""
    if record is None:
        return None
    if record.output is not None:
        return record.output
    choices, lls = record.meta.get("choices"), record.meta.get("loglikelihoods")
    if isinstance(choices, list) and isinstance(lls, list) and choices and len(choices) == len(lls):
        k = max(range(len(lls)), key=lambda i: lls[i])
        letter = chr(ord("A") + k) if k < 26 else str(k)
        return f"({letter}) {choices[k]}"
    return None
