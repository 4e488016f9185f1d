"""Route traces recorded with the baseline, and the diagnosis end to end, on a tiny random MoE with one zeroed expert.

The toy suite here flags an item when its continuation's log-likelihood moved at all: zeroing one
expert of one layer moves exactly the items that routed some token to it, so the flagged items must
be the ones the baseline's stored routes send there.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from harness.api import gate_candidate, load_gate, record_baseline
from harness.api.risk import assess_risk
from harness.backends.base import Backend, LoglikelihoodRequest
from harness.compress import prune
from harness.diagnosis import ROUTES_ARTIFACT, decode_routes
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.reports import read_report
from harness.store import load_store
from harness.suites import SUITES, SuiteSettings
from tests.gate_toys import PAIRS, write_gate

pytestmark = pytest.mark.usefixtures("gate_toys")
ACC = MetricSpec(name="acc", kind="binary", higher_is_better=True, scale=100)


class StableSettings(SuiteSettings):
    n_items: int = 8
    tol: float = 1e-4


class StableSuite:
    """``stable`` check: the continuation's log-likelihood is within ``tol`` of the baseline's."""

    name = "toy_stable"
    Settings = StableSettings
    metrics: ClassVar[list[MetricSpec]] = [ACC]
    checks = ("stable",)

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        assert isinstance(settings, StableSettings)
        pairs = PAIRS[: settings.n_items]
        values = [r.logprob for r in backend.loglikelihood([LoglikelihoodRequest(c, x) for c, x in pairs])]
        base = {r.item_id: r.meta["logprob"] for r in baseline.records} if baseline else {}
        records = []
        for i, ((c, x), v) in enumerate(zip(pairs, values, strict=True)):
            ok = abs(v - base.get(f"s{i}", v)) <= settings.tol
            records.append(ItemRecord(suite=self.name, item_id=f"s{i}", prompt=c, output=x, scores={"acc": float(ok)},
                                      checks={"stable": ok}, meta={"logprob": v}))  # fmt: skip
        return SuiteRun(suite=self.name, settings=settings.model_dump(mode="json"), metrics=self.metrics,
                        records=records, data_sha256={"toy-pairs": "0" * 64})  # fmt: skip


GATE = textwrap.dedent(
    """
    [suites.toy]
    n_items = 8
    [suites.toy_stable]
    n_items = 8

    [[budgets]]
    label = "toy log-likelihood"
    suite = "toy"
    metric = "logprob"
    kind = "drop"
    max = 100.0

    [[budgets]]
    label = "toy stability"
    suite = "toy_stable"
    metric = "stable"
    kind = "new_flags_count"
    max = 0
    """
)


def quiet(_message: str) -> None:
    pass


@pytest.fixture
def gated(tiny: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    SUITES.register("toy_stable", StableSuite)
    config = load_gate(write_gate(tmp_path, str(tiny), body=GATE))
    record_baseline(config, log=quiet)
    _, runs = load_store(config.baseline_dir)
    routes = decode_routes(runs["toy_stable"].artifacts[ROUTES_ARTIFACT])
    # Zero the expert whose routing differs most between items, so some items use it and some barely do.
    shares = routes.mass / routes.mass.sum(axis=2, keepdims=True)
    layer_pos, expert = np.unravel_index(np.argmax(shares.var(axis=0)), shares.shape[1:])
    scores = np.ones(routes.mass.shape[1:])
    scores[layer_pos, expert] = 0.0
    candidate = prune(tiny, tmp_path / "pruned", fraction=1 / scores.size, criterion="random", scope="global",
                      mode="zero", scores=scores)  # fmt: skip
    return config, routes, (routes.layers[layer_pos], int(expert), int(layer_pos)), candidate


def test_the_baseline_stores_route_mass_for_every_item(gated, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    config, routes, _, _ = gated
    manifest, runs = load_store(config.baseline_dir)
    assert set(manifest.suites["toy"].artifacts) == {ROUTES_ARTIFACT}  # hashed in the manifest like the records
    assert list(routes.item_ids) == [r.item_id for r in runs["toy_stable"].records]
    config_json = json.loads((tiny / "config.json").read_text())
    assert routes.num_experts == config_json["num_experts"] and len(routes.layers) == config_json["num_hidden_layers"]
    top_k = config_json["num_experts_per_tok"]
    assert (routes.picks.sum(axis=2) == routes.tokens[:, None] * top_k).all()  # every token picked top-k experts


def test_flagged_items_are_the_ones_routed_to_the_zeroed_expert(gated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, routes, (layer, expert, pos), candidate = gated
    outcome = gate_candidate(config, str(candidate), tmp_path / "run", log=quiet)
    report = read_report(outcome.reports["json"])
    cap = next(c for c in outcome.verdict.capabilities if c.suite == "toy_stable")
    assert cap.status == "FAIL" and cap.changed_items
    index = routes.index()
    for item in cap.changed_items:  # a flagged item routed some of its tokens to the zeroed expert
        assert routes.picks[index[item], pos, expert] > 0
    d = report.diagnosis
    assert d is not None and d.available and d.changed == {layer: {expert: "pruned (zeroed)"}}
    diag = next(c for c in d.capabilities if c.suite == "toy_stable")
    assert diag.broke == len(cap.changed_items) and diag.broke_mass is not None and diag.broke_mass > 0
    assert diag.other == 8 - diag.broke and (diag.other_mass or 0) < diag.broke_mass
    assert diag.items[0].top[0].layer == layer and diag.items[0].top[0].expert == expert
    assert "newly flagged items sent" in diag.line and "pruned experts" in diag.line
    md, html = outcome.reports["md"].read_text(), outcome.reports["html"].read_text()
    assert "### Expert diagnosis" in md and diag.line.split(":")[0] in md
    assert "Expert diagnosis" in html and "per suite and layer" in html


def test_risk_ranks_from_the_stored_routes_and_the_run_follows_it(gated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, _, _, candidate = gated
    risk = assess_risk(config, str(candidate))
    assert risk.note is None and [r.share is not None and r.share > 0 for r in risk.risks] == [True, True]
    shares = [r.share or 0 for r in risk.risks]
    assert shares == sorted(shares, reverse=True)
    logs: list[str] = []
    outcome = gate_candidate(config, str(candidate), tmp_path / "ff", fail_fast=True, log=logs.append)
    ran = [m.split()[1].rstrip(":") for m in logs if m.startswith("suite ") and m.endswith(": running")]
    assert ran[0] == risk.risks[0].suite  # riskiest suite first
    assert outcome.verdict.overall == "FAIL"
    assert risk.risks[0].suite == "toy_stable"  # (this seed's tiny model) its continuations reach the zeroed expert more
    # Its FAIL is a count, which no later suite can overturn: the rest did not run and FAILs as not run.
    assert ran == ["toy_stable"] and any(m.startswith("stopping: toy stability FAILed") for m in logs)
    toy = next(c for c in outcome.verdict.capabilities if c.suite == "toy")
    assert toy.status == "FAIL" and "not run" in toy.reason


def test_a_baseline_without_traces_says_how_to_add_them(gated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, _, _, candidate = gated
    for path in config.baseline_dir.rglob(ROUTES_ARTIFACT):  # as recorded by an older moegate: no artifacts
        path.unlink()
    manifest = json.loads((config.baseline_dir / "manifest.json").read_text())
    for suite in manifest["suites"].values():
        suite["artifacts"] = {}
    (config.baseline_dir / "manifest.json").write_text(json.dumps(manifest))
    outcome = gate_candidate(config, str(candidate), tmp_path / "old", log=quiet)
    d = read_report(outcome.reports["json"]).diagnosis
    assert d is not None and not d.available and "moegate baseline record" in d.note
    assert "moegate baseline record" in outcome.reports["md"].read_text()


def test_perplexity_windows_are_traced_as_scored(tiny: Path) -> None:
    """A perplexity record holds only a description: the traced text is its window, rebuilt from the corpus."""
    from harness.backends import open_backend
    from harness.routing import item_texts, trace_suite
    from harness.suites import suite_settings

    backend = open_backend(str(tiny), device="cpu")
    settings = suite_settings("wikitext2", "ci").model_copy(update={"limit": 3, "seq_len": 32})
    run = SUITES.get("wikitext2")().run(backend, settings)
    texts = item_texts(backend, run)
    assert [i for i, _ in texts] == [r.item_id for r in run.records]
    for (_, text), record in zip(texts, run.records, strict=True):
        assert abs(len(backend.tok_encode(text)) - (record.scores["tokens"] + 1)) <= 2  # the window, re-encoded
    routes = trace_suite(backend, run)
    assert routes.tokens.tolist() == [len(backend.tok_encode(t)) for _, t in texts]


def test_batched_route_traces_equal_one_text_at_a_time(tiny: Path) -> None:
    from harness.backends import open_backend

    backend = open_backend(str(tiny), device="cpu", batch_size=4)
    texts = ["Short.", "A somewhat longer text, padded least in its batch of three texts.", "Middle length text here."]
    together = backend.route_trace(texts)
    for text, got in zip(texts, together, strict=True):
        (alone,) = backend.route_trace([text])
        assert got.layers == alone.layers and got.tokens == alone.tokens and got.expert_ids == alone.expert_ids
        np.testing.assert_allclose(np.array(got.weights), np.array(alone.weights), atol=1e-5)


def test_moegate_risk_prints_the_ranking(gated, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from harness.cli import main

    config, _, _, candidate = gated
    with pytest.raises(SystemExit) as done:
        main(["risk", "--gate", str(config.path), "--candidate", str(candidate)])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "1 changed experts in 1 layers; riskiest first" in out
    assert out.index("toy stability (toy_stable)") < out.index("toy log-likelihood (toy)")


def test_route_traces_behind_the_request_cache_are_traced_once(tiny: Path, tmp_path: Path) -> None:
    """Re-recording an unchanged baseline serves each suite's route masses from the cache, byte for byte."""
    from harness.backends import open_backend
    from harness.cache import CachedBackend
    from harness.diagnosis import ROUTES_ARTIFACT
    from harness.routing import record_routes
    from harness.suites import suite_settings

    backend = CachedBackend(open_backend(str(tiny), device="cpu"), tmp_path / "requests.sqlite")
    settings = suite_settings("wikitext2", "ci").model_copy(update={"limit": 2, "seq_len": 32})
    runs = {"wikitext2": SUITES.get("wikitext2")().run(backend, settings)}
    first = record_routes(backend, runs, quiet)["wikitext2"].artifacts[ROUTES_ARTIFACT]
    traced: list[int] = []
    inner = backend.backend
    original = inner.route_trace
    inner.route_trace = lambda texts: traced.append(len(texts)) or original(texts)  # type: ignore[method-assign]
    again = record_routes(backend, runs, quiet)["wikitext2"].artifacts[ROUTES_ARTIFACT]
    assert again == first and traced == []
