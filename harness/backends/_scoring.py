"""Framework-free planning of scoring passes, shared by the transformers and mlx backends.

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
