"""Framework-free planning of scoring passes, shared by the transformers and mlx backends.

Also the framework-free halves of the top-k request kind: its jobs (one per window or continuation, each
with its rows of the probe ids), the batches they run in, and the assembly of per-job rows into tables.

A scored sequence is ``(tokens, n)``: the model reads ``tokens[:-1]`` and the log-probabilities of the
last ``n`` tokens are summed. Planning decides which rows go through the model together; it never
looks at a model, so it is pure and can be tested on token lists alone.

Shared prefixes: multiple-choice tasks send one context with several continuations. Sequences whose
tokens before their scored part agree (same context after the left cut) form a ``PrefixGroup``: the
prefix (the context minus its last token) is run once into a key/value cache, and each distinct suffix
(the context's last token, then the continuation minus its last token) runs on top of it. The context's
last token sits in the suffix so that every scored logit comes from the suffix pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.backends.base import TopKRequest
from harness.divergence.topk import TopKTable, rest_mass
from harness.errors import UserError

Scored = tuple[tuple[int, ...], int]
"""Tokens and how many of the last ones are scored."""

SHARE_MIN_SAVED_TOKENS = 16
"""Share a prefix only when it saves at least this many token positions. Groups ride together in
batched prefix and suffix passes, so a group adds no forward pass of its own; the floor only keeps
groups that save next to nothing (a one-token prefix) in the plain batches."""


def unique_longest_first(seqs: Sequence[Scored]) -> list[Scored]:
    """Distinct sequences, longest first (ties by tokens): batches pad little and runs are reproducible."""
    unique = list(dict.fromkeys(seqs))
    return sorted(unique, key=lambda s: (-len(s[0]), s[0]))


def rolling_windows(tokens: Sequence[int], window: int) -> list[tuple[int, ...]]:
    """Disjoint ``window``-token chunks of ``tokens``; a last chunk of one token is dropped (its only
    token has no context, and a window's first token is never scored)."""
    chunks = [tuple(tokens[start:start + window]) for start in range(0, len(tokens), window)]
    return [chunk for chunk in chunks if len(chunk) >= 2]


def batches(widths: Sequence[int], *, batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Consecutive indices of ``widths`` (longest first); a batch is bounded by rows and by padded tokens."""
    out: list[list[int]] = []
    current: list[int] = []
    for idx, width in enumerate(widths):
        top = widths[current[0]] if current else width
        if current and (len(current) >= batch_size or top * (len(current) + 1) > max_batch_tokens):
            out.append(current)
            current = []
        current.append(idx)
    if current:
        out.append(current)
    return out


@dataclass(frozen=True)
class PrefixGroup:
    """Sequences that read the same ``prefix`` before their own suffix row."""

    prefix: tuple[int, ...]
    rows: tuple[tuple[int, ...], ...]
    """Distinct suffix inputs; row ``r`` yields the logits of every member pointing at it."""
    members: tuple[tuple[int, int], ...]
    """``(sequence index, row index)``; a member's scored logits are its row's first ``n`` positions."""

    def saved_tokens(self, seqs: Sequence[Scored]) -> int:
        """Token positions saved against running every member as its own row."""
        plain = sum(len(seqs[i][0]) - 1 for i, _ in self.members)
        return plain - len(self.prefix) - len(self.rows) * max(len(r) for r in self.rows)


def prefix_groups(seqs: Sequence[Scored], *, min_saved_tokens: int = SHARE_MIN_SAVED_TOKENS) -> tuple[list[PrefixGroup], list[int]]:
    """Split distinct ``seqs`` into prefix groups worth sharing and the indices left for plain batches.

    Two sequences share when the tokens before their scored part minus one are equal (the left cut to
    ``max_length + 1`` is part of the tokens, so a cut context only groups with an identical cut).
    """
    keyed: dict[tuple[int, ...], list[int]] = {}
    for i, (tokens, n) in enumerate(seqs):
        keyed.setdefault(tokens[: len(tokens) - n - 1], []).append(i)
    groups: list[PrefixGroup] = []
    rest: list[int] = []
    for prefix, members in keyed.items():
        rows = list(dict.fromkeys(seqs[i][0][len(prefix):-1] for i in members))
        group = PrefixGroup(
            prefix=prefix,
            rows=tuple(rows),
            members=tuple((i, rows.index(seqs[i][0][len(prefix):-1])) for i in members),
        )
        if prefix and len(members) >= 2 and group.saved_tokens(seqs) >= min_saved_tokens:
            groups.append(group)
        else:
            rest.extend(members)
    groups.sort(key=lambda g: (-len(g.prefix), g.prefix))
    return groups, sorted(rest)


@dataclass(frozen=True)
class SharedPass:
    """One prefix pass over ``groups`` (right-padded), then one suffix pass per chunk of rows."""

    groups: tuple[PrefixGroup, ...]
    chunks: tuple[tuple[tuple[int, int], ...], ...]
    """Per suffix pass, ``(position in groups, row index)`` of each row."""

    @property
    def prefix_width(self) -> int:
        return max(len(g.prefix) for g in self.groups)


def shared_passes(groups: Sequence[PrefixGroup], *, batch_size: int, max_batch_tokens: int) -> list[SharedPass]:
    """Batch groups (longest prefix first) into prefix passes, and their rows into suffix passes.

    A prefix pass holds at most ``batch_size`` prefixes and ``max_batch_tokens`` padded tokens. A suffix
    pass is bounded by tokens alone: rows times (cached prefix + suffix width) at most
    ``max_batch_tokens``, as each row reads its own copy of the cache (always at least one row). Suffix
    rows are short, so a row bound would split one multiple-choice batch into several forward passes,
    each with the fixed per-pass cost the sharing is meant to save.
    """
    passes: list[SharedPass] = []
    for batch in batches([len(g.prefix) for g in groups], batch_size=batch_size, max_batch_tokens=max_batch_tokens):
        members = tuple(groups[i] for i in batch)
        width = max(len(g.prefix) for g in members)
        rows = [(pos, r) for pos, g in enumerate(members) for r in range(len(g.rows))]
        rows.sort(key=lambda pr: -len(members[pr[0]].rows[pr[1]]))
        chunks: list[tuple[tuple[int, int], ...]] = []
        current: list[tuple[int, int]] = []
        for pos, r in rows:
            top = len(members[current[0][0]].rows[current[0][1]]) if current else len(members[pos].rows[r])
            if current and (width + top) * (len(current) + 1) > max_batch_tokens:
                chunks.append(tuple(current))
                current = []
            current.append((pos, r))
        chunks.append(tuple(current))
        passes.append(SharedPass(groups=members, chunks=tuple(chunks)))
    return passes


@dataclass(frozen=True)
class TopKJob:
    """One scored sequence of a top-k request: the last ``n`` of ``tokens`` are scored."""

    tokens: tuple[int, ...]
    n: int
    k: int
    probe: np.ndarray | None = None
    """[n, m] ids whose log-probs to return at each scored position."""


@dataclass(frozen=True)
class TopKRows:
    """What a framework returns for one ``TopKJob`` (numpy, float32 log-probs)."""

    vocab: int
    target_logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    probe_logprobs: np.ndarray | None = None


def longest_first_batches(jobs: Sequence[TopKJob], *, batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of ``jobs`` in forward batches, longest first (the plain batches' order and bounds)."""
    order = sorted(range(len(jobs)), key=lambda i: (-len(jobs[i].tokens), jobs[i].tokens))
    widths = [len(jobs[i].tokens) - 1 for i in order]
    return [[order[b] for b in batch] for batch in batches(widths, batch_size=batch_size, max_batch_tokens=max_batch_tokens)]


def topk_jobs(seqs: Sequence[Scored], request: TopKRequest, vocab: int) -> list[TopKJob]:
    """One job per scored sequence of ``request``, each with its own rows of the request's probe ids."""
    if not 1 <= request.k <= vocab:
        raise UserError(f"top-k width {request.k} is outside 1..{vocab} (the vocabulary)", "ask for a smaller k")
    probe = request.probe.array if request.probe is not None else None
    positions = sum(n for _, n in seqs)
    if probe is not None and probe.shape[0] != positions:
        raise UserError(
            f"the probe ids cover {probe.shape[0]} positions, this model's tokenizer gives {positions} for the text",
            "probe with a baseline recorded with the same tokenizer and window settings",
        )
    if probe is not None and probe.size and int(probe.max()) >= vocab:
        raise UserError(
            f"the baseline's top-k holds token id {int(probe.max())}, this model's vocabulary has {vocab} tokens",
            "compare models that share a tokenizer and vocabulary (KL over different vocabularies means nothing)",
        )
    jobs, offset = [], 0
    for tokens, n in seqs:
        jobs.append(TopKJob(tokens, n, request.k, None if probe is None else probe[offset:offset + n]))
        offset += n
    return jobs


def assemble_tables(vocab: int, requests: Sequence[TopKRequest], plans: Sequence[Sequence[TopKJob]],
                    rows: Sequence[TopKRows]) -> list[TopKTable]:
    """Each request's table from its jobs and their rows (``rows`` follows the jobs of all plans in order)."""
    tables, start = [], 0
    for request, plan in zip(requests, plans, strict=True):
        probe = request.probe.array if request.probe is not None else None
        tables.append(_table(vocab, request.k, plan, rows[start:start + len(plan)], probe))
        start += len(plan)
    return tables


def _table(vocab: int, k: int, jobs: Sequence[TopKJob], rows: Sequence[TopKRows], probe: np.ndarray | None) -> TopKTable:
    """One request's table; rest masses are computed here, by one formula for every backend."""
    def cat(parts: list[np.ndarray], width: int | None, dtype: type) -> np.ndarray:
        empty = np.zeros((0,) if width is None else (0, width), dtype=dtype)
        return np.concatenate(parts) if parts else empty

    top_lp = cat([r.top_logprobs for r in rows], k, np.float32)
    table = {
        "targets": cat([np.asarray(j.tokens[-j.n:], dtype=np.int64) for j in jobs], None, np.int64),
        "target_logprobs": cat([r.target_logprobs for r in rows], None, np.float32),
        "top_ids": cat([r.top_ids for r in rows], k, np.int64),
        "top_logprobs": top_lp,
        "rest_mass": rest_mass(top_lp),
    }
    if probe is not None:
        probe_lp = cat([r.probe_logprobs for r in rows if r.probe_logprobs is not None], probe.shape[1], np.float32)
        table |= {"probe_ids": probe, "probe_logprobs": probe_lp, "probe_rest_mass": rest_mass(probe_lp)}
    return TopKTable(vocab=vocab, window_sizes=tuple(j.n for j in jobs), **table)
