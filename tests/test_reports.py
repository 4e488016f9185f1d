"""Reports from synthetic verdicts: files, schema, escaping, self-containment, atomicity."""

from __future__ import annotations

import json
import math
import stat
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from harness.errors import UserError
from harness.gate import Budget, GatePolicy, GateVerdict, evaluate_gate
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.reports import (
    REPORT_SCHEMA_VERSION,
    Heatmap,
    ModelRun,
    RunInfo,
    build_report,
    read_report,
    render_html,
    render_markdown,
    write_reports,
)
from harness.reports.plots import forest_svg, heatmap_svg

ACC = MetricSpec(name="acc", kind="binary", higher_is_better=True, scale=100)
PPL = MetricSpec(name="perplexity", kind="perplexity", higher_is_better=False)
EVIL = "<script>alert('x')</script> see https://evil.example/a.png | <img src=x onerror=alert(1)>"
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


def runs():
    rng = np.random.default_rng(0)
    n = 200
    right = rng.random(n) < 0.7
    broken = right & (rng.random(n) < 0.5)

    def arc(correct, text):
        recs = [
            ItemRecord(suite="arc", item_id=f"q{i}", prompt=f"Q{i} | a < b?", output=text(i), reference="A",
                       scores={"acc": float(c)})
            for i, c in enumerate(correct)
        ]  # fmt: skip
        return SuiteRun(suite="arc", settings={"limit": n}, metrics=[ACC], records=recs)

    tok = rng.integers(100, 200, 30).astype(float)
    nll = tok * 3.0

    def wiki(extra):
        recs = [
            ItemRecord(suite="wikitext2", item_id=f"w{i}", scores={"nll": float(a + e), "tokens": float(t)})
            for i, (a, t, e) in enumerate(zip(nll, tok, extra, strict=True))
        ]
        return SuiteRun(suite="wikitext2", settings={}, metrics=[PPL], records=recs)

    coll_b = SuiteRun(
        suite="collapse",
        settings={},
        records=[ItemRecord(suite="collapse", item_id=f"c{i}", output="fine answer") for i in range(10)],
    )
    coll_c = SuiteRun(
        suite="collapse",
        settings={},
        records=[
            ItemRecord(suite="collapse", item_id=f"c{i}", output=EVIL if i == 0 else "fine answer",
                       flags=["script_mixing"] if i == 0 else [], checks={"min_len": i != 1})
            for i in range(10)
        ],
    )  # fmt: skip
    baseline = {
        "arc": arc(right, lambda i: f"Answer {i}"),
        "wikitext2": wiki(np.zeros(30)),
        "collapse": coll_b,
    }
    candidate = {
        "arc": arc(right & ~broken, lambda i: EVIL if i == int(np.flatnonzero(broken)[0]) else f"Answer {i}"),
        "wikitext2": wiki(tok * 0.01),
        "collapse": coll_c,
        "gsm8k": SuiteRun(suite="gsm8k", settings={}, error="boom <b>"),
    }
    baseline["gsm8k"] = SuiteRun(suite="gsm8k", settings={})
    return baseline, candidate


BUDGETS = [
    Budget(suite="arc", metric="acc", kind="drop", max=2, label="ARC <challenge>"),
    Budget(suite="wikitext2", metric="perplexity", kind="ratio", max=1.05),
    Budget(suite="collapse", metric="script_mixing", kind="new_flags_count", max=0),
    Budget(suite="collapse", metric="min_len", kind="new_flags_count", max=1),
    Budget(suite="gsm8k", metric="acc", kind="drop", max=2, label="GSM8K"),
]


@pytest.fixture(scope="module")
def gate():
    base, cand = runs()
    verdict = evaluate_gate(base, cand, BUDGETS, GatePolicy(bootstrap_resamples=1000))
    return verdict, base, cand


