"""Teacher-forced logit divergence between a baseline and a candidate model.

Comparing two free generations says little after their first different token: every later token is
conditioned on a different prefix. Instead, score the *baseline's own* greedy continuation under both
models, position by position, and compare their next-token distributions on the same prefix: mean
KL(baseline || candidate), Jensen-Shannon divergence (symmetric, bounded by ln 2) and how often both
models' top-1 tokens agree. Merged or pruned experts show up here as drift long before accuracy moves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["DivergenceScore", "teacher_forced_divergence", "token_divergence"]

LN2 = math.log(2.0)


@dataclass(frozen=True)
class DivergenceScore:
    """Per-item divergence, averaged over the scored tokens."""

    mean_kl: float
    """Mean KL(baseline || candidate) in nats per token (0 when identical)."""
    mean_jsd: float
    """Mean Jensen-Shannon divergence in nats per token, in [0, ln 2]."""
    top1_agreement: float
    """Share of positions where both models' most likely next token is the same."""
    tokens: int
    """Positions scored (0: nothing to compare; the means are then 0 and agreement 1)."""

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _as_logprobs(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    if t.ndim != 2:
        raise ValueError(f"{name} must be [tokens, vocab], got shape {tuple(t.shape)}")
    # normalizing makes logits acceptable too and costs nothing for log-probabilities
    return torch.log_softmax(t.to(torch.float64), dim=-1)


def _kl_rows(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities; terms where p = 0 contribute 0."""
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
    return terms.sum(dim=-1).clamp_min(0.0)


def token_divergence(
    baseline_logprobs: np.ndarray | torch.Tensor, candidate_logprobs: np.ndarray | torch.Tensor
) -> DivergenceScore:
    """Mean KL(baseline || candidate), mean JSD and top-1 agreement over aligned positions.

    Args:
        baseline_logprobs: ``[T, V]`` next-token log-probabilities (or logits) of the baseline.
        candidate_logprobs: ``[T, V]`` of the candidate on the same prefixes.
    """
    lp = _as_logprobs(baseline_logprobs, "baseline_logprobs")
    lq = _as_logprobs(candidate_logprobs, "candidate_logprobs")
    if lp.shape != lq.shape:
        raise ValueError(
            f"baseline_logprobs {tuple(lp.shape)} and candidate_logprobs {tuple(lq.shape)} differ in shape"
        )
    n = lp.shape[0]
    if n == 0:
        return DivergenceScore(0.0, 0.0, 1.0, 0)
    kl = _kl_rows(lp, lq)
    lm = torch.logaddexp(lp, lq) - LN2  # log of the mixture (p + q) / 2
    jsd = (0.5 * _kl_rows(lp, lm) + 0.5 * _kl_rows(lq, lm)).clamp(0.0, LN2)
    agree = (lp.argmax(dim=-1) == lq.argmax(dim=-1)).to(torch.float64)
    return DivergenceScore(float(kl.mean()), float(jsd.mean()), float(agree.mean()), int(n))


def _prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"]) if prompt else []
    if not ids and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id]
    return ids


def _next_token_logprobs(model: Any, ids: list[int], start: int, vocab: int) -> torch.Tensor:
    """Log-probabilities ``[len(ids) - start, vocab]`` of tokens ``ids[start:]`` given what precedes them."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0]
    # position i predicts token i + 1; keep the tokenizer's vocabulary (models may pad their embeddings)
    return torch.log_softmax(logits[start - 1 : len(ids) - 1, :vocab].to(torch.float64).cpu(), dim=-1)


def teacher_forced_divergence(
    baseline_model: Any,
    candidate_model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    continuations: Sequence[str | Sequence[int]],
    *,
    chat: bool = False,
) -> list[DivergenceScore]:
    """Score each baseline continuation under both models; one ``DivergenceScore`` per prompt.

    Args:
        baseline_model, candidate_model: transformers causal LMs sharing ``tokenizer`` (e.g.
            ``open_backend(path).model``).
        prompts: the prompts the baseline answered.
        continuations: the baseline's greedy outputs, as text or as the token ids it generated.
        chat: wrap each prompt in the tokenizer's chat template (as the generation did).
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    vocab = len(tokenizer)
    scores = []
    for prompt, cont in zip(prompts, continuations, strict=True):
        ctx = _prompt_ids(tokenizer, prompt, chat)
        cont_ids = (
            list(tokenizer(cont, add_special_tokens=False)["input_ids"])
            if isinstance(cont, str)
            else list(cont)
        )
        if not ctx:  # no prompt and no BOS: the first continuation token has no context to score it
            ctx, cont_ids = cont_ids[:1], cont_ids[1:]
        if not cont_ids:
            scores.append(DivergenceScore(0.0, 0.0, 1.0, 0))
            continue
        ids = ctx + cont_ids
        base = _next_token_logprobs(baseline_model, ids, len(ctx), vocab)
        cand = _next_token_logprobs(candidate_model, ids, len(ctx), vocab)
        scores.append(token_divergence(base, cand))
    return scores
