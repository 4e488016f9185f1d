"""Benchmarks through lm-eval itself: ARC-Challenge, GSM8K (+ chat/CoT), MMLU-Pro (CoT and multiple choice).

lm-eval's own task logic (``suites/lm_eval/*.yaml``, copies of lm-eval's task files that read moegate's
local data) runs through ``MoegateLM``, so every request goes through moegate's backend and cache. A seeded
subset is chosen by stable dataset ids and passed as lm-eval's ``samples``; lm-eval's logged samples then
become one ``ItemRecord`` per document, with lm-eval's per-sample metrics as the item's scores.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field

from harness.backends.base import Backend
from harness.errors import UserError
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.resources import data_dir, data_file, suites_dir
from harness.suites.base import ChosenItems, SuiteSettings, as_settings

TASKS_DIR_NAME = "lm_eval"
"""``suites/lm_eval``: moegate's lm-eval task configs."""


class LmEvalSettings(ChosenItems):
    """Pinned settings of an lm-eval suite (defaults in ``suites/<name>.toml``)."""

    source: Literal["local", "hub"] = "local"
    """``local``: moegate's benchmark files (checked against ``data_sha256``); ``hub``: the HF datasets."""
    data_sha256: dict[str, str] = Field(default_factory=dict)
    """Every local file the tasks read -> its sha256."""
    num_fewshot: int | None = None
    """Few-shot examples (None: the task's default)."""
    fewshot_seed: int = 1234
    """lm-eval's ``fewshot_random_seed`` (which examples the random sampler draws)."""
    max_gen_toks: int | None = None
    """Generation budget (None: the task's, else 256 as in lm-eval's HFLM)."""
    temperature: float = 0.0
    """0: greedy (lm-eval's default for these tasks); > 0 samples with this temperature."""
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None


def _sha_id(field: str) -> Callable[[Mapping[str, Any]], str]:
    def item_id(doc: Mapping[str, Any]) -> str:
        return hashlib.sha256(str(doc[field]).encode("utf-8")).hexdigest()[:16]

    return item_id


def _field_id(field: str) -> Callable[[Mapping[str, Any]], str]:
    def item_id(doc: Mapping[str, Any]) -> str:
        return str(doc[field])

    return item_id


def task_manager(settings: LmEvalSettings) -> Any:
    """lm-eval's TaskManager over ``suites/lm_eval`` with the data source in the tasks' metadata."""
    from lm_eval.tasks import TaskManager

    metadata: dict[str, Any] = {"moegate_source": settings.source}
    if settings.source == "local":
        metadata["moegate_data_dir"] = str(data_dir())
    return TaskManager(include_path=str(suites_dir() / TASKS_DIR_NAME), include_defaults=False, metadata=metadata)


def check_data_files(settings: LmEvalSettings) -> dict[str, str]:
    """Every pinned local file exists and matches its sha256 (before lm-eval reads any of them)."""
    for file, sha in settings.data_sha256.items():
        data_file(file, sha)
    return dict(settings.data_sha256)


def check_pinned(tasks: Mapping[str, Any], settings: LmEvalSettings, suite: str) -> None:
    """Every local file a task reads must be pinned in the suite's settings."""
    for name, task in tasks.items():
        for file in ((task.config.dataset_kwargs or {}).get("data_files") or {}).values():
            if file not in settings.data_sha256:
                raise UserError(f"lm-eval task {name} reads {file}, which suite '{suite}' does not pin",
                                f"add its sha256 under [data_sha256] in suites/{suite}.toml")


def select_samples(
    tasks: Mapping[str, Any],
    item_id: Callable[[Mapping[str, Any]], str],
    *,
    limit: int | None,
    seed: int,
    item_ids: list[str] | None = None,
) -> dict[str, list[int]]:
    """Doc indices per task (lm-eval's ``samples``): ``item_ids``, else ``limit`` items ranked by a seeded
    hash of their ids (so the subset for n items is a prefix of the one for n+1), else all."""
    where: dict[str, tuple[str, int]] = {}
    for name, task in tasks.items():
        docs = task.eval_docs
        # a datasets.Dataset converts whole columns at once, ~10x faster than its row-by-row iterator
        # (12,032 MMLU-Pro docs: 0.03 s vs 0.31 s); item ids read plain text or number fields
        rows = docs.to_list() if hasattr(docs, "to_list") else docs
        for index, doc in enumerate(rows):
            key = item_id(doc)
            if key in where:
                raise UserError(f"item id {key} appears twice (task {name})", "fix the data file")
            where[key] = (name, index)
    if item_ids is not None:
        missing = [i for i in item_ids if i not in where]
        if missing:
            raise UserError(f"item id(s) {missing[:3]} are not in the data", "fix item_ids in the suite settings")
        chosen = list(dict.fromkeys(item_ids))
    elif limit is not None and limit < len(where):
        if limit < 1:
            raise UserError(f"limit {limit} is not positive", "set limit to at least 1")
        chosen = sorted(where, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())[:limit]
    else:
        chosen = list(where)
    samples: dict[str, list[int]] = {}
    for key in chosen:
        name, index = where[key]
        samples.setdefault(name, []).append(index)
    return {name: sorted(indices) for name, indices in samples.items()}


