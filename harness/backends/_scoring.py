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

Across questions: the contexts of a few-shot task start with the same examples (all MMLU-Pro questions
share a ~790-token 5-shot start). Groups whose prefixes start alike form a ``Family``; its ``stem`` (the
start they share) runs once into a cache, each group's prefix after the stem runs on top of it, and the
suffix rows on top of that: three levels of one cache, the middle one absent for a stemless family.
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
"""Share a prefix only when it saves at least this many token positions. Groups ride together in
batched prefix and suffix passes, so a group adds no forward pass of its own; the floor only keeps
groups that save next to nothing (a one-token prefix) in the plain batches."""

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


@dataclass(frozen=True)
class Family:
    """Prefix groups whose prefixes all start with ``stem`` (``()``: no shared start, each prefix runs whole)."""

    stem: tuple[int, ...]
    groups: tuple[PrefixGroup, ...]


def prefix_families(seqs: Sequence[Scored], *, min_saved_tokens: int = SHARE_MIN_SAVED_TOKENS,
                    min_stem_tokens: int = STEM_MIN_TOKENS) -> tuple[list[Family], list[int]]:
    """Split distinct ``seqs`` into families of prefix groups worth sharing and the indices left for plain batches.

    Two sequences share a group when the tokens before their scored part minus one are equal (the left
    cut to ``max_length + 1`` is part of the tokens, so a cut context only groups with an identical cut).
    Groups whose prefixes start alike (the few-shot examples before each question) join a family with
    that start as its stem (see ``stem_ranges``), even a group of one sequence. The other groups share
    only within themselves, and only when that saves ``min_saved_tokens``; they form the stemless family.
    """
    keyed: dict[tuple[int, ...], list[int]] = {}
    for i, (tokens, n) in enumerate(seqs):
        keyed.setdefault(tokens[: len(tokens) - n - 1], []).append(i)
    candidates: list[PrefixGroup] = []
    rest: list[int] = []
    for prefix, members in keyed.items():
        rows = list(dict.fromkeys(seqs[i][0][len(prefix):-1] for i in members))
        group = PrefixGroup(
            prefix=prefix,
            rows=tuple(rows),
            members=tuple((i, rows.index(seqs[i][0][len(prefix):-1])) for i in members),
        )
        if prefix:
            candidates.append(group)
        else:
            rest.extend(members)
    candidates.sort(key=lambda g: g.prefix)
    # a stem stops at least one token short of each prefix, so every group runs a non-empty part on top of it
    keys = [g.prefix[:-1] for g in candidates]
    families, in_family = [], set()
    for lo, hi, length in stem_ranges(keys, min_saved_tokens=min_saved_tokens, min_stem_tokens=min_stem_tokens):
        families.append(Family(stem=keys[lo][:length], groups=tuple(candidates[lo:hi])))
        in_family.update(range(lo, hi))
    alone = []
    for pos, group in enumerate(candidates):
        if pos in in_family:
            continue
        if len(group.members) >= 2 and group.saved_tokens(seqs) >= min_saved_tokens:
            alone.append(group)
        else:
            rest.extend(i for i, _ in group.members)
    if alone:
        families.append(Family(stem=(), groups=tuple(sorted(alone, key=lambda g: (-len(g.prefix), g.prefix)))))
    return families, sorted(rest)


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
class SharedPass:
    """One prefix pass over ``groups`` (right-padded, each on top of its stem), then one suffix pass per chunk of rows."""

    groups: tuple[PrefixGroup, ...]
    stem_of: tuple[int, ...]
    """Per group, the position of its stem in its ``StemPass``'s stems (0 when there are none)."""
    segments: tuple[tuple[int, ...], ...]
    """Per group, what the prefix pass runs: its prefix after its stem."""
    chunks: tuple[tuple[tuple[int, int], ...], ...]
    """Per suffix pass, ``(position in groups, row index)`` of each row."""

    @property
    def prefix_width(self) -> int:
        return max(len(s) for s in self.segments)


@dataclass(frozen=True)
class StemPass:
    """The stems of a few families in one pass into a cache (none: the prefixes start from nothing), then their
    groups' prefix passes on top of it."""

    stems: tuple[tuple[int, ...], ...]
    passes: tuple[SharedPass, ...]

    @property
    def stem_width(self) -> int:
        return max((len(s) for s in self.stems), default=0)


def shared_passes(families: Sequence[Family], *, batch_size: int, max_batch_tokens: int) -> list[StemPass]:
    """Batch stems (longest first) into stem passes, their groups into prefix passes, and rows into suffix passes.

    A stem or prefix pass holds at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens,
    counting the cache a row reads (the stems' width) as tokens: each row reads its own copy of it. A
    suffix pass is bounded by tokens alone, the same way (always at least one row). Suffix rows are
    short, so a row bound would split one multiple-choice batch into several forward passes, each with
    the fixed per-pass cost the sharing is meant to save.
    """
    limits = {"batch_size": batch_size, "max_batch_tokens": max_batch_tokens}
    out: list[StemPass] = []
    stemmed = sorted((f for f in families if f.stem), key=lambda f: (-len(f.stem), f.stem))
    for batch in batches([len(f.stem) for f in stemmed], **limits):
        chosen = [stemmed[i] for i in batch]
        members = [(pos, len(f.stem), g) for pos, f in enumerate(chosen) for g in f.groups]
        stems = tuple(f.stem for f in chosen)
        out.append(StemPass(stems, _prefix_passes(members, max(len(s) for s in stems), **limits)))
    stemless = [(0, 0, g) for f in families if not f.stem for g in f.groups]
    if stemless:
        out.append(StemPass((), _prefix_passes(stemless, 0, **limits)))
    return out


def _prefix_passes(members: list[tuple[int, int, PrefixGroup]], stem_width: int, *, batch_size: int,
                   max_batch_tokens: int) -> tuple[SharedPass, ...]:
    """``(stem position, stem length, group)`` in prefix passes (longest part first), each with its suffix passes."""
    members = sorted(members, key=lambda m: (-(len(m[2].prefix) - m[1]), m[2].prefix))
    widths = [stem_width + len(g.prefix) - cut for _, cut, g in members]
    passes: list[SharedPass] = []
    for batch in batches(widths, batch_size=batch_size, max_batch_tokens=max_batch_tokens):
        chosen = [members[i] for i in batch]
        groups = tuple(g for _, _, g in chosen)
        width = widths[batch[0]]
        rows = [(pos, r) for pos, g in enumerate(groups) for r in range(len(g.rows))]
        rows.sort(key=lambda pr: -len(groups[pr[0]].rows[pr[1]]))
        chunks: list[tuple[tuple[int, int], ...]] = []
        current: list[tuple[int, int]] = []
        for pos, r in rows:
            top = len(groups[current[0][0]].rows[current[0][1]]) if current else len(groups[pos].rows[r])
            if current and (width + top) * (len(current) + 1) > max_batch_tokens:
                chunks.append(tuple(current))
                current = []
            current.append((pos, r))
        chunks.append(tuple(current))
        passes.append(SharedPass(groups=groups, stem_of=tuple(s for s, _, _ in chosen),
                                 segments=tuple(g.prefix[cut:] for _, cut, g in chosen), chunks=tuple(chunks)))
    return tuple(passes)


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
