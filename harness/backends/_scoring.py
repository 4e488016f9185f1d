"""Framework-free planning of scoring passes, shared by the transformers and mlx backends.

Also the framework-free halves of the top-k request kind: its jobs (one per window or continuation, each
with its rows of the probe ids), the batches they run in, and the assembly of per-job rows into tables.

A scored sequence is ``(tokens, n)``: the model reads ``tokens[:-1]`` and the log-probabilities of the
last ``n`` tokens are summed. Planning decides which rows go through the model together; it never
looks at a model, so it is pure and can be tested on token lists alone.

Shared tokens: multiple-choice tasks send one context with several continuations, few-shot tasks send
contexts that start with the same examples (all MMLU-Pro questions share a ~790-token 5-shot start).
The sequences' input tokens go into a prefix trie, packed depth-first into rows (``PackedRow``): a
position attends to its ancestors only and sits at its depth, so each scored logit is the one its
sequence alone would get, a shared token runs once per row, and a row has no padding inside. A start
that many contexts share (``stem_ranges``) runs once into a key/value cache beneath the rows that read
it (``StemRows``), so it is not repeated in each row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from harness.backends.base import TopKRequest
from harness.divergence.topk import TopKTable, rest_mass
from harness.errors import UserError

Scored = tuple[tuple[int, ...], int]
"""Tokens and how many of the last ones are scored."""

SHARE_MIN_SAVED_TOKENS = 16
"""A stem must save at least this many token positions (over its family's rows)."""

PACK_WIDTH = 256
"""Positions per packed row: attention over a row costs its width per position, so rows stay short;
a longer sequence gets a row of its own."""

STEM_MIN_TOKENS = 64
"""Share a start across contexts (a few-shot prompt) only when it is at least this long: a stem adds a
forward pass and a cache copy per row, which a start of a few tokens does not repay."""


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
class PackedRow:
    """The input tokens of several sequences as one prefix trie, laid out depth-first in one row.

    Each position is a trie node: it attends to its ancestors only (``tree_mask``) at its depth
    (``depths``), so it computes what it would in each of its sequences alone, and a token that
    sequences share runs once. No padding inside a row.
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    """Per position, its parent's position in the row (-1: it comes right after the stem, or first)."""
    scored: tuple[tuple[int, tuple[int, ...]], ...]
    """Per member, its sequence index and the positions whose logits score its last ``n`` tokens."""


@dataclass(frozen=True)
class StemRows:
    """Rows that all read ``stem`` (``()``: none) from one key/value cache beneath their own tokens."""

    stem: tuple[int, ...]
    rows: tuple[PackedRow, ...]


def packed_plan(seqs: Sequence[Scored], *, width: int = PACK_WIDTH, min_saved_tokens: int = SHARE_MIN_SAVED_TOKENS,
                min_stem_tokens: int = STEM_MIN_TOKENS) -> list[StemRows]:
    """Split distinct ``seqs`` into families by the start their contexts share (a few-shot prompt, see
    ``stem_ranges``) and pack each family's tokens after its stem into rows of about ``width``.

    A stem stops at or before each member's context minus its last token, so every scored logit comes
    from a row. Sequences without a stem share what they share inside their rows.
    """
    keyed: dict[tuple[int, ...], list[int]] = {}
    for i, (tokens, n) in enumerate(seqs):
        keyed.setdefault(tokens[: len(tokens) - n - 1], []).append(i)
    keys = sorted(keyed)
    out: list[StemRows] = []
    in_stem: set[int] = set()
    for lo, hi, length in stem_ranges(keys, min_saved_tokens=min_saved_tokens, min_stem_tokens=min_stem_tokens):
        members = [i for key in keys[lo:hi] for i in keyed[key]]
        out.append(StemRows(keys[lo][:length], tuple(pack_rows(seqs, members, skip=length, width=width))))
        in_stem.update(members)
    rest = [i for i in range(len(seqs)) if i not in in_stem]
    if rest:
        out.append(StemRows((), tuple(pack_rows(seqs, rest, skip=0, width=width))))
    return out


def pack_rows(seqs: Sequence[Scored], members: Sequence[int], *, skip: int, width: int) -> list[PackedRow]:
    """Members' input tokens after their first ``skip``, in lexicographic order, greedily into rows of at
    most ``width`` positions, or of the row's first sequence plus ``width // 2`` when that is longer (a
    long context's continuations ride in its row).

    In sorted order a sequence shares the most with the one before it, so its path is the previous
    path up to their common length, then its own new positions.
    """
    rows: list[PackedRow] = []
    tokens: list[int] = []
    parents: list[int] = []
    scored: list[tuple[int, tuple[int, ...]]] = []
    path: list[int] = []
    previous: tuple[int, ...] = ()
    capacity = width
    for i in sorted(members, key=lambda i: seqs[i][0][skip:-1]):
        seq, n = seqs[i]
        inputs = seq[skip:-1]
        if not 1 <= n <= len(inputs):
            raise ValueError(f"sequence {i} scores {n} tokens but reads {len(inputs)} after the stem")
        shared = common_length(previous, inputs) if tokens else 0
        if tokens and len(tokens) + len(inputs) - shared > max(width, capacity):
            rows.append(PackedRow(tuple(tokens), tuple(parents), tuple(scored)))
            tokens, parents, scored, shared = [], [], [], 0
        del path[shared:]
        for token in inputs[shared:]:
            parents.append(path[-1] if path else -1)
            path.append(len(tokens))
            tokens.append(token)
        if len(scored) == 0:
            capacity = len(inputs) + width // 2
        scored.append((i, tuple(path[len(path) - n:])))
        previous = inputs
    if tokens:
        rows.append(PackedRow(tuple(tokens), tuple(parents), tuple(scored)))
    return rows


def tree_mask(parents: Sequence[int]) -> np.ndarray:
    """[positions, positions] booleans: position ``i`` may read position ``j`` (``j`` is ``i`` or its ancestor)."""
    mask = np.zeros((len(parents), len(parents)), dtype=bool)
    for i, parent in enumerate(parents):
        if parent >= 0:
            mask[i] = mask[parent]
        mask[i, i] = True
    return mask


def depths(parents: Sequence[int]) -> np.ndarray:
    """Per position, its depth in the trie: its position id in each of its sequences (after the stem)."""
    out = np.zeros(len(parents), dtype=np.int64)
    for i, parent in enumerate(parents):
        out[i] = out[parent] + 1 if parent >= 0 else 0
    return out


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def stem_ranges(keys: Sequence[tuple[int, ...]], *, min_saved_tokens: int, min_stem_tokens: int) -> list[tuple[int, int, int]]:
    """Disjoint ``(lo, hi, length)``: ``keys[lo:hi]`` (sorted) share their first ``length`` tokens, run once.

    A walk over the trie of the sorted keys: below a branch point at depth ``m`` each subtree either
    chooses its own stems, or joins a run of adjacent subtrees that share those ``m`` tokens, a run of
    ``k`` keys saving (k - 1) x m; a linear pass picks the best mix. This is the most one level of stems
    can save when stems cover whole subtrees (a stem over part of a subtree can save a little more,
    rarely). A stem needs at least ``min_stem_tokens`` tokens (a shorter one, such as ARC's "Question:",
    saves less than the pass it adds; and at least one) and must save ``min_saved_tokens``.
    """
    lcp = [common_length(keys[j], keys[j + 1]) for j in range(len(keys) - 1)]

    def best(lo: int, hi: int, depth: int) -> tuple[int, list[tuple[int, int, int]]]:
        if hi - lo < 2:
            return 0, []
        m = min(lcp[lo:hi - 1])
        bounds = [lo, *(j + 1 for j in range(lo, hi - 1) if lcp[j] == m), hi]
        # a chain of nested keys this deep stops refining (a plan choice: scores do not depend on it)
        kids = [best(a, b, depth + 1) if depth < 64 else (0, []) for a, b in pairwise(bounds)]
        # done[j]: the most the first j subtrees save, and how: (value, ranges)
        done: list[tuple[int, list[tuple[int, int, int]]]] = [(0, [])]
        admitted, top = 0, None  # runs may start at subtrees 0..admitted-1; top: best (value - keys before * m, start)
        for j in range(1, len(bounds)):
            value, ranges = done[j - 1][0] + kids[j - 1][0], done[j - 1][1] + kids[j - 1][1]
            while m >= max(1, min_stem_tokens) and admitted < j and \
                    (bounds[j] - bounds[admitted] - 1) * m >= max(min_saved_tokens, 1):
                score = done[admitted][0] - (bounds[admitted] - lo) * m
                top = (score, admitted) if top is None or score > top[0] else top
                admitted += 1
            if top is not None and top[0] + (bounds[j] - lo - 1) * m > value:
                value = top[0] + (bounds[j] - lo - 1) * m
                ranges = done[top[1]][1] + [(bounds[top[1]], bounds[j], m)]
            done.append((value, ranges))
        return done[-1]

    return best(0, len(keys), 0)[1]


@dataclass(frozen=True)
class PackedPass:
    """A few stems in one pass into a cache (none: the rows start from nothing), then their rows in
    chunks, each chunk one forward pass on top of its rows' stems."""

    stems: tuple[tuple[int, ...], ...]
    chunks: tuple[tuple[tuple[int, PackedRow], ...], ...]
    """Per forward pass, ``(position of the row's stem in stems, row)``; 0 when there are no stems."""

    @property
    def stem_width(self) -> int:
        return max((len(s) for s in self.stems), default=0)


def packed_passes(plan: Sequence[StemRows], *, batch_size: int, max_batch_tokens: int) -> list[PackedPass]:
    """Batch stems (longest first) into stem passes and their rows (longest first) into chunks.

    A stem pass or a chunk holds at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens,
    counting the cache a row reads (the stems' width) as tokens: each row reads its own copy of it.
    """
    limits = {"batch_size": batch_size, "max_batch_tokens": max_batch_tokens}
    out: list[PackedPass] = []
    stemmed = sorted((f for f in plan if f.stem), key=lambda f: (-len(f.stem), f.stem))
    for batch in batches([len(f.stem) for f in stemmed], **limits):
        chosen = [stemmed[i] for i in batch]
        stems = tuple(f.stem for f in chosen)
        out.append(PackedPass(stems, _chunks([(pos, r) for pos, f in enumerate(chosen) for r in f.rows],
                                             max(len(s) for s in stems), **limits)))
    stemless = [(0, r) for f in plan if not f.stem for r in f.rows]
    if stemless:
        out.append(PackedPass((), _chunks(stemless, 0, **limits)))
    return out


def _chunks(rows: list[tuple[int, PackedRow]], stem_width: int, *, batch_size: int,
            max_batch_tokens: int) -> tuple[tuple[tuple[int, PackedRow], ...], ...]:
    rows = sorted(rows, key=lambda r: -len(r[1].tokens))
    widths = [stem_width + len(r.tokens) for _, r in rows]
    return tuple(tuple(rows[i] for i in b) for b in batches(widths, batch_size=batch_size, max_batch_tokens=max_batch_tokens))


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