def records_from_samples(
    suite: str,
    logged: Mapping[str, list[dict[str, Any]]],
    *,
    item_id: Callable[[Mapping[str, Any]], str],
    score_names: Mapping[tuple[str, str], str],
    group: Callable[[Mapping[str, Any]], str | None] = lambda doc: None,
    lang: str = "en",
) -> list[ItemRecord]:
    """One record per document from lm-eval's logged samples (one logged sample per doc and filter)."""
    records: dict[str, ItemRecord] = {}
    for task_name, samples in logged.items():
        for sample in samples:
            doc = sample["doc"]
            key = item_id(doc)
            record = records.get(key)
            if record is None:
                record = records[key] = _new_record(suite, task_name, key, sample, group(doc), lang)
            flt = str(sample["filter"])
            for metric in sample["metrics"]:
                name = score_names.get((metric, flt))
                if name is not None:
                    record.scores[name] = float(sample[metric])
            if record.output is not None:
                record.meta.setdefault("extracted", {})[flt] = _plain(sample["filtered_resps"][0])
    return list(records.values())


def _new_record(suite: str, task: str, key: str, sample: dict[str, Any], group: str | None, lang: str) -> ItemRecord:
    arguments = sample["arguments"]
    meta: dict[str, Any] = {"task": task, "doc_id": sample["doc_id"], "doc_hash": sample["doc_hash"],
                            "prompt_hash": sample["prompt_hash"]}
    target = sample["target"]
    output: str | None = None
    if arguments and isinstance(arguments[0][1], dict):  # generate_until
        output = str(sample["resps"][0][0])
        reference = str(target)
    else:  # multiple choice: one loglikelihood request per choice
        choices = [str(args[1]) for args in arguments]
        meta["choices"] = choices
        meta["loglikelihoods"] = [float(resp[0][0]) for resp in sample["resps"]]
        meta["is_greedy"] = [bool(resp[0][1]) for resp in sample["resps"]]
        in_range = isinstance(target, int) and 0 <= target < len(choices)
        reference = choices[target].strip() if in_range else str(target)
    return ItemRecord(suite=suite, item_id=key, prompt=str(arguments[0][0]), output=output, reference=reference,
                      group=group, lang=lang, meta=meta)


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def simple_evaluate_kwargs(settings: LmEvalSettings) -> dict[str, Any]:
    """The ``lm_eval.simple_evaluate`` arguments a suite's settings pin (model, tasks and samples aside).

    Public so that a plain lm-eval run (``model="hf"``) can be made with exactly the same settings.
    """
    gen_kwargs: dict[str, Any] = {}
    if settings.max_gen_toks is not None:
        gen_kwargs["max_gen_toks"] = settings.max_gen_toks
    if settings.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=settings.temperature)
    return {
        "num_fewshot": settings.num_fewshot,
        "gen_kwargs": gen_kwargs or None,
        "log_samples": True,
        "bootstrap_iters": 0,
        "apply_chat_template": settings.apply_chat_template,
        "fewshot_as_multiturn": settings.fewshot_as_multiturn,
        "system_instruction": settings.system_instruction,
        "random_seed": settings.seed,
        "fewshot_random_seed": settings.fewshot_seed,
    }


