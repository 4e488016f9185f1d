"""Bad inputs found by issue 12 §5: each ends in one clear line and exit 2 (or a clear warning), on tiny models."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.api import evaluate, load_gate
from harness.backends.base import LoglikelihoodRequest
from harness.cache import CachedBackend, RequestCache, request_key
from harness.checkpoint import resolve_model
from harness.cli import cli
from harness.errors import UserError
from harness.resources import cache_dir
from harness.suites import suite_settings
from tests.gate_toys import moegate, recorded_toy_project, write_gate
from tests.test_hardening import one_line_exit_2


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    with recorded_toy_project(root) as (base, gate):
        yield {"root": root, "base": base, "gate": gate}


def copy_model(project: dict[str, Path], tmp_path: Path, name: str = "model") -> Path:
    return shutil.copytree(project["base"], tmp_path / name)


def test_report_dir_naming_a_file_is_refused_before_the_model_loads(project: dict[str, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    candidate = copy_model(project, tmp_path)
    weights = candidate / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # loading it would fail with "truncated"
    report = tmp_path / "report.txt"
    report.write_text("not a folder")
    line = one_line_exit_2(capsys, ["run", "--gate", project["gate"], "--candidate", candidate, "--report-dir", report],
                           "report.txt", "not a folder")
    assert "truncated" not in line and report.read_text() == "not a folder"


def test_bootstrap_resamples_has_a_bound(tmp_path: Path) -> None:
    gate = write_gate(tmp_path, "m")
    gate.write_text(gate.read_text().replace('name = "toy"', 'name = "toy"\nbootstrap_resamples = 2000000'))
    with pytest.raises(UserError, match=r"bootstrap_resamples.*1000000"):
        load_gate(gate)


def test_cache_dir_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cache").write_text("x")
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"MOEGATE_CACHE_DIR=.* is a file"):
        cache_dir()


def _gguf(tmp_path: Path, body: bytes) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + body)
    return path


@pytest.mark.parametrize("body", [struct.pack("<IQQ", 3, 1, 1) + b"\0" * 4, struct.pack("<IQQ", 3, 0, 1) + b"\x05\0\0\0"],
                         ids=["24-byte body", "key runs past the end"])
def test_gguf_with_the_right_magic_and_a_short_body(body: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _gguf(tmp_path, body)
    one_line_exit_2(capsys, ["info", path], "model.gguf", "truncated or corrupt GGUF")


def test_safetensors_header_length_is_capped_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny: Path) -> None:
    model = shutil.copytree(tiny, tmp_path / "model", ignore=shutil.ignore_patterns("*.safetensors"))
    claim = 300_000_000
    with (model / "model.safetensors").open("wb") as handle:  # sparse: nothing of it is on disk
        handle.write(struct.pack("<Q", claim))
        handle.truncate(8 + claim + 16)
    one_line_exit_2(capsys, ["info", model], "model.safetensors", "100 MB")


class OneAnswer:
    """A backend for one fixed answer; what matters here is what the cache hands back instead."""

    name = "fixed"

    def fingerprint(self) -> str:
        return "fixed-model"

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[object]:
        raise AssertionError("the cached value should have been used")


@pytest.mark.parametrize("value", [{"logprob": -1.0}, [1, 2], {"logprob": "high", "is_greedy": True}],
                         ids=["missing field", "a list", "a string"])
def test_a_cached_value_of_the_wrong_shape(value: object, tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "requests.sqlite")
    request = LoglikelihoodRequest("The sky is", " blue")
    cache.put_many("loglikelihood", [(request_key("fixed-model", "loglikelihood", request), value)])
    with pytest.raises(UserError, match=r"requests\.sqlite holds a loglikelihood result of the wrong shape.*delete"):
        CachedBackend(OneAnswer(), cache).loglikelihood([request])  # type: ignore[arg-type]


def _pickle_model(project: dict[str, Path], tmp_path: Path, payload: object, name: str) -> Path:
    import torch

    folder = copy_model(project, tmp_path, name)
    (folder / "model.safetensors").unlink()
    torch.save(payload, str(folder / "pytorch_model.bin"))
    return folder


class Exploit:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def test_trusted_pickle_that_is_malicious_and_one_that_is_not(project: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    pwned = tmp_path / "PWNED"
    evil = _pickle_model(project, tmp_path, {"w": Exploit(pwned)}, "evil")
    one_line_exit_2(capsys, ["eval", evil, "--suite", "toy", "--trust-pickle"], "pickle", "evil")
    one_line_exit_2(capsys, ["run", "--gate", project["gate"], "--candidate", evil, "--trust-pickle",
                             "--report-dir", tmp_path / "r"], "pickle")  # fmt: skip
    assert not pwned.exists()
    good = _pickle_model(project, tmp_path, load_file(project["base"] / "model.safetensors"), "good")
    one_line_exit_2(capsys, ["eval", good, "--suite", "toy"], "--trust-pickle")
    assert moegate("eval", good, "--suite", "toy", "--trust-pickle") == 0  # the README's flag exists on eval...
    assert moegate("run", "--gate", project["gate"], "--candidate", good, "--trust-pickle",
                   "--report-dir", tmp_path / "r2") in (0, 1)  # ...and on run (the gate decides, no refusal)


def test_invalid_tokenizer_json_is_named(project: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = copy_model(project, tmp_path)
    (model / "tokenizer.json").write_text("{not json")
    one_line_exit_2(capsys, ["eval", model, "--suite", "toy"], "tokenizer.json")
    (model / "tokenizer.json").write_text(json.dumps({"model": {"type": "nonsense"}}))
    one_line_exit_2(capsys, ["eval", model, "--suite", "toy"], "tokenizer.json")


def test_limit_zero_is_refused(project: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="limit = 0"):
        evaluate(str(project["base"]), ["toy"], limit=0)
    result = CliRunner().invoke(cli, ["eval", str(project["base"]), "--suite", "toy", "--limit", "0"])
    assert result.exit_code == 2 and "0 is not in the range x>=1" in result.output


def test_seq_len_beyond_the_models_positions_is_refused(project: dict[str, Path]) -> None:
    positions = json.loads((project["base"] / "config.json").read_text())["max_position_embeddings"]
    settings = suite_settings("wikitext2", "ci", {"seq_len": positions * 2, "limit": 1})
    with pytest.raises(UserError, match=f"seq_len = {positions * 2} is beyond the model's {positions} positions"):
        evaluate(str(project["base"]), {"wikitext2": settings})


def test_symlink_loop_is_called_a_loop(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(UserError, match="loop of symbolic links"):
        resolve_model(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match=r"symbolic link to .*gone, which does not exist"):
        resolve_model(tmp_path / "dangling")


@pytest.mark.parametrize(("edit", "needle"), [({"num_experts": 0}, "num_experts = 0"),
                                              ({"num_experts_per_tok": 9}, "more than its 4 routed experts")])
def test_info_warns_on_impossible_expert_counts(edit: dict[str, int], needle: str, tmp_path: Path, tiny: Path) -> None:
    model = shutil.copytree(tiny, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **edit}))
    result = CliRunner().invoke(cli, ["info", str(model), "--json"])
    assert result.exit_code == 0, result.output
    assert any(needle in w for w in json.loads(result.stdout)["warnings"])
    assert f"moegate: warning: config.json says {next(iter(edit))}" in result.stderr
    clean = CliRunner().invoke(cli, ["info", str(tiny), "--json"])
    assert json.loads(clean.stdout)["warnings"] == []


def test_a_checkpoints_own_code_is_never_run(project: dict[str, Path], tmp_path: Path) -> None:
    """``auto_map`` naming a module in the checkpoint: moegate never passes ``trust_remote_code``, so
    transformers loads its own class for the model type and the module is not imported."""
    pwned = tmp_path / "PWNED"
    model = copy_model(project, tmp_path, "remote-code")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
                          "AutoTokenizer": ["evil.EvilTokenizer", None]}  # fmt: skip
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(f"open({str(pwned)!r}, 'w').write('pwned')\n")
    code = moegate("eval", model, "--suite", "toy")
    assert not pwned.exists()
    assert code == 0
