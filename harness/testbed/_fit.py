"""Turn one dense SwiGLU MLP into a Qwen2-MoE block (shared expert + routed experts + router).

Pure tensor functions, no model objects: the builder feeds them calibration activations. The split is
chosen so that quality survives sparse routing: the neurons that carry the most output go to the
always-on shared expert, the rest are clustered by co-activation into equal-size experts (so an
expert's neurons fire together and a router can predict them), a linear router is fitted to predict
each expert's output norm, and finally every down projection is refitted by ridge regression against
the dense MLP output *given* the routing, which absorbs the routing weights and the dropped experts'
average contribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class MoeLayerWeights:
    """Weights of one Qwen2-MoE block in the (out, in) layout of ``nn.Linear``."""

    router: torch.Tensor  # [E, H]
    experts_gate: torch.Tensor  # [E, I, H]
    experts_up: torch.Tensor  # [E, I, H]
    experts_down: torch.Tensor  # [E, H, I]
    shared_gate: torch.Tensor  # [S, H]
    shared_up: torch.Tensor  # [S, H]
    shared_down: torch.Tensor  # [H, S]
    shared_expert_gate: torch.Tensor  # [1, H]


def dense_intermediate(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU intermediate activations ``silu(x G^T) * (x U^T)``, [T, I]."""
    return torch.nn.functional.silu(x @ gate.T) * (x @ up.T)


def split_neurons(
    act: torch.Tensor, down: torch.Tensor, n_shared: int, n_experts: int, *, seed: int, iters: int = 8
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Pick the shared neurons (largest mean output contribution) and cluster the rest into experts.

    Returns the shared neuron indices and one index tensor per expert, all sorted, experts of equal size.
    """
    contrib = act.abs() * down.norm(dim=0)  # [T, I]: how much each neuron writes per token
    order = torch.argsort(contrib.mean(dim=0), descending=True, stable=True)
    shared = torch.sort(order[:n_shared]).values
    routed = torch.sort(order[n_shared:]).values
    size = routed.numel() // n_experts
    if size * n_experts != routed.numel():
        raise ValueError(f"{routed.numel()} routed neurons do not split into {n_experts} equal experts")
    feats = contrib[:, routed].T.double()  # [R, T] activation pattern of each routed neuron
    feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed)
    centroids = feats[torch.randperm(feats.shape[0], generator=gen)[:n_experts]]
    labels = np.zeros(feats.shape[0], dtype=np.int64)
    for _ in range(iters):
        sim = (feats @ centroids.T).numpy()  # [R, E]
        cost = -np.repeat(sim, size, axis=1)  # every expert offers `size` equal slots
        rows, cols = linear_sum_assignment(cost)
        labels[rows] = cols // size
        lab = torch.from_numpy(labels)
        centroids = torch.stack([feats[lab == e].mean(dim=0) for e in range(n_experts)])
        centroids = centroids / centroids.norm(dim=1, keepdim=True).clamp_min(1e-12)
    experts = [torch.sort(routed[torch.from_numpy(labels == e)]).values for e in range(n_experts)]
    return shared, experts


def expert_outputs_norm(act: torch.Tensor, down: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
    """||expert_e(x)|| for every token and expert, [T, E]."""
    return torch.stack([(act[:, idx] @ down[:, idx].T).norm(dim=1) for idx in experts], dim=1)


def fit_router(x: torch.Tensor, norms: torch.Tensor, *, logit_std: float, ridge: float, skew: float = 0.0) -> torch.Tensor:
    """Linear router [E, H] whose logits track each expert's log output norm (centred per token).

    ``skew`` amplifies each expert's average log norm in the target, so generally busy experts win more
    often: usage becomes uneven, as in trained MoE models, and usage-based pruning has something to find.
    """
    target = torch.log(norms.double() + 1e-6)
    target = target - target.mean(dim=1, keepdim=True)
    target = target + skew * (target.mean(dim=0, keepdim=True) / target.mean(dim=0).std().clamp_min(1e-12))
    xd = x.double()
    gram = xd.T @ xd
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    weight = torch.linalg.solve(gram, xd.T @ target).T  # [E, H]
    logits = xd @ weight.T
    spread = (logits - logits.mean(dim=1, keepdim=True)).std(dim=1).mean()
    return (weight * (logit_std / spread.clamp_min(1e-12))).float()


def route(x: torch.Tensor, router: torch.Tensor, top_k: int) -> torch.Tensor:
    """Dense [T, E] routing weights exactly as Qwen2-MoE computes them (softmax, top-k, no renorm)."""
    probs = torch.softmax(x @ router.T, dim=-1, dtype=torch.float32)
    top_value, top_index = torch.topk(probs, top_k, dim=-1)
    return torch.zeros_like(probs).scatter(1, top_index, top_value)


def refit_down(
    act: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    down: torch.Tensor,
    shared: torch.Tensor,
    experts: list[torch.Tensor],
    *,
    ridge: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge-refit the shared and per-expert down projections given the routing.

    Features are the shared activations and, per expert, its activations times its routing weight
    (zero where not routed). The ridge pulls toward the dense weights rescaled by each expert's mean
    routing weight, so rarely routed experts stay close to what they were.
    """
    parts = [act[:, shared]] + [act[:, idx] * weights[:, e : e + 1] for e, idx in enumerate(experts)]
    phi = torch.cat(parts, dim=1)  # [T, F]
    prior_parts = [down[:, shared]]
    for e, idx in enumerate(experts):
        routed_w = weights[:, e][weights[:, e] > 0]
        scale = 1.0 / routed_w.mean().item() if routed_w.numel() else 1.0
        prior_parts.append(down[:, idx] * scale)
    prior = torch.cat(prior_parts, dim=1).double()  # [H, F]
    gram = (phi.T @ phi).double()
    lam = ridge * gram.diagonal().mean()
    rhs = (phi.T @ (target - phi @ prior.float().T)).double()
    delta = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), rhs)  # [F, H]
    new = (prior + delta.T).float()
    n_shared = shared.numel()
    shared_down = new[:, :n_shared]
    size = experts[0].numel()
    expert_down = torch.stack([new[:, n_shared + e * size : n_shared + (e + 1) * size] for e in range(len(experts))])
    return shared_down, expert_down


