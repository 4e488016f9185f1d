"""The kld suite in the reports: the per-token KLD quantile curve, llama.cpp's summary and the worst tokens.

Baseline against candidate is one distribution of per-token KL, so the figure is one curve per corpus (WikiText-2
windows, C4 windows, the baseline's generations): KL at each quantile level, the level on a "nines" axis (0.5, 0.9, 0.99,
0.999) so that the tail, where damage shows first, gets most of the width. Everything is read from the
candidate's kld records (``per_token["kl"]``, ``meta["worst"]``); nothing here touches a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np

from harness.records import SuiteRun

SUITE = "kld"
LEVELS = (0.5, 0.9, 0.99, 0.999)
CORPUS_COLORS = {"text": "#0969da", "c4": "#1a7f37", "generation": "#cf222e"}
CORPUS_NAMES = {"text": "WikiText-2 windows", "c4": "C4 windows", "generation": "baseline's generations"}
TOP_WORST = 10


@dataclass(frozen=True)
class CorpusDivergence:
    """Per-token KL of one corpus, summarized as llama.cpp's ``--kl-divergence`` does."""

    corpus: str
    tokens: int
    kl: np.ndarray = field(repr=False)
    same_top: float
    dp_rms: float
    ppl_ratio: float

    def row(self) -> dict[str, float]:
        q = np.quantile(self.kl, [0.5, 0.9, 0.99, 0.999]) if self.kl.size else np.zeros(4)
        return {"mean": float(self.kl.mean()) if self.kl.size else 0.0, "median": float(q[0]), "p90": float(q[1]),
                "p99": float(q[2]), "p99.9": float(q[3]), "max": float(self.kl.max()) if self.kl.size else 0.0}


def kld_corpora(candidate_runs: dict[str, SuiteRun], baseline_runs: dict[str, SuiteRun]) -> list[CorpusDivergence]:
    """One summary per corpus of the candidate's kld run (empty when there is none)."""
    run = candidate_runs.get(SUITE)
    if run is None or run.error or not run.records:
        return []
    base_nll = {r.item_id: r.scores.get("nll", math.nan) for r in (baseline_runs.get(SUITE).records if baseline_runs.get(SUITE) else [])}  # type: ignore[union-attr]
    out = []
    for corpus in CORPUS_NAMES:
        records = [r for r in run.records if r.group == corpus and r.per_token.get("kl")]
        if not records:
            continue
        tokens = np.asarray([r.scores.get("tokens", 0.0) for r in records])
        total = float(tokens.sum())
        same = float(sum(r.scores.get("same_top", 0.0) * n for r, n in zip(records, tokens, strict=True)) / total)
        dp = math.sqrt(sum(r.scores.get("dp_rms", 0.0) ** 2 * n for r, n in zip(records, tokens, strict=True)) / total)
        nll_c = sum(r.scores.get("nll", math.nan) for r in records)
        nll_b = sum(base_nll.get(r.item_id, math.nan) for r in records)
        out.append(CorpusDivergence(corpus, int(total), np.concatenate([r.per_token["kl"] for r in records]), same, dp,
                                    math.exp((nll_c - nll_b) / total) if math.isfinite(nll_b - nll_c) else math.nan))
    return out


def worst_tokens(candidate_runs: dict[str, SuiteRun], limit: int = TOP_WORST) -> list[dict[str, Any]]:
    """The tokens of largest KL over every item, with the item they belong to."""
    run = candidate_runs.get(SUITE)
    found = [{**w, "item_id": r.item_id} for r in (run.records if run else []) for w in r.meta.get("worst", [])]
    return sorted(found, key=lambda w: -float(w.get("kl", 0.0)))[:limit]


def _x(level: float) -> float:
    """The "nines" axis: 0 at level 0, 1 at 0.9, 2 at 0.99, 3 at 0.999."""
    return -math.log10(max(1.0 - level, 1e-3))