RUN = RunInfo(
    gate="testbed <gate>",
    gate_file="gates/testbed.toml",
    baseline=ModelRun(model="/tmp/base", backend="transformers", options={"dtype": "bfloat16"}, fingerprint="a" * 64),
    candidate=ModelRun(model="/tmp/cand", backend="transformers", fingerprint="b" * 64, store="/tmp/run/candidate"),
    backend_differences=["backend option dtype: baseline 'bfloat16', candidate None (NOT asked for)"],
)
EXTRA = dict(
    run=RUN,
    expert_heatmap=Heatmap(matrix=np.arange(12.0).reshape(3, 4), marked=[[0, 1], [2, 3]], title="usage"),
    inspect={"problems": [], "ratio": float("nan")},
)


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_write_reports_writes_three_readable_files(gate, tmp_path: Path) -> None:
    verdict, base, cand = gate
    paths = write_reports(verdict, base, cand, tmp_path / "out", **EXTRA)
    assert set(paths) == {"json", "md", "html"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
        assert stat.S_IMODE(p.stat().st_mode) & 0o044  # group/other can read
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == ["report.html", "report.json", "report.md"]


def test_report_json_schema(gate, tmp_path: Path) -> None:
    verdict, base, cand = gate
    path = write_reports(verdict, base, cand, tmp_path, **EXTRA)["json"]
    doc = json.loads(path.read_text())
    assert (
        doc["schema_version"] == REPORT_SCHEMA_VERSION and doc["overall"] == "FAIL" and doc["exit_code"] == 1
    )
    assert {"moegate_version", "created_utc", "run", "verdict", "suites", "items", "inspect"} <= set(doc)
    # the fields CI scripts read keep their place
    ci_fields = {"label", "suite", "metric", "status", "baseline_value", "candidate_value", "change", "ci_low",
                 "ci_high", "budget"}  # fmt: skip
    assert all(ci_fields <= set(c) for c in doc["verdict"]["capabilities"])
    assert doc["run"]["baseline"]["fingerprint"] == "a" * 64 and doc["run"]["baseline"]["options"] == {"dtype": "bfloat16"}
    assert doc["run"]["backend_differences"] == RUN.backend_differences
    written = build_report(verdict, base, cand, created_utc=doc["created_utc"], **EXTRA)
    assert read_report(path).model_dump_json() == written.model_dump_json()  # NaN is written as null
    again = GateVerdict.model_validate(doc["verdict"])
    assert [c.label for c in again.capabilities] == [b.display_label for b in BUDGETS]
    assert doc["suites"]["arc"]["baseline"]["metrics"]["acc"]["value"] == pytest.approx(
        verdict.capabilities[0].baseline_value
    )
    assert doc["suites"]["wikitext2"]["candidate"]["metrics"]["perplexity"]["value"] == pytest.approx(
        math.exp(3.01), rel=1e-6
    )
    assert doc["suites"]["collapse"]["candidate"]["flag_counts"] == {"min_len": 1, "script_mixing": 1}
    assert doc["suites"]["gsm8k"]["candidate"]["error"] == "boom <b>"
    assert doc["expert_heatmap"]["matrix"][2] == [8.0, 9.0, 10.0, 11.0]
    assert doc["inspect"]["ratio"] is None  # no NaN in JSON
    arc_items = next(s for s in doc["items"] if s["suite"] == "arc")
    assert arc_items["total"] == verdict.capabilities[0].flips.right_to_wrong
    assert any(it["candidate"]["output"] == EVIL for it in arc_items["items"])


def test_html_is_self_contained_parses_and_escapes(gate) -> None:
    verdict, base, cand = gate
    html = render_html(build_report(verdict, base, cand, **EXTRA), base, cand)
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert not checker.errors and not checker.stack, checker.errors or checker.stack
    assert "script" not in checker.tags and "img" not in checker.tags and "link" not in checker.tags
    assert not [a for a in checker.attrs if a[0] in ("src", "href", "xlink:href", "onerror", "onload")]
    assert "url(" not in html and "@import" not in html
    assert html.count("https://") == html.count("https://evil.example")  # only inside escaped model text
    text = "".join(checker.text)
    assert EVIL in text  # shown verbatim as text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    for cap in verdict.capabilities:
        assert cap.label in text
    assert 'class="forest"' in html and 'class="heatmap"' in html and html.count('class="marked"') >= 2
    assert "boom <b>" in text
    assert "testbed <gate>" not in html and "fingerprint aaaaaaaaaaaaaaaa" in text


def test_markdown_is_compact_and_safe(gate) -> None:
    verdict, base, cand = gate
    md = render_markdown(verdict, base, cand)
    assert md.startswith("## ❌") and "**FAIL**" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for cap in verdict.capabilities:
        assert any(cap.label.replace("<", "&lt;").replace(">", "&gt;") in r for r in rows)
    assert "<script>" not in md and "&lt;script&gt;" in md
    for r in rows:  # every row has the header's number of cells (pipes in text are escaped)
        assert r.replace("\\|", "").count("|") in (9, 6)
    assert len(md) < 20_000


def test_nothing_written_when_rendering_fails(gate, tmp_path: Path) -> None:
    verdict, base, cand = gate
    with pytest.raises(Exception, match="object"):
        write_reports(verdict, base, cand, tmp_path / "r", inspect={"bad": object()})
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        write_reports(verdict, base, cand, tmp_path / "file")


def test_old_or_edited_reports_are_refused_in_one_line(gate, tmp_path: Path) -> None:
    verdict, base, cand = gate
    path = write_reports(verdict, base, cand, tmp_path)["json"]
    doc = json.loads(path.read_text())
    for edit, needle in ((lambda d: d.update(schema_version=1), "report schema version 1"),
                         (lambda d: d["verdict"].update(schema_version=0), "verdict schema version 0"),
                         (lambda d: d.update(exit_code="one"), "'exit_code'")):  # fmt: skip
        changed = json.loads(json.dumps(doc))
        edit(changed)
        path.write_text(json.dumps(changed))
        with pytest.raises(UserError, match=needle) as info:
            read_report(path)
        assert "\n" not in info.value.line()


def test_plots_handle_edge_cases(gate) -> None:
    verdict, _, _ = gate
    assert forest_svg([]).startswith("<svg")
    svg = forest_svg(verdict.capabilities)
    assert svg.count("<circle") == sum(c.change is not None for c in verdict.capabilities)
    assert "not compared" in svg and "nan" not in svg.lower()
    hm = heatmap_svg([[1.0, float("nan")], [3.0, 4.0]], marked=[[0, 0], [9, 9]], title="t <x>")
    assert hm.count('class="marked"') == 1 + 1  # one cell plus the legend swatch
    assert "t &lt;x&gt;" in hm
    assert "No expert heatmap" in heatmap_svg([])