def run_lm_eval(backend: Backend, settings: LmEvalSettings, task_names: tuple[str, ...], *, suite: str,
                item_id: Callable[[Mapping[str, Any]], str]) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Run lm-eval tasks through ``backend``: (lm-eval's results dict, data sha256s, task versions)."""
    from lm_eval import evaluator

    from harness.lm_eval_adapter import MoegateLM, quiet_lm_eval

    shas = check_data_files(settings) if settings.source == "local" else {}
    with quiet_lm_eval(), _no_environment_probe(evaluator):
        manager = task_manager(settings)
        loaded = manager.load(list(task_names))["tasks"]
        if settings.source == "local":
            check_pinned(loaded, settings, suite)
        samples = select_samples(loaded, item_id, limit=settings.limit, seed=settings.seed, item_ids=settings.item_ids)
        # a task run whole needs no index list (lm-eval tests membership in a list per document)
        partial = {name: idx for name, idx in samples.items() if len(idx) < len(loaded[name].eval_docs)}
        results = evaluator.simple_evaluate(
            model=MoegateLM(backend, seed=settings.seed),
            tasks=[loaded[name] for name in loaded if name in samples],
            samples=partial or None,
            task_manager=manager,
            **simple_evaluate_kwargs(settings),
        )
    versions = {name: str((loaded[name].config.metadata or {}).get("version")) for name in samples}
    return results, shas, versions


@contextlib.contextmanager
def _no_environment_probe(evaluator: Any) -> Iterator[None]:
    """Skip lm-eval's environment report (torch's ``collect_env`` runs ``pip list`` and more in subprocesses).

    It cost ~0.5 s of every suite run, most of a cached rerun's time, and moegate records its own
    environment in the baseline manifest; nothing reads lm-eval's copy.
    """
    saved = evaluator.add_env_info, evaluator.get_git_commit_hash
    evaluator.add_env_info, evaluator.get_git_commit_hash = (lambda _results: None), (lambda: None)
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = saved


class _LmEvalSuite:
    """Shared run(): subclasses name the lm-eval tasks, the item id, and which lm-eval metrics to keep."""

    name: ClassVar[str]
    request_kinds: ClassVar[frozenset[str]]
    Settings: ClassVar[type[LmEvalSettings]] = LmEvalSettings
    metrics: ClassVar[tuple[MetricSpec, ...]]
    tasks: ClassVar[tuple[str, ...]]
    item_id: ClassVar[Callable[[Mapping[str, Any]], str]]
    score_names: ClassVar[Mapping[tuple[str, str], str]]

    @staticmethod
    def group(doc: Mapping[str, Any]) -> str | None:
        return None

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        settings = as_settings(settings, self.Settings)
        start = time.perf_counter()
        item_id = type(self).item_id
        results, shas, versions = run_lm_eval(backend, settings, self.tasks, suite=self.name, item_id=item_id)
        records = records_from_samples(self.name, results["samples"], item_id=item_id,
                                       score_names=self.score_names, group=self.group)
        return SuiteRun(
            suite=self.name,
            settings={**settings.model_dump(), "lm_eval_tasks": versions},
            data_sha256=shas,
            metrics=list(self.metrics),
            records=records,
            seconds=time.perf_counter() - start,
        )


def _acc(name: str, what: str) -> MetricSpec:
    return MetricSpec(name=name, kind="binary", higher_is_better=True, scale=100.0, description=what)


_GSM8K_SCORES = {("exact_match", "strict-match"): "exact_match_strict",
                 ("exact_match", "flexible-extract"): "exact_match_flexible"}
_GSM8K_METRICS = (_acc("exact_match_strict", "final answer in the task's strict format"),
                  _acc("exact_match_flexible", "last number in the output"))
MMLU_PRO_SUBJECTS = ("biology", "business", "chemistry", "computer_science", "economics", "engineering", "health",
                     "history", "law", "math", "other", "philosophy", "physics", "psychology")


class ArcChallengeSuite(_LmEvalSuite):
    """lm-eval's arc_challenge: loglikelihood of each choice text (acc, and acc_norm by byte length)."""

    name = "arc_challenge"
    request_kinds = frozenset({"loglikelihood"})
    tasks = ("moegate_arc_challenge",)
    item_id = staticmethod(_field_id("id"))
    score_names: ClassVar = {("acc", "none"): "acc", ("acc_norm", "none"): "acc_norm"}
    metrics = (_acc("acc", "accuracy"), _acc("acc_norm", "accuracy, choice loglikelihood per byte"))


class Gsm8kSuite(_LmEvalSuite):
    """lm-eval's gsm8k: 5-shot generation, strict ("#### N") and flexible (last number) exact match."""

    name = "gsm8k"
    request_kinds = frozenset({"generate"})
    tasks = ("moegate_gsm8k",)
    item_id = staticmethod(_sha_id("question"))
    score_names = _GSM8K_SCORES
    metrics = _GSM8K_METRICS


class Gsm8kCotSuite(_LmEvalSuite):
    """lm-eval's gsm8k_cot_llama: chat-templated chain of thought, "The final answer is N"."""

    name = "gsm8k_cot"
    request_kinds = frozenset({"generate"})
    tasks = ("moegate_gsm8k_cot",)
    item_id = staticmethod(_sha_id("question"))
    score_names = _GSM8K_SCORES
    metrics = _GSM8K_METRICS


class MmluProSuite(_LmEvalSuite):
    """lm-eval's mmlu_pro: generative 5-shot CoT per subject; subject kept as the item's cluster."""

    name = "mmlu_pro"
    request_kinds = frozenset({"generate"})
    tasks = tuple(f"moegate_mmlu_pro_{s}" for s in MMLU_PRO_SUBJECTS)
    item_id = staticmethod(_field_id("question_id"))
    score_names: ClassVar = {("exact_match", "custom-extract"): "exact_match"}
    metrics = (_acc("exact_match", "letter after 'answer is' matches"),)

    @staticmethod
    def group(doc: Mapping[str, Any]) -> str | None:
        return str(doc["category"])


class MmluProMcSuite(_LmEvalSuite):
    """lm-eval's leaderboard_mmlu_pro: loglikelihood of option letters after 5 validation shots."""

    name = "mmlu_pro_mc"
    request_kinds = frozenset({"loglikelihood"})
    tasks = ("moegate_mmlu_pro_mc",)
    item_id = staticmethod(_field_id("question_id"))
    score_names: ClassVar = {("acc", "none"): "acc"}
    metrics = (_acc("acc", "accuracy over option letters"),)

    @staticmethod
    def group(doc: Mapping[str, Any]) -> str | None:
        return str(doc["category"])
