"""lm-eval suites: item selection, pinned data, records, and agreement with plain lm-eval (HFLM).

The agreement tests run the same lm-eval tasks, items and settings twice: through moegate (MoegateLM over
the transformers backend) and through lm-eval's own ``model="hf"``; per-item metrics and outputs must match.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import UserError
from harness.resources import data_dir
from harness.suites import SUITES, suite_settings
from harness.suites.lm_eval_tasks import (
    LmEvalSettings,
    select_samples,
    simple_evaluate_kwargs,
    task_manager,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NAMES = ("arc_challenge", "gsm8k", "gsm8k_cot", "mmlu_pro", "mmlu_pro_mc")


def _tasks(ids: list[str]) -> dict[str, Any]:
    return {"t": SimpleNamespace(eval_docs=[{"id": i} for i in ids])}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=6), min_size=2, max_size=40, unique=True), st.integers(0, 99))
def test_seeded_subset_grows_by_prefix(ids: list[str], seed: int) -> None:
    """The subset for n items is part of the one for n + 1: raising a limit never reshuffles items."""
    tasks = _tasks(ids)
    previous: set[int] = set()
    for limit in range(1, len(ids) + 1):
        chosen = set(select_samples(tasks, lambda d: d["id"], limit=limit, seed=seed)["t"])
        assert len(chosen) == limit and previous <= chosen
        previous = chosen


def test_selection_by_ids_and_errors() -> None:
    tasks = _tasks(["a", "b", "c", "d"])
    assert select_samples(tasks, lambda d: d["id"], limit=None, seed=0, item_ids=["d", "b"]) == {"t": [1, 3]}
    assert select_samples(tasks, lambda d: d["id"], limit=None, seed=0) == {"t": [0, 1, 2, 3]}
    with pytest.raises(UserError, match="not in the data"):
        select_samples(tasks, lambda d: d["id"], limit=None, seed=0, item_ids=["zz"])
    with pytest.raises(UserError, match="appears twice"):
        select_samples(_tasks(["a", "a"]), lambda d: d["id"], limit=1, seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_suite_settings_and_tasks_load_offline(name: str) -> None:
    """Each suite's TOML validates, and its lm-eval tasks read all their items from the local files."""
    ci, full = suite_settings(name, "ci"), suite_settings(name, "full")
    assert isinstance(ci, LmEvalSettings) and ci.limit is not None and ci.limit <= 40
    assert full.limit is None or full.limit >= 1000
    suite = SUITES.get(name)
    loaded = task_manager(ci).load(list(suite.tasks))["tasks"]
    total = sum(len(t.eval_docs) for t in loaded.values())
    assert total == {"arc_challenge": 1172, "mmlu_pro": 12032, "mmlu_pro_mc": 12032}.get(name, 1319)
    for task in loaded.values():
        for file in task.config.dataset_kwargs["data_files"].values():
            assert file in ci.data_sha256


