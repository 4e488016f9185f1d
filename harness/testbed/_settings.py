"""The test bed's knobs. Their hash (with the source model's and calibration file's sha256) names the cache entry."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from harness.errors import UserError

# Bump when the fitting code changes what it writes, so stale cached test beds are not reused.
BUILD_VERSION = 2
"""2: built with pinned CPU kernels (``_pinned``): other bytes than version 1's."""


@dataclass(frozen=True)
class TestbedSettings:
    """How the dense SmolLM2 MLPs become MoE blocks.

    Attributes:
        experts: routed experts per layer.
        top_k: routed experts each token uses (must be below ``experts`` so routing is real).
        shared_fraction: fraction of each MLP's neurons in the always-on shared expert.
        seed: seeds the clustering and everything else random.
        calib_seqs, seq_len: calibration windows of C4 text (tokens = calib_seqs * seq_len).
        logit_std: spread of router logits across experts. Small, so the top-k routing weights are
            nearly equal per token and the refitted down projections can absorb them; selection is
            unaffected (top-k of softmax is scale-invariant).
        ridge: relative ridge strength of the router and down-projection fits.
        skew: how strongly generally busy experts are favoured (uneven usage, as in trained MoEs).
    """

    __test__ = False  # not a pytest class despite the name

    experts: int = 8
    top_k: int = 2
    shared_fraction: float = 0.75
    seed: int = 0
    calib_seqs: int = 32
    seq_len: int = 256
    logit_std: float = 0.05
    ridge: float = 1.0
    skew: float = 0.3

    def __post_init__(self) -> None:
        if self.experts < 2:
            raise UserError(f"--experts {self.experts} is too small", "use at least 2 routed experts")
        if not 1 <= self.top_k < self.experts:
            raise UserError(
                f"--top-k {self.top_k} must be at least 1 and below --experts {self.experts}",
                "pick a top-k smaller than the number of routed experts so routing is sparse",
            )
        if not 0.0 <= self.shared_fraction < 1.0:
            raise UserError(f"--shared-fraction {self.shared_fraction} is outside [0, 1)", "use e.g. 0.5")

    def shared_neurons(self, intermediate: int) -> int:
        """Shared-expert width, rounded so the routed remainder splits evenly into experts."""
        routed = intermediate - round(intermediate * self.shared_fraction)
        routed -= routed % self.experts
        if routed < self.experts:
            raise UserError(
                f"--shared-fraction {self.shared_fraction} leaves too few neurons for {self.experts} experts",
                "lower --shared-fraction or --experts",
            )
        return intermediate - routed

    def as_dict(self) -> dict:
        return asdict(self)

    def key(self, *shas: str) -> str:
        """Short hash of these settings, the build version and the given input file hashes."""
        blob = json.dumps({"v": BUILD_VERSION, "settings": self.as_dict(), "inputs": list(shas)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
