"""Shared-prefix scoring: the plan (pure, hypothesis) and the transformers backend against plain batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.backends import open_backend
from harness.backends._scoring import (
    batches,
    common_length,
    depths,
    packed_passes,
    packed_plan,
    stem_ranges,
    tree_mask,
    unique_longest_first,
)
from harness.backends.base import LoglikelihoodRequest
from harness.backends.transformers import TransformersBackend
from tests.tiny_models import build_tiny_moe

# ------------------------------------------------------------------ the plan, on token lists alone

tokens = st.lists(st.integers(0, 3), min_size=0, max_size=5).map(tuple)
scored = st.builds(
    lambda ctx, cont: (ctx + cont, len(cont)),
    st.sampled_from([(), (7,), (7, 8, 9), (7, 8, 9, 9, 9, 9), (5, 8, 9, 9, 9, 9)]).flatmap(
        lambda base: tokens.map(lambda extra: base + extra)),
    st.lists(st.integers(0, 3), min_size=1, max_size=4).map(tuple),
).filter(lambda s: s[1] < len(s[0]))  # a scored token always has a context


@settings(max_examples=200, deadline=None)
@given(st.lists(scored, max_size=12), st.integers(0, 8), st.integers(0, 4), st.integers(1, 12),
       st.integers(1, 4), st.integers(1, 40))
def test_packed_rows_rebuild_every_sequence_from_its_ancestors(
    seqs: list, min_saved: int, min_stem: int, width: int, batch_size: int, max_batch_tokens: int
) -> None:
    unique = unique_longest_first(seqs)
    assert sorted(unique) == sorted(set(seqs))
    plan = packed_plan(unique, width=width, min_saved_tokens=min_saved, min_stem_tokens=min_stem)
    members = [i for family in plan for row in family.rows for i, _ in row.scored]
    assert sorted(members) == list(range(len(unique)))
    for family in plan:
        if family.stem:
            assert len(family.stem) >= max(1, min_stem)
        for row in family.rows:
            first = len(unique[row.scored[0][0]][0]) - 1 - len(family.stem)
            assert len(row.tokens) <= max(width, first + width // 2)
            mask, depth = tree_mask(row.parents), depths(row.parents)
            for i, positions in row.scored:
                seq, n = unique[i]
                chain = [int(j) for j in np.flatnonzero(mask[positions[-1]])]  # the last scored position's ancestors
                # the stem, then the chain's tokens, then the last token is the sequence; the scored positions
                # are the chain's last n, each at its depth
                assert family.stem + tuple(row.tokens[j] for j in chain) + seq[-1:] == seq
                assert tuple(chain[-n:]) == positions and [int(depth[j]) for j in chain] == list(range(len(chain)))
    passes = packed_passes(plan, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    rows = [row for p in passes for chunk in p.chunks for _, row in chunk]
    assert sorted(map(id, rows)) == sorted(id(row) for family in plan for row in family.rows)
    for p in passes:
        assert len(p.stems) <= batch_size and (len(p.stems) <= 1 or len(p.stems) * p.stem_width <= max_batch_tokens)
        for chunk in p.chunks:
            assert all((p.stems[s] if p.stems else ()) == f.stem for s, row in chunk for f in plan if row in f.rows)
            widest = p.stem_width + max(len(row.tokens) for _, row in chunk)
            assert len(chunk) <= batch_size and (len(chunk) == 1 or len(chunk) * widest <= max_batch_tokens)


def test_a_shared_context_runs_once_in_a_row() -> None:
    context = tuple(range(10, 30))
    seqs = [(context + choice, len(choice)) for choice in [(1,), (2,), (3, 4, 5), (3, 4, 6)]]
    (family,) = packed_plan(unique_longest_first(seqs), width=64)
    (row,) = family.rows
    assert not family.stem and len(row.tokens) == len(context) + 2  # the context once, then 3, 4 once


def _best_partition(keys: list[tuple[int, ...]], min_saved: int, min_stem: int) -> int:
    """The most positions any split of the sorted keys into runs of whole subtrees can save, by brute force.

    A run of k keys sharing L tokens saves (k - 1) x L; it covers whole subtrees of the trie when the
    keys just outside it share at most L tokens with its edge keys."""
    lcp = [common_length(keys[j], keys[j + 1]) for j in range(len(keys) - 1)]
    best = [0] * (len(keys) + 1)
    for hi in range(1, len(keys) + 1):
        best[hi] = best[hi - 1]
        for lo in range(hi - 1):
            length = min(lcp[lo:hi - 1])
            whole = (lo == 0 or lcp[lo - 1] <= length) and (hi == len(keys) or lcp[hi - 1] <= length)
            saved = (hi - lo - 1) * length
            if whole and length >= max(1, min_stem) and saved >= max(1, min_saved):
                best[hi] = max(best[hi], best[lo] + saved)
    return best[-1]


starts = st.lists(st.integers(0, 2), max_size=9).map(tuple)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([(), (1,) * 6, (1,) * 6 + (2,) * 3, (2,) * 8]).flatmap(
    lambda base: starts.map(lambda extra: base + extra)), max_size=12), st.integers(0, 12), st.integers(0, 6))
def test_stems_save_the_most_whole_subtree_runs_can(keys: list, min_saved: int, min_stem: int) -> None:
    keys = sorted(set(keys))
    ranges = stem_ranges(keys, min_saved_tokens=min_saved, min_stem_tokens=min_stem)
    covered = [i for lo, hi, _ in ranges for i in range(lo, hi)]
    assert len(covered) == len(set(covered))
    for lo, hi, length in ranges:
        assert hi - lo >= 2 and all(k[:length] == keys[lo][:length] and len(k) >= length for k in keys[lo:hi])
    assert sum((hi - lo - 1) * length for lo, hi, length in ranges) == _best_partition(keys, min_saved, min_stem)


@given(st.lists(st.integers(1, 30), max_size=20).map(lambda w: sorted(w, reverse=True)), st.integers(1, 5), st.integers(1, 60))
def test_batches_keep_order_and_bounds(widths: list[int], batch_size: int, max_batch_tokens: int) -> None:
    out = batches(widths, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    assert [i for b in out for i in b] == list(range(len(widths)))
    for b in out:
        assert len(b) <= batch_size and (len(b) == 1 or widths[b[0]] * len(b) <= max_batch_tokens)


# ------------------------------------------------------------------ the backend: shared equals plain

CONTEXT = "Question: Which planet is the largest in the solar system? Think before you answer.\nAnswer:"
REQUESTS = [
    LoglikelihoodRequest(CONTEXT, " Jupiter"),
    LoglikelihoodRequest(CONTEXT, " Saturn, the one with the rings"),
    LoglikelihoodRequest(CONTEXT, " A"),
    LoglikelihoodRequest(CONTEXT, " B"),
    LoglikelihoodRequest(CONTEXT + " ", "Mars"),  # trailing space: the same context tokens
    LoglikelihoodRequest(CONTEXT, " Jupiter"),  # duplicate
    LoglikelihoodRequest("A single continuation for this context, so nothing to share.", " ok"),
    LoglikelihoodRequest("A long context " * 40, " end"),  # longer than max_length: cut from the left
    LoglikelihoodRequest("A long context " * 40, " fin"),
    LoglikelihoodRequest("A long context " * 40, " the very end of it all"),
    LoglikelihoodRequest("", "Hello"),  # empty context: the prefix token alone, nothing to share
    LoglikelihoodRequest("", "World wide"),
    LoglikelihoodRequest("Short one", " x"),
    LoglikelihoodRequest("Short one", " yes"),
]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-shared")
    return {family: build_tiny_moe(family, root / family, seed=1) for family in ("mixtral", "qwen3_moe", "olmoe")}


def _forward_tokens(backend: TransformersBackend) -> list[int]:
    """Counts the input tokens of every forward pass of ``backend.model``."""
    counted: list[int] = []
    backend.model.register_forward_pre_hook(
        lambda _m, args, kwargs: counted.append((args[0] if args else kwargs["input_ids"]).numel()), with_kwargs=True)
    return counted


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "olmoe"])
def test_shared_prefix_scores_equal_plain_rows(tiny_dirs: dict[str, Path], family: str) -> None:
    for batch_size in (1, 8):
        plain = open_backend(str(tiny_dirs[family]), device="cpu", max_length=40, batch_size=batch_size, share_prefixes=False)
        shared = open_backend(str(tiny_dirs[family]), device="cpu", max_length=40, batch_size=batch_size)
        assert isinstance(shared, TransformersBackend) and isinstance(plain, TransformersBackend)
        shared.share_min_saved_tokens = shared.share_min_stem_tokens = 0  # share every group and start, even small ones
        plain_tokens, shared_tokens = _forward_tokens(plain), _forward_tokens(shared)
        reference, ours = plain.loglikelihood(REQUESTS), shared.loglikelihood(REQUESTS)
        for mine, ref in zip(ours, reference, strict=True):
            assert mine.logprob == pytest.approx(ref.logprob, abs=1e-4)
            assert mine.is_greedy == ref.is_greedy
        assert ours[0] == ours[5]
        assert sum(shared_tokens) < sum(plain_tokens)  # it did share


word = st.integers(3, 400)
question = st.tuples(
    st.lists(word, min_size=1, max_size=12).map(tuple),  # the question after the shared few-shot start
    st.lists(st.lists(word, min_size=1, max_size=3).map(tuple), min_size=1, max_size=4),  # its choices
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(word, min_size=6, max_size=30).map(tuple), min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(0, 2), question), min_size=1, max_size=8),
       st.integers(1, 4), st.sampled_from([65, 100, 300]))
def test_stems_across_questions_score_as_plain_rows(
    tiny_dirs: dict[str, Path], shots: list, questions: list, batch_size: int, max_batch_tokens: int
) -> None:
    """Few-shot starts shared across questions, each question's own text and choices, one greedy choice each."""
    import torch

    plain = open_backend(str(tiny_dirs["qwen3_moe"]), device="cpu", max_length=64, batch_size=batch_size, share_prefixes=False)
    shared = open_backend(str(tiny_dirs["qwen3_moe"]), device="cpu", max_length=64, batch_size=batch_size)
    assert isinstance(shared, TransformersBackend) and isinstance(plain, TransformersBackend)
    shared.max_batch_tokens = plain.max_batch_tokens = max_batch_tokens
    shared.share_min_saved_tokens, shared.share_min_stem_tokens = 0, 4
    seqs = []
    for shot, (text, choices) in questions:
        context = (1, *shots[shot % len(shots)], *text)
        with torch.inference_mode():
            greedy = int(plain.model(torch.tensor([context])).logits[0, -1].argmax())
        seqs += [(context + c, len(c)) for c in [*choices, (greedy,)]]
    reference = plain._score(seqs)
    counted = _forward_tokens(shared)
    ours = shared._score(seqs)
    for mine, ref in zip(ours, reference, strict=True):
        assert mine[0] == pytest.approx(ref[0], abs=1e-4) and mine[1] == ref[1]
    assert any(flag for _, flag in reference)  # the flags are not all False by construction
    prefixes = {(shots[s % len(shots)], text[:-1]) for s, (text, _) in questions}  # a context minus its last token
    if len({shot for shot, _ in prefixes}) < len(prefixes):  # a start two questions share runs once
        plan = packed_plan(unique_longest_first(seqs), width=shared.pack_width, min_saved_tokens=0, min_stem_tokens=4)
        assert any(f.stem for f in plan) and sum(counted) < sum(len(t) - 1 for t, _ in set(seqs))