def test_task_configs_keep_lm_evals_own_task_logic() -> None:
    """Our YAML copies must not drift from lm-eval's tasks except in where documents come from."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = task_manager(LmEvalSettings())
    lm_eval_dir = Path(lm_eval.tasks.__file__).parent
    pairs = {"moegate_arc_challenge": "arc/arc_challenge.yaml", "moegate_gsm8k": "gsm8k/gsm8k.yaml",
             "moegate_gsm8k_cot": "gsm8k/gsm8k-cot-llama.yaml", "moegate_mmlu_pro_law": "mmlu_pro/mmlu_pro_law.yaml",
             "moegate_mmlu_pro_mc": "leaderboard/mmlu_pro/mmlu_pro.yaml"}
    keys = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "description", "target_delimiter",
            "fewshot_delimiter", "num_fewshot", "metric_list", "filter_list", "generation_kwargs", "fewshot_split",
            "fewshot_config")

    def comparable(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: comparable(v) for k, v in value.items()}
        if callable(value):
            func = getattr(value, "func", value)
            return (func.__name__, getattr(value, "keywords", None))
        return value

    for mine, lm_evals in pairs.items():
        cfg_a, cfg_b = load_yaml(ours.task_index[mine].yaml_path), load_yaml(lm_eval_dir / lm_evals)
        for key in keys:
            assert comparable(cfg_a.get(key)) == comparable(cfg_b.get(key)), (mine, key)


def test_bad_or_missing_data_file_is_one_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ARC-Challenge-Test.jsonl", "ARC-Challenge-Train.jsonl"):
        shutil.copy(data_dir() / name, tmp_path / name)
    monkeypatch.setenv("MOEGATE_DATA_DIR", str(tmp_path))
    suite = SUITES.get("arc_challenge")()
    with pytest.raises(UserError, match=r"ARC-Challenge-Dev\.jsonl is missing"):
        suite.run(None, suite_settings("arc_challenge", "ci"))  # type: ignore[arg-type]
    (tmp_path / "ARC-Challenge-Dev.jsonl").write_text('{"id": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"ARC-Challenge-Dev\.jsonl has sha256"):
        suite.run(None, suite_settings("arc_challenge", "ci"))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- agreement
def _tiny_model_dir(out: Path) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer (ChatML template) trained on the benchmarks."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    lines = []
    for name in ("ARC-Challenge-Dev.jsonl", "gsm8k_test.jsonl", "mmlu_pro_validation.jsonl"):
        with (data_dir() / name).open(encoding="utf-8") as handle:
            lines += [json.dumps(json.loads(line), ensure_ascii=False) for _, line in zip(range(200), handle, strict=False)]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model_dir(tmp_path_factory.mktemp("tiny_lm"))


def compare_with_plain_lm_eval(model_dir: Path, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Run suite ``name`` through moegate and through lm-eval's HFLM; return both per-item views."""
    from lm_eval import evaluator

    from harness.backends import open_backend
    from harness.suites.lm_eval_tasks import records_from_samples

    suite = SUITES.get(name)()
    settings_ = suite_settings(name, "ci", overrides)
    backend = open_backend(str(model_dir), "transformers", dtype="float32", device="cpu")
    start = time.perf_counter()
    ours = suite.run(backend, settings_)
    ours_s = time.perf_counter() - start

    manager = task_manager(settings_)
    loaded = manager.load(list(suite.tasks))["tasks"]
    samples = select_samples(loaded, type(suite).item_id, limit=settings_.limit, seed=settings_.seed,
                             item_ids=settings_.item_ids)
    start = time.perf_counter()
    plain = evaluator.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", device="cpu",
                                      tasks=[n for n in suite.tasks if n in samples], task_manager=manager,
                                      samples=samples, **simple_evaluate_kwargs(settings_))
    plain_s = time.perf_counter() - start
    theirs = records_from_samples(name, plain["samples"], item_id=type(suite).item_id,
                                  score_names=suite.score_names, group=suite.group)
    return {"ours": {r.item_id: r for r in ours.records}, "theirs": {r.item_id: r for r in theirs},
            "plain_results": plain["results"], "ours_s": ours_s, "plain_s": plain_s, "run": ours}


def assert_agree(view: dict[str, Any], n_items: int) -> None:
    ours, theirs = view["ours"], view["theirs"]
    assert len(ours) == n_items and set(ours) == set(theirs)
    for key, mine in ours.items():
        other = theirs[key]
        assert mine.scores == other.scores, key
        assert mine.prompt == other.prompt and mine.output == other.output and mine.group == other.group, key
        for a, b in zip(mine.meta.get("loglikelihoods", []), other.meta.get("loglikelihoods", []), strict=True):
            assert a == pytest.approx(b, abs=1e-3), key
    score_names = SUITES.get(view["run"].suite).score_names
    for task, metrics in view["plain_results"].items():
        for metric_filter, value in metrics.items():
            metric, _, flt = metric_filter.partition(",")
            name = score_names.get((metric, flt))
            if name is None or not isinstance(value, float):
                continue
            mine = [r.scores[name] for r in ours.values() if r.meta["task"] == task]
            assert sum(mine) / len(mine) == pytest.approx(value), (task, metric_filter)


