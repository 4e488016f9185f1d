"""Every stored run records the engine that computed its numbers; scoring across engines needs the gate's consent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gate_toys import moegate
from tests.test_backend_openai import ref_server
from tests.tiny_models import build_tiny_moe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("tiny") / "qwen2_moe")


@pytest.fixture(scope="module")
def server(tiny: Path) -> Iterator[str]:
    yield from ref_server(tiny)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))


def write_gate(folder: Path, tiny: Path, *, allow: bool) -> Path:
    gate = folder / "gates" / "tiny.toml"
    gate.parent.mkdir(parents=True, exist_ok=True)
    gate.write_text(
        f'[gate]\nname = "tiny"\nallow_cross_engine = {str(allow).lower()}\n'
        f'[baseline]\nmodel = "{tiny}"\nbackend = "transformers"\noptions = {{ dtype = "float32" }}\ndir = "baselines/tiny"\n'
        '[suites.wikitext2]\nlimit = 1\nseq_len = 64\n'
        '[suites.collapse]\nlimit = 1\nmax_tokens = 8\n'
        '[[budgets]]\nsuite = "wikitext2"\nmetric = "ppl"\nkind = "ratio"\nmax = 1.5\n'
        '[[budgets]]\nsuite = "collapse"\nmetric = "any"\nkind = "new_flags_count"\nmax = 1\n'
    )
    return gate


def test_a_served_candidate_against_a_local_baseline(server: str, tiny: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    gate = write_gate(tmp_path, tiny, allow=False)
    assert moegate("baseline", "record", "--gate", gate) == 0
    stored = json.loads((tmp_path / "baselines" / "tiny" / "manifest.json").read_text())
    assert stored["engine"]["engine"] == "transformers" and stored["engine"]["version"]
    assert stored["engine"]["max_context"] and stored["engine"]["model"] == str(tiny)
    capsys.readouterr()
    served = ["--candidate", "ref", "--backend", "openai", "--base-url", server]
    assert moegate("run", "--gate", gate, *served, "--report-dir", tmp_path / "refused") == 2
    error = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("moegate: warning:")]
    assert len(error) == 1 and "scoring suite(s) wikitext2" in error[0] and "allow_cross_engine" in error[0]
    assert not (tmp_path / "refused" / "report.json").exists()

    write_gate(tmp_path, tiny, allow=True)
    assert moegate("run", "--gate", gate, *served, "--report-dir", tmp_path / "run") in (0, 1)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["run"]["baseline"]["engine"]["engine"] == "transformers"
    assert report["run"]["candidate"]["engine"]["engine"] == "unknown"  # the reference server names no engine
    assert any(w.startswith("engine differs: engine: baseline 'transformers', candidate 'unknown'") for w in report["run"]["warnings"])
    assert any(w.startswith("backend settings differ: backend") for w in report["run"]["warnings"])