def test_default_threshold_shares_a_long_context_and_agrees_with_lm_eval(tiny_dirs: dict[str, Path]) -> None:
    from tests.test_backend_transformers import _hflm_loglikelihood

    backend = open_backend(str(tiny_dirs["mixtral"]), device="cpu", max_length=256, batch_size=4)
    assert isinstance(backend, TransformersBackend)
    context = "Background: " + "experts route tokens and a gate checks them. " * 12 + "\nQuestion: what routes tokens?\nAnswer:"
    requests = [LoglikelihoodRequest(context, c) for c in (" experts", " the gate", " nothing at all, really", " A")]
    counted = _forward_tokens(backend)
    ours = backend.loglikelihood(requests)
    assert len(counted) == 1  # the context once and the four continuations: one packed row
    for mine, (lp, greedy) in zip(ours, _hflm_loglikelihood(backend, requests, batch_size=2), strict=True):
        assert mine.logprob == pytest.approx(lp, abs=1e-4) and mine.is_greedy == greedy


def test_sliding_window_models_score_plain_rows(tmp_path: Path) -> None:
    from transformers import AutoConfig

    path = build_tiny_moe("mixtral", tmp_path / "mixtral")
    config = AutoConfig.from_pretrained(path)
    config.sliding_window = 16
    config.save_pretrained(path)
    backend = open_backend(str(path), device="cpu", max_length=64)
    assert isinstance(backend, TransformersBackend)
    backend.share_min_saved_tokens = 0
    counted = _forward_tokens(backend)
    ours = backend.loglikelihood(REQUESTS[:4])
    assert len(counted) == 1  # four rows, one plain batch: a sliding-window cache is never shared
    plain = open_backend(str(path), device="cpu", max_length=64, share_prefixes=False).loglikelihood(REQUESTS[:4])
    assert [r.logprob for r in ours] == pytest.approx([r.logprob for r in plain], abs=1e-5)