@pytest.mark.parametrize(
    ("name", "overrides", "n_items"),
    [
        ("arc_challenge", {"limit": 6}, 6),
        ("gsm8k_cot", {"limit": 1, "max_gen_toks": 12}, 1),
        # the same paths (multiple choice; generation) with other prompts: slow only, to keep CI short
        pytest.param("mmlu_pro_mc", {"limit": 1}, 1, marks=pytest.mark.slow),
        pytest.param("gsm8k", {"limit": 2, "max_gen_toks": 12}, 2, marks=pytest.mark.slow),
        pytest.param("mmlu_pro", {"limit": 2, "max_gen_toks": 12}, 2, marks=pytest.mark.slow),
    ],
)
def test_agrees_with_plain_lm_eval_on_a_tiny_model(tiny_dir: Path, name: str, overrides: dict, n_items: int) -> None:
    view = compare_with_plain_lm_eval(tiny_dir, name, overrides)
    assert_agree(view, n_items)
    run = view["run"]
    assert run.error is None and run.data_sha256 == suite_settings(name, "ci").data_sha256
    assert {m.name for m in run.metrics} == set(next(iter(view["ours"].values())).scores)
    for record in run.records:
        assert record.lang == "en" and record.suite == name
        assert (record.output is not None) == (name in ("gsm8k", "gsm8k_cot", "mmlu_pro"))
        assert (record.group is not None) == name.startswith("mmlu_pro")
    if name == "gsm8k_cot":
        assert run.records[0].prompt.startswith("<|im_start|>")


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2-135M-Instruct, dequantized from its GGUF into a local HF dir (HFLM needs one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.smollm2 import smollm2_gguf

    gguf = smollm2_gguf()
    out = tmp_path_factory.mktemp("smollm2_hf")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # GGUF-loaded models refuse save_pretrained; the weights are plain fp32
    dense = AutoModelForCausalLM.from_config(config, dtype="float32")
    dense.load_state_dict(loaded.state_dict())
    dense.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "overrides", "n_items"),
    [
        ("arc_challenge", {"limit": 12}, 12),
        ("mmlu_pro_mc", {"limit": 2}, 2),
        ("gsm8k", {"limit": 2, "max_gen_toks": 48}, 2),
        ("gsm8k_cot", {"limit": 1, "max_gen_toks": 48}, 1),
        ("mmlu_pro", {"limit": 1, "max_gen_toks": 48}, 1),
    ],
)
def test_agrees_with_plain_lm_eval_on_smollm2(smollm2_dir: Path, name: str, overrides: dict, n_items: int) -> None:
    view = compare_with_plain_lm_eval(smollm2_dir, name, overrides)
    assert_agree(view, n_items)
    means = {m: sum(r.scores[m] for r in view["ours"].values()) / n_items for m in next(iter(view["ours"].values())).scores}
    print(f"\n{name}: ours {means} in {view['ours_s']:.1f}s; plain lm_eval {view['plain_results']} in {view['plain_s']:.1f}s")


def test_requests_go_through_moegates_cache(tiny_dir: Path, tmp_path: Path) -> None:
    """A rerun through CachedBackend asks the model nothing and gives identical records."""
    from harness.backends import open_backend
    from harness.cache import CachedBackend

    cached = CachedBackend(open_backend(str(tiny_dir), "transformers", dtype="float32", device="cpu"), tmp_path / "c.sqlite")
    suite = SUITES.get("gsm8k_cot")()
    settings_ = suite_settings("gsm8k_cot", "ci", {"limit": 1, "max_gen_toks": 8})
    first = suite.run(cached, settings_)
    assert cached.stats.misses == 1 and cached.stats.hits == 0
    second = suite.run(cached, settings_)
    assert cached.stats.misses == 1 and cached.stats.hits == 1
    assert [r.model_dump() for r in first.records] == [r.model_dump() for r in second.records]


@pytest.mark.usefixtures("loud_lm_eval")
def test_a_suite_run_prints_no_lm_eval_info_or_bars(tiny_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """stderr keeps to moegate's lines, even where lm-eval's logging is set up to print INFO."""
    from harness.backends import open_backend

    backend = open_backend(str(tiny_dir), "transformers", dtype="float32", device="cpu")
    capfd.readouterr()
    run = SUITES.get("arc_challenge")().run(backend, suite_settings("arc_challenge", "ci", {"limit": 2}))
    assert len(run.records) == 2
    err = capfd.readouterr().err
    assert "it/s" not in err and "%|" not in err and "Building contexts" not in err, err
