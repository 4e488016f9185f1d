"""Bad checkpoints: one line naming the problem and the fix, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.backends import open_backend
from harness.backends.base import LoglikelihoodRequest
from harness.checkpoint import check_safetensors, resolve_model
from harness.errors import UserError
from tests.tiny_models import build_tiny_moe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("olmoe", tmp_path_factory.mktemp("bad") / "olmoe")


@pytest.fixture(scope="module")
def bad(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path | str, str]]:
    """name -> (model argument, text the error line must contain)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    cases: dict[str, tuple[Path | str, str]] = {"missing": (root / "nope", "does not exist")}
    (root / "empty").mkdir()
    cases["no_config"] = (root / "empty", "has no config.json")
    unknown = shutil.copytree(tiny, root / "unknown")
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "not_a_real_arch"}))
    cases["unknown_arch"] = (unknown, "unknown architecture")
    broken_json = shutil.copytree(tiny, root / "broken_json")
    (broken_json / "config.json").write_text("{not json")
    cases["config_not_json"] = (broken_json, "not valid JSON")
    truncated = shutil.copytree(tiny, root / "truncated")
    weights = truncated / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size - 1000)
    cases["truncated"] = (truncated, "truncated")
    garbage = shutil.copytree(tiny, root / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{this is no json")
    cases["corrupt_header"] = (garbage, "corrupt safetensors header")
    pickled = root / "pickled"
    pickled.mkdir()
    shutil.copy(tiny / "config.json", pickled)
    for name in tiny.iterdir():
        if name.name.startswith("tokenizer") or name.suffix == ".jinja":
            shutil.copy(name, pickled)
    from safetensors.torch import load_file

    torch.save(load_file(tiny / "model.safetensors"), pickled / "pytorch_model.bin")
    cases["pickle_only"] = (pickled, "--trust-pickle only if you trust the source")
    not_gguf = root / "weights.txt"
    not_gguf.write_text("hello")
    cases["not_gguf_file"] = (not_gguf, "not a .gguf file")
    fake_gguf = root / "fake.gguf"
    fake_gguf.write_bytes(b"NOPE" + b"\0" * 64)
    cases["bad_gguf"] = (fake_gguf, "not a GGUF file")
    cases["offline_hub_id"] = ("someorg/somemodel", "hub is offline")
    return cases


def test_resolve_model_errors_in_process(bad: dict[str, tuple[Path | str, str]]) -> None:
    env = dict(os.environ)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        for name, (model, expected) in bad.items():
            with pytest.raises(UserError) as info:
                resolve_model(str(model))
            line = info.value.line()
            assert expected in line, (name, line)
            assert "\n" not in line and " — " in line, name  # one line: problem — fix
    finally:
        os.environ.clear()
        os.environ.update(env)


SUBPROCESS_CASES = ("missing", "no_config", "unknown_arch", "truncated", "pickle_only")


def test_issue_bad_inputs_are_one_line_and_exit_2_in_a_subprocess(bad: dict[str, tuple[Path | str, str]]) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", MOEGATE_QUIET="1")
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "harness.cli", "info", str(bad[name][0])], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in SUBPROCESS_CASES
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, out, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert lines[0].startswith("moegate: error:") and bad[name][1] in lines[0], (name, lines[0])


def test_safetensors_size_check_accepts_intact_file(tiny: Path) -> None:
    header = check_safetensors(tiny / "model.safetensors")
    assert "model.embed_tokens.weight" in header


def test_trust_pickle_loads_the_same_model(tiny: Path, bad: dict[str, tuple[Path | str, str]]) -> None:
    pickled = bad["pickle_only"][0]
    request = [LoglikelihoodRequest("Hello", " world")]
    safe = open_backend(str(tiny), device="cpu").loglikelihood(request)
    trusted = open_backend(str(pickled), device="cpu", trust_pickle=True).loglikelihood(request)
    assert trusted[0].logprob == pytest.approx(safe[0].logprob, abs=1e-5)


def test_bad_dtype_and_device(tiny: Path) -> None:
    with pytest.raises(UserError, match="option 'dtype': Input should be 'auto', 'float32'"):
        open_backend(str(tiny), dtype="float8")
    with pytest.raises(UserError, match="option 'device'"):
        open_backend(str(tiny), device="tpu")
    with pytest.raises(UserError, match="unknown transformers backend option"):
        open_backend(str(tiny), batchsize=4)
    with pytest.raises(UserError, match=r"unknown backend 'transformer'.*did you mean 'transformers'"):
        open_backend(str(tiny), kind="transformer")


def test_other_bad_inputs_through_the_cli_entry_point(
    bad: dict[str, tuple[Path | str, str]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, (model, expected) in bad.items():
        if name in SUBPROCESS_CASES:
            continue
        with pytest.raises(SystemExit) as exit_info:
            main(["info", str(model)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, name
        assert err.count("\n") == 1 and expected in err and "Traceback" not in err, (name, err)


def test_weights_that_do_not_fit_the_config(tiny: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    mismatched = shutil.copytree(tiny, tmp_path / "mismatched")
    config = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps({**config, "num_experts": 3}))
    with pytest.raises(UserError, match=r"weight shapes do not match config\.json") as info:
        open_backend(str(mismatched), device="cpu")
    assert "\n" not in info.value.line()
    missing = shutil.copytree(tiny, tmp_path / "missing")
    tensors = load_file(missing / "model.safetensors")
    dropped = sorted(k for k in tensors if ".mlp.gate." in k)[0]
    del tensors[dropped]
    save_file(tensors, missing / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="lacks 1 weight"):
        open_backend(str(missing), device="cpu")


def test_gguf_by_file_or_by_directory_and_name() -> None:
    from harness.smollm2 import smollm2_gguf

    gguf = smollm2_gguf()
    by_file = resolve_model(str(gguf))
    by_name = resolve_model(str(gguf.parent), gguf_file=gguf.name)
    assert by_file.kind == by_name.kind == "gguf" and by_file.path == by_name.path == gguf
    assert by_file.load_dir == str(gguf.parent) and by_file.gguf_file == gguf.name