def kld_quantile_svg(corpora: list[CorpusDivergence], *, width: int = 760, height: int = 300) -> str:
    """Per-token KLD against its quantile level, one curve per corpus, KL on a log axis."""
    left, right, top, bottom = 70, 20, 20, 50
    floor = 1e-6
    peak = max([float(c.kl.max()) for c in corpora if c.kl.size] + [floor * 10])
    lo, hi = math.log10(floor), math.log10(peak) + 0.1

    def px(level: float) -> float:
        return left + _x(level) / 3 * (width - left - right)

    def py(value: float) -> float:
        v = math.log10(max(value, floor))
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    out = [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="per-token KLD quantile curve" class="kld">']
    for level, name in ((0.0, "0"), (0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")):
        x = px(level)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" stroke="#d0d7de"/>')
        out.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11">{name}</text>')
    for exp in range(math.ceil(lo), math.floor(hi) + 1):
        y = py(10.0 ** exp)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#eaeef2"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">1e{exp}</text>')
    out.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 12}" text-anchor="middle" font-size="12">'
               "quantile level of the tokens (0.9 = 90% of tokens have a smaller KL)</text>")
    out.append(f'<text x="14" y="{(top + height - bottom) / 2:.0f}" font-size="12" transform="rotate(-90 14 '
               f'{(top + height - bottom) / 2:.0f})" text-anchor="middle">KL (nats), log</text>')
    for k, c in enumerate(corpora):
        levels = np.linspace(0.0, 0.999, 300)
        values = np.quantile(c.kl, levels) if c.kl.size else np.zeros(levels.size)
        points = " ".join(f"{px(float(q)):.1f},{py(float(v)):.1f}" for q, v in zip(levels, values, strict=True))
        color = CORPUS_COLORS.get(c.corpus, "#57606a")
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{left + 8}" y="{top + 14 + 16 * k}" font-size="12" fill="{color}">'
                   f"{escape(CORPUS_NAMES.get(c.corpus, c.corpus))} ({c.tokens} tokens)</text>")
    out.append("</svg>")
    return "".join(out)


def _f(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{x:.3g}" if x != 0 else "0"


def kld_html(candidate_runs: dict[str, SuiteRun], baseline_runs: dict[str, SuiteRun]) -> list[str]:
    """The report's logit-divergence section (nothing when the candidate has no kld run)."""
    corpora = kld_corpora(candidate_runs, baseline_runs)
    if not corpora:
        return []
    e = escape
    head = "".join(f"<th>{h}</th>" for h in ("corpus", "tokens", "mean", "median", "p90", "p99", "p99.9", "max",
                                            "same top", "Δp RMS", "PPL ratio"))  # fmt: skip
    rows = []
    for c in corpora:
        r = c.row()
        rows.append(f"<tr><td>{e(CORPUS_NAMES.get(c.corpus, c.corpus))}</td><td>{c.tokens}</td>"
                    + "".join(f"<td>{_f(r[k])}</td>" for k in ("mean", "median", "p90", "p99", "p99.9", "max"))
                    + f"<td>{100 * c.same_top:.2f}%</td><td>{_f(c.dp_rms)}</td><td>{_f(c.ppl_ratio)}</td></tr>")
    worst = []
    for w in worst_tokens(candidate_runs):
        tops = [" ".join(f"{e(repr(t))} {100 * float(p):.1f}%" for t, p in w.get(side, [])) for side in ("base_top", "cand_top")]
        worst.append(f"<tr><td><code>{e(str(w['item_id']))}</code></td><td>{_f(float(w['kl']))}</td>"
                     f"<td><span class=\"muted\">{e(str(w.get('context', ''))[-80:])}</span><b>{e(str(w.get('token', '')))}</b></td>"
                     f"<td>{tops[0]}</td><td>{tops[1]}</td></tr>")
    parts = [
        "<h2>Logit divergence (kld)</h2>",
        '<p class="small muted">KLD per token: KL(P<sub>baseline</sub> ‖ P<sub>candidate</sub>) of the next-token '
        "distributions, teacher-forced on the same tokens, over the baseline's stored top-k plus one tail bucket "
        "(both sides' top-k for a served candidate). Statistics as llama.cpp's <code>--kl-divergence</code>.</p>",
        f'<div class="figure">{kld_quantile_svg(corpora)}</div>',
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>",
    ]
    if worst:
        parts += [
            f"<h3>Worst tokens (the {len(worst)} of largest KL)</h3>",
            "<table><thead><tr><th>item</th><th>KL</th><th>context and token</th><th>baseline's top 5</th>"
            f"<th>candidate's top 5</th></tr></thead><tbody>{''.join(worst)}</tbody></table>",
        ]
    return parts


def kld_markdown_line(candidate_runs: dict[str, SuiteRun], baseline_runs: dict[str, SuiteRun]) -> str | None:
    """One line per corpus for report.md: mean / p99 / max KLD, same top, over how many tokens."""
    corpora = kld_corpora(candidate_runs, baseline_runs)
    if not corpora:
        return None
    parts = []
    for c in corpora:
        r = c.row()
        parts.append(f"{CORPUS_NAMES.get(c.corpus, c.corpus)}: mean KLD {_f(r['mean'])}, p99 {_f(r['p99'])}, "
                     f"max {_f(r['max'])}, same top {100 * c.same_top:.2f}% over {c.tokens} tokens")
    return "kld: " + "; ".join(parts)
