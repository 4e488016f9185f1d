"""Forward hooks on router (and, for EAN/REAP, experts) modules: what each MoE layer routed, per forward.

Hooks only observe: they never change a module's inputs or outputs, and nothing is patched on any
class, so the model computes exactly what it computes without moegate.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import TracebackType

import torch
from torch import nn

from harness.profiler.families import Family, MoeBlock, expert_outputs, family_for, find_moe_blocks

__all__ = ["LayerCapture", "RouteRecorder", "trace_routes"]


@dataclass
class LayerCapture:
    """What one MoE layer saw in one forward pass (all on CPU, tokens flattened over the batch).

    Attributes:
        logits: router logits [T, E] (float32).
        weights: routing weights the experts were called with [T, k] (float32).
        ids: selected expert ids [T, k] (int64).
        norms: ||expert output|| per (token, slot) [T, k] (float32), when expert norms were asked for.
    """

    logits: torch.Tensor
    weights: torch.Tensor
    ids: torch.Tensor
    norms: torch.Tensor | None = None


class RouteRecorder:
    """Context manager that records every MoE layer's routing for the forwards run inside it.

    Use ``take()`` after each forward to get one ``LayerCapture`` per MoE block (in layer order) and
    reset. With ``expert_norms=True`` a hook on each experts module also recomputes every routed
    expert's own output to get its norm (EAN/REAP); that roughly doubles the expert compute.
    """

    def __init__(self, model: nn.Module, *, expert_norms: bool = False) -> None:
        self.family: Family = family_for(model)
        self.blocks: list[MoeBlock] = find_moe_blocks(model, self.family)
        self.expert_norms = expert_norms
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._routes: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in self.blocks]
        self._norms: list[list[torch.Tensor]] = [[] for _ in self.blocks]

    def __enter__(self) -> RouteRecorder:
        for pos, block in enumerate(self.blocks):
            self._handles.append(block.router.register_forward_hook(self._router_hook(pos)))
            if self.expert_norms:
                self._handles.append(block.experts.register_forward_hook(self._experts_hook(pos), with_kwargs=True))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _router_hook(self, pos: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            logits, weights, ids = self.family.read_router(output)
            self._routes[pos].append(
                (logits.detach().float().cpu(), weights.detach().float().cpu(), ids.detach().long().cpu())
            )

        return hook

    def _experts_hook(self, pos: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            hidden, ids = [*args, *kwargs.values()][:2]
            with torch.no_grad():
                out = expert_outputs(module, hidden.detach(), ids.detach())
                self._norms[pos].append(out.float().norm(dim=-1).cpu())

        return hook

    def take(self) -> list[LayerCapture]:
        """Captures since the last ``take`` (several forwards are concatenated along tokens); resets."""
        captures: list[LayerCapture] = []
        for pos, block in enumerate(self.blocks):
            routes = self._routes[pos]
            if not routes:
                raise RuntimeError(f"MoE block {block.module_name} did not run in this forward")
            logits = torch.cat([r[0].reshape(-1, block.num_experts) for r in routes])
            weights = torch.cat([r[1].reshape(-1, block.top_k) for r in routes])
            ids = torch.cat([r[2].reshape(-1, block.top_k) for r in routes])
            norms = torch.cat([n.reshape(-1, block.top_k) for n in self._norms[pos]]) if self.expert_norms else None
            if norms is not None and norms.shape != ids.shape:
                raise RuntimeError(
                    f"{block.module_name}: expert norms {tuple(norms.shape)} do not match routes {tuple(ids.shape)}"
                )
            captures.append(LayerCapture(logits=logits, weights=weights, ids=ids, norms=norms))
        self._routes = [[] for _ in self.blocks]
        self._norms = [[] for _ in self.blocks]
        return captures


def trace_routes(
    model: nn.Module, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Route trace of one forward: ``[(layer_index, expert ids LongTensor[T,k], weights FloatTensor[T,k])]``.

    ``input_ids`` is [T] or [B, T]; tokens are flattened over the batch (row-major), as the routers see
    them. Padding positions are included; pass one sequence per call if that matters. Only the routes
    matter: the vocabulary projection runs for the last position alone (routing happens before it).
    """
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    device = next(model.parameters()).device
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    with RouteRecorder(model) as recorder, torch.inference_mode():
        model(input_ids=input_ids.to(device), attention_mask=None if attention_mask is None else attention_mask.to(device),
              **extra)
        captures = recorder.take()
    return [(block.layer_index, cap.ids, cap.weights) for block, cap in zip(recorder.blocks, captures, strict=True)]