def fit_layer(
    x: torch.Tensor,
    gate: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
    *,
    n_shared: int,
    n_experts: int,
    top_k: int,
    seed: int,
    logit_std: float = 1.0,
    ridge: float = 1e-3,
    skew: float = 0.0,
) -> MoeLayerWeights:
    """Fit one MoE block to a dense SwiGLU MLP on calibration inputs ``x`` [T, H]."""
    act = dense_intermediate(x, gate, up)
    target = act @ down.T
    shared, experts = split_neurons(act, down, n_shared, n_experts, seed=seed)
    router = fit_router(x, expert_outputs_norm(act, down, experts), logit_std=logit_std, ridge=ridge, skew=skew)
    weights = route(x, router, top_k)
    shared_down, expert_down = refit_down(act, target, weights, down, shared, experts, ridge=ridge)
    hidden = x.shape[1]
    return MoeLayerWeights(
        router=router.contiguous(),
        experts_gate=torch.stack([gate[idx] for idx in experts]).contiguous(),
        experts_up=torch.stack([up[idx] for idx in experts]).contiguous(),
        experts_down=expert_down.contiguous(),
        shared_gate=gate[shared].contiguous(),
        shared_up=up[shared].contiguous(),
        # shared_expert_gate is a bias-free Linear: weight 0 gives sigmoid(0) = 0.5 for every token,
        # so doubling the shared down projection makes the shared path exact.
        shared_down=(2.0 * shared_down).contiguous(),
        shared_expert_gate=torch.zeros(1, hidden),
    )


def moe_forward(x: torch.Tensor, w: MoeLayerWeights, top_k: int) -> torch.Tensor:
    """Reference Qwen2-MoE block forward (for checks): shared path + weighted routed experts."""
    shared = (torch.nn.functional.silu(x @ w.shared_gate.T) * (x @ w.shared_up.T)) @ w.shared_down.T
    shared = torch.sigmoid(x @ w.shared_expert_gate.T) * shared
    weights = route(x, w.router, top_k)
    out = shared
    for e in range(w.router.shape[0]):
        h = torch.nn.functional.silu(x @ w.experts_gate[e].T) * (x @ w.experts_up[e].T)
        out = out + weights[:, e : e + 1] * (h @ w.experts_down[e].T)
    return out
