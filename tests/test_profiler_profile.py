"""profile_model end to end on a tiny Qwen2-MoE with SmolLM2's real tokenizer, checked against an
independent recomputation of every accumulator; JSON round trip; the ``moegate profile`` CLI."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from harness.errors import UserError
from harness.profiler import (
    ExpertProfile,
    dead_expert_curve,
    find_moe_blocks,
    heatmap,
    heatmap_svg,
    profile_model,
)

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build_tiny_moe, smollm2_tokenizer_dir, tiny_config

TEXTS = [
    "The capital of France is Paris.",
    "def add(a, b):\n    return a + b",
    "Photosynthesis turns light into chemical energy in plants.",
    "La casa es grande y tiene un jardín.",
    "1 + 2 = 3, and 2 + 3 = 5.",
    "Rivers flow downhill into the sea.",
]
DOMAINS = ["web", "code", "science", "es", "math", "science"]


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    torch.manual_seed(0)
    cfg = tiny_config("qwen2_moe", len(tokenizer))
    cfg.num_experts, cfg.num_experts_per_tok = 8, 2
    model = AutoModelForCausalLM.from_config(cfg).eval()
    return model, tokenizer


def _independent(model, tokenizer, texts, max_tokens):
    """Counts, weight mass, soft, EAN, REAP from block inputs and raw weights (no profiler code)."""
    blocks = find_moe_blocks(model)
    e = blocks[0].num_experts
    acc = {k: np.zeros((len(blocks), e)) for k in ("counts", "mass", "soft", "ean", "reap_sum")}
    seen: dict[int, torch.Tensor] = {}
    mods = dict(model.named_modules())
    handles = [mods[b.module_name].register_forward_pre_hook(
        lambda m, a, j=j: seen.__setitem__(j, a[0].detach().reshape(-1, a[0].shape[-1]))) for j, b in enumerate(blocks)]
    with torch.no_grad(), contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: [hd.remove() for hd in handles])
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens]
            model(input_ids=ids, use_cache=False)
            for j, b in enumerate(blocks):
                h = seen[j]
                probs = F.linear(h, b.router.weight).softmax(-1)
                w, idx = probs.topk(b.top_k, dim=-1)
                acc["soft"][j] += probs.sum(0).numpy()
                for t in range(h.shape[0]):
                    for s in range(b.top_k):
                        ex = int(idx[t, s])
                        gate, up = F.linear(h[t], b.experts.gate_up_proj[ex]).chunk(2)
                        out = F.linear(F.silu(gate) * up, b.experts.down_proj[ex])
                        norm = float(out.norm())
                        acc["counts"][j, ex] += 1
                        acc["mass"][j, ex] += float(w[t, s])
                        acc["ean"][j, ex] += norm
                        acc["reap_sum"][j, ex] += float(w[t, s]) * norm
    acc["reap"] = np.where(acc["counts"] > 0, acc["reap_sum"] / np.maximum(acc["counts"], 1), 0.0)
    return acc


def test_profile_matches_independent_recomputation(tiny) -> None:
    model, tokenizer = tiny
    prof = profile_model(model, tokenizer, TEXTS, domains=DOMAINS, max_tokens=12, progress=False)
    ref = _independent(model, tokenizer, TEXTS, 12)
    assert prof.n_prompts == 6 and prof.n_tokens == sum(prof.tokens_per_prompt) and max(prof.tokens_per_prompt) <= 12
    np.testing.assert_array_equal(prof.importance("frequency"), ref["counts"])
    np.testing.assert_allclose(np.stack([lp.weight_mass for lp in prof.layers]), ref["mass"], rtol=1e-5)
    np.testing.assert_allclose(prof.importance("soft"), ref["soft"], rtol=1e-5)
    np.testing.assert_allclose(prof.importance("ean"), ref["ean"], rtol=1e-4)
    np.testing.assert_allclose(prof.importance("reap"), ref["reap"], rtol=1e-4)
    # conservation: k selections and one unit of probability per token, per layer
    assert (prof.importance("frequency").sum(1) == prof.n_tokens * prof.top_k).all()
    np.testing.assert_allclose(prof.importance("soft").sum(1), prof.n_tokens, rtol=1e-5)
    for lp in prof.layers:
        assert lp.per_prompt_counts.shape == (6, 8)
        np.testing.assert_array_equal(lp.per_prompt_counts.sum(0), lp.counts)
        np.testing.assert_array_equal(lp.per_prompt_counts.sum(1), np.asarray(prof.tokens_per_prompt) * 2)


def test_summary_json_roundtrip_and_domains(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    prof = profile_model(model, tokenizer, TEXTS, domains=DOMAINS, max_tokens=16, progress=False)
    data = json.loads(json.dumps(prof.to_json()))
    back = ExpertProfile.from_json(data)
    for crit in ("frequency", "soft", "ean", "reap"):
        np.testing.assert_allclose(back.importance(crit), prof.importance(crit))
    assert back.summary() == prof.summary()
    summary = prof.summary()
    assert set(summary["domains"]) == {"web", "code", "science", "es", "math"}
    assert summary["domains"]["science"]["n_prompts"] == 2
    assert 0.0 < summary["overall"]["entropy_ratio_mean"] <= 1.0
    assert [row["layer_index"] for row in summary["layers"]] == [0, 1]
    curve = dead_expert_curve(prof, sizes=(2, 4), shuffles=3, seed=0)
    assert curve.sizes == (2, 4, 6)
    assert list(curve.dead_fraction) == sorted(curve.dead_fraction, reverse=True)
    with pytest.raises(UserError, match="unknown importance criterion"):
        prof.importance("random")  # type: ignore[arg-type]


def test_profile_rejects_bad_input(tiny) -> None:
    model, tokenizer = tiny
    with pytest.raises(UserError, match="no prompts"):
        profile_model(model, tokenizer, [], progress=False)
    with pytest.raises(UserError, match="max_tokens"):
        profile_model(model, tokenizer, ["x"], max_tokens=0, progress=False)


def test_heatmap_png_svg_and_marks(tmp_path: Path) -> None:
    matrix = np.arange(24, dtype=float).reshape(3, 8)
    png = heatmap(matrix, tmp_path / "h.png", marked={(0, 1), (2, 7)}, title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = heatmap_svg(matrix, marked={(1, 3)})
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert heatmap_svg(matrix).count("<path") < svg.count("<path")  # the outline is drawn
    with pytest.raises(ValueError, match="outside"):
        heatmap_svg(matrix, marked={(3, 0)})
    with pytest.raises(UserError, match="unsupported suffix"):
        heatmap(matrix, tmp_path / "h.jpg")
    assert not (tmp_path / "h.jpg").exists()


# ---- CLI ---------------------------------------------------------------------------------------------

def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    from harness.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("moegate: error")]
    return int(info.value.code), out, "\n".join(errors)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("tiny") / "qwen2_moe")


def test_cli_profile_writes_json_and_plots(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t, "domain": d}) + "\n" for t, d in zip(TEXTS, DOMAINS, strict=True)))
    out_json, out_svg = tmp_path / "prof.json", tmp_path / "heat.svg"
    code, out, err = _run(["profile", str(tiny_dir), "--prompts", str(prompts), "--json", str(out_json),
                           "--plot", str(out_svg), "--max-tokens", "16", "--shuffles", "3"], capsys)
    assert code == 0, err
    assert "Dead experts vs prompts" in out and "Per domain" in out
    data = json.loads(out_json.read_text())
    assert data["n_prompts"] == 6 and data["dead_expert_curve"]["sizes"][-1] == 6
    assert ExpertProfile.from_json(data).importance("reap").shape == (2, 4)
    assert out_svg.read_text().lstrip().startswith("<?xml") and (tmp_path / "heat.curve.svg").is_file()


def test_cli_bad_inputs_exit_2_one_line(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    good = tmp_path / "good.txt"
    good.write_text("hello there\n")
    cases = [
        (["profile", str(tiny_dir), "--prompts", str(tmp_path / "missing.txt")], "does not exist"),
        (["profile", str(tiny_dir), "--prompts", str(empty)], "holds no prompts"),
        (["profile", str(tiny_dir), "--prompts", str(good), "--plot", str(tmp_path / "x.gif")], "unsupported suffix"),
    ]
    for argv, needle in cases:
        code, _, err = _run(argv, capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_cli_dense_model_is_refused(tmp_path: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    dense = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=16,
                                                         num_hidden_layers=1, num_attention_heads=4))
    dense.save_pretrained(tmp_path / "dense")
    tok.save_pretrained(tmp_path / "dense")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    out_json = tmp_path / "o.json"
    code, _, err = _run(["profile", str(tmp_path / "dense"), "--prompts", str(prompts), "--json", str(out_json)], capsys)
    assert code == 2 and "no MoE layers" in err and len(err.strip().splitlines()) == 1
    assert not out_json.exists()
