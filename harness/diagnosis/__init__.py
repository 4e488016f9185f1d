"""Expert-level diagnosis (pure): which changed experts carried the items that broke, and risk before a run.

``RouteMass`` is the baseline's routing per item (stored as an artifact of each suite's baseline run);
``diagnose`` attributes a verdict's flipped items to the candidate's changed experts; ``rank_risk`` ranks
capabilities by the routing mass they send to changed experts without running anything.
"""

from harness.diagnosis._diagnose import (
    CalibrationUsage,
    CapabilityDiagnosis,
    ChangedExperts,
    CoverageRow,
    Diagnosis,
    ExpertShare,
    ItemDiagnosis,
    coverage,
    describe,
    diagnose,
    layout_mismatch,
    suite_share,
    unavailable,
)
from harness.diagnosis._risk import Risk, rank_risk, suite_order
from harness.diagnosis._routes import (
    ROUTES_ARTIFACT,
    RouteMass,
    decode_routes,
    encode_routes,
    item_route_mass,
)

__all__ = [
    "ROUTES_ARTIFACT",
    "CalibrationUsage",
    "CapabilityDiagnosis",
    "ChangedExperts",
    "CoverageRow",
    "Diagnosis",
    "ExpertShare",
    "ItemDiagnosis",
    "Risk",
    "RouteMass",
    "coverage",
    "decode_routes",
    "describe",
    "diagnose",
    "encode_routes",
    "item_route_mass",
    "layout_mismatch",
    "rank_risk",
    "suite_order",
    "suite_share",
    "unavailable",
]
