"""The baseline's routing, per item, compactly: per MoE layer and expert, the routing mass and the selections.

A route trace holds, per token and MoE layer, the top-k experts and their gate weights. The diagnosis
only ever sums them over an item's tokens, so that sum is what is stored: for every item of a suite,
``mass[item, layer, expert]`` (the sum of that expert's gate weights over the item's tokens, float16)
and ``picks[item, layer, expert]`` (how many of its tokens selected it, uint16), plus the item's token
count. On the test bed (30 MoE layers, 8 experts) that is 960 bytes per item whatever its length,
where the per-token trace (uint8 ids + float16 weights, top-2) takes 180 bytes per token.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

ROUTES_ARTIFACT = "route_mass.npz"
"""The artifact name of a suite's baseline routing in a store (``artifacts/<suite>/route_mass.npz``)."""
ROUTES_FORMAT = 1


@dataclass(frozen=True)
class RouteMass:
    """One suite's baseline routing, summed per item over its tokens.

    Attributes:
        item_ids: the items, in record order.
        layers: the decoder-layer index of each MoE layer (axis 1).
        mass: [items, layers, experts] sum of gate weights per expert (float32 in memory).
        picks: [items, layers, experts] number of the item's tokens that selected the expert.
        tokens: [items] tokens traced per item.
    """

    item_ids: tuple[str, ...]
    layers: tuple[int, ...]
    mass: NDArray[np.float32]
    picks: NDArray[np.int64]
    tokens: NDArray[np.int64]

    def __post_init__(self) -> None:
        want = (len(self.item_ids), len(self.layers))
        for name in ("mass", "picks"):
            shape = getattr(self, name).shape
            if len(shape) != 3 or shape[:2] != want:
                raise ValueError(f"route {name} has shape {shape}; expected (items, layers, experts) = {want} + (E,)")
        if self.mass.shape != self.picks.shape or self.tokens.shape != (len(self.item_ids),):
            raise ValueError(f"route arrays disagree: mass {self.mass.shape}, picks {self.picks.shape}, "
                             f"tokens {self.tokens.shape}")  # fmt: skip

    @property
    def num_experts(self) -> int:
        return int(self.mass.shape[2])

    def index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}


def item_route_mass(
    expert_ids: Sequence[Sequence[Sequence[int]]], weights: Sequence[Sequence[Sequence[float]]], num_experts: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """One text's trace ([layer][token][k] ids and weights) summed over tokens: (mass, picks), each [layers, experts]."""
    layers = len(expert_ids)
    mass = np.zeros((layers, num_experts), dtype=np.float64)
    picks = np.zeros((layers, num_experts), dtype=np.int64)
    for layer, (ids, ws) in enumerate(zip(expert_ids, weights, strict=True)):
        if not len(ids):
            continue
        flat_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        flat_w = np.asarray(ws, dtype=np.float64).reshape(-1)
        if flat_ids.size != flat_w.size:
            raise ValueError(f"layer {layer}: {flat_ids.size} expert ids but {flat_w.size} weights")
        if flat_ids.size and (flat_ids.min() < 0 or flat_ids.max() >= num_experts):
            raise ValueError(f"layer {layer}: expert id outside 0..{num_experts - 1}")
        np.add.at(mass[layer], flat_ids, flat_w)
        np.add.at(picks[layer], flat_ids, 1)
    return mass, picks


def encode_routes(routes: RouteMass) -> bytes:
    """The artifact's bytes: a compressed .npz (no pickle), float16 mass, uint16 picks (saturating)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        format=np.array([ROUTES_FORMAT], dtype=np.int32),
        item_ids=np.array(routes.item_ids, dtype=np.str_),
        layers=np.array(routes.layers, dtype=np.int32),
        mass=routes.mass.astype(np.float16),
        picks=np.minimum(routes.picks, np.iinfo(np.uint16).max).astype(np.uint16),
        tokens=routes.tokens.astype(np.uint32),
    )
    return buffer.getvalue()


def decode_routes(blob: bytes) -> RouteMass:
    """Read an artifact written by ``encode_routes``; ``ValueError`` when it is not one."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            version = int(data["format"][0])
            if version != ROUTES_FORMAT:
                raise KeyError(f"format {version}, this moegate reads {ROUTES_FORMAT}")
            return RouteMass(
                item_ids=tuple(str(i) for i in data["item_ids"].tolist()),
                layers=tuple(int(x) for x in data["layers"].tolist()),
                mass=data["mass"].astype(np.float32),
                picks=data["picks"].astype(np.int64),
                tokens=data["tokens"].astype(np.int64),
            )
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"not a moegate route artifact ({type(exc).__name__}: {exc})") from exc
