"""Python half of moegate's lm-eval task configs (the YAML files beside this one call it via ``!function``).

It says where documents come from (moegate's local benchmark files, or the hub when a run asks for
``source = "hub"``) and converts AI2's original ARC layout to the one lm-eval's ARC prompt reads.
Prompting and filtering functions are lm-eval's own, re-exported, so these tasks score exactly as lm-eval's.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import datasets
from lm_eval.tasks.leaderboard.mmlu_pro.utils import doc_to_choice as mmlu_pro_mc_doc_to_choice
from lm_eval.tasks.leaderboard.mmlu_pro.utils import doc_to_text as mmlu_pro_mc_doc_to_text
from lm_eval.tasks.mmlu_pro.utils import (
    doc_to_text as mmlu_pro_doc_to_text,
)
from lm_eval.tasks.mmlu_pro.utils import (
    fewshot_to_target as mmlu_pro_fewshot_to_target,
)
from lm_eval.tasks.mmlu_pro.utils import (
    fewshot_to_text as mmlu_pro_fewshot_to_text,
)
from lm_eval.tasks.mmlu_pro.utils import (
    process_biology,
    process_business,
    process_chemistry,
    process_computer_science,
    process_economics,
    process_engineering,
    process_health,
    process_history,
    process_law,
    process_math,
    process_other,
    process_philosophy,
    process_physics,
    process_psychology,
)

__all__ = [
    "arc_docs",
    "load",
    "mmlu_pro_doc_to_text",
    "mmlu_pro_fewshot_to_target",
    "mmlu_pro_fewshot_to_text",
    "mmlu_pro_mc_doc_to_choice",
    "mmlu_pro_mc_doc_to_text",
    "process_biology",
    "process_business",
    "process_chemistry",
    "process_computer_science",
    "process_economics",
    "process_engineering",
    "process_health",
    "process_history",
    "process_law",
    "process_math",
    "process_other",
    "process_philosophy",
    "process_physics",
    "process_psychology",
]


def load(
    *,
    data_files: dict[str, str] | None = None,
    hub_path: str | None = None,
    hub_name: str | None = None,
    moegate_source: str = "local",
    moegate_data_dir: str | None = None,
    **_task_metadata: Any,
) -> datasets.DatasetDict:
    """lm-eval's ``custom_dataset`` hook: ``dataset_kwargs`` of the task plus the TaskManager's metadata.

    Local files are read with the ``json`` builder (works offline); ``moegate_data_dir`` defaults to
    moegate's data folder (``MOEGATE_DATA_DIR`` or ``shared/data``).
    """
    if moegate_source == "hub":
        if not hub_path:
            raise ValueError("this task names no hub dataset (dataset_kwargs.hub_path)")
        return datasets.load_dataset(hub_path, hub_name)
    if moegate_source != "local":
        raise ValueError(f"moegate_source must be 'local' or 'hub', not {moegate_source!r}")
    if not data_files:
        raise ValueError("this task names no local files (dataset_kwargs.data_files)")
    if moegate_data_dir is None:
        from harness.resources import data_dir

        moegate_data_dir = str(data_dir())
    files = tuple(sorted((split, str(Path(moegate_data_dir) / name)) for split, name in data_files.items()))
    return _load_json(files)


@functools.lru_cache(maxsize=8)
def _load_json(files: tuple[tuple[str, str], ...]) -> datasets.DatasetDict:
    """One load per file set and process: the 14 MMLU-Pro subject tasks share it."""
    return datasets.load_dataset("json", data_files=dict(files))


def _arc_from_ai2(doc: dict[str, Any]) -> dict[str, Any]:
    choices = doc["question"]["choices"]
    return {
        "id": doc["id"],
        "question": doc["question"]["stem"],
        "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
        "answerKey": doc["answerKey"],
    }


def arc_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """AI2's ARC layout (``question.stem``, ``question.choices``) -> the ``allenai/ai2_arc`` layout.

    Hub rows already have that layout and pass through unchanged.
    """
    if isinstance(dataset.features["question"], datasets.Value):
        return dataset
    return dataset.map(_arc_from_ai2, remove_columns=dataset.column_names)
