"""A candidate is always evaluated: an identical one is reported as identical, an edited one never gets
the baseline's cached answers, and a baseline checkpoint that changed since its store was recorded is refused."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.api._identity import same_as_baseline
from harness.backends.openai import OpenAIBackend
from harness.cache import CachedBackend, RequestCache
from harness.store import Manifest, load_store
from tests.gate_toys import moegate, recorded_toy_project
from tests.servers import free_port, start_server, stop_server
from tests.tiny_models import build_tiny_moe

HERE = Path(__file__).parent


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with recorded_toy_project(tmp_path) as recorded:
        yield recorded


def _edited(source: Path, target: Path, name: str) -> Path:
    """A copy with one value of one tensor changed (what a row-sampling fingerprint could miss)."""
    shutil.copytree(source, target)
    tensors = load_file(source / "model.safetensors")
    flat = tensors[name].view(-1)
    flat[flat.numel() // 2 + 1] += 0.25
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text(encoding="utf-8"))


def test_an_identical_copy_is_reported_as_identical(project: tuple[Path, Path], tmp_path: Path) -> None:
    base, gate = project
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    (copy / "README.md").write_text("a copy\n")  # docs are not part of the model
    assert moegate("run", "--gate", gate, "--candidate", copy, "--report-dir", tmp_path / "run") == 0
    assert any("identical to the baseline" in w for w in _report(tmp_path / "run")["run"]["warnings"])
    assert "identical to the baseline" in (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert moegate("verdict", tmp_path / "run", "--gate", gate) == 0  # recomputed: still said
    assert any("identical to the baseline" in w for w in _report(tmp_path / "run")["run"]["warnings"])


def test_an_edited_candidate_is_evaluated(project: tuple[Path, Path], tmp_path: Path) -> None:
    base, gate = project
    edited = _edited(base, tmp_path / "edited", "lm_head.weight")
    moegate("run", "--gate", gate, "--candidate", edited, "--report-dir", tmp_path / "run")
    baseline, _ = load_store(tmp_path / "baselines" / "toy")
    candidate, _ = load_store(tmp_path / "run" / "candidate")
    assert candidate.fingerprint != baseline.fingerprint
    assert not any("identical" in w for w in _report(tmp_path / "run")["run"]["warnings"])


def test_a_baseline_checkpoint_changed_since_recording_is_refused(
    project: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    base, gate = project
    baseline, _ = load_store(tmp_path / "baselines" / "toy")
    assert baseline.weights_digest
    candidate = tmp_path / "candidate"
    shutil.copytree(base, candidate)
    shutil.rmtree(base)
    _edited(candidate, base, "model.layers.0.self_attn.q_proj.weight")  # rebuilt elsewhere: other bytes
    capsys.readouterr()
    assert moegate("run", "--gate", gate, "--candidate", candidate, "--report-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "is not the one the baseline store was recorded from" in err and "record the baseline again" in err
    assert not (tmp_path / "run" / "report.json").exists()


def _served(model: Path, port: int) -> Iterator[str]:
    proc = start_server([sys.executable, str(HERE / "openai_ref_server.py"), "--model", str(model), "--port", str(port)], port)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_server(proc)


@pytest.mark.slow
def test_a_server_restarted_with_other_weights_gets_another_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    tiny = build_tiny_moe("qwen2_moe", tmp_path / "tiny")
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    tensors = load_file(tiny / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.3 * torch.randn(v.shape, generator=generator) if ".experts." in k else v for k, v in tensors.items()}
    save_file(noisy, other / "model.safetensors", metadata={"format": "pt"})
    port = free_port()
    prints = []
    for model in (tiny, other, tiny):
        for url in _served(model, port):
            prints.append(OpenAIBackend(url, "ref").fingerprint())
    assert prints[0] != prints[1] and prints[0] == prints[2]


def test_a_served_candidate_that_looks_like_the_baseline_skips_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    tiny = build_tiny_moe("qwen2_moe", tmp_path / "tiny")
    for url in _served(tiny, free_port()):
        served = OpenAIBackend(url, "ref")
        cached = CachedBackend(served, RequestCache(tmp_path / "requests.sqlite"))
        stored = Manifest.model_construct(model="ref", backend="openai", fingerprint=served.fingerprint())
        opened, line = same_as_baseline(cached, served.fingerprint(), stored, None)
        assert opened is served and line and "without the request cache" in line
        other = Manifest.model_construct(model="ref", backend="openai", fingerprint="0" * 64)
        assert same_as_baseline(cached, served.fingerprint(), other, None) == (cached, None)
