"""Small pieces the native suites share: reading data files with clear errors, choosing items, a run."""

from __future__ import annotations

import gzip
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import UserError
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.resources import data_file
from harness.suites.base import SuiteSettings

T = TypeVar("T")


def read_jsonl(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` or ``.jsonl.gz`` file; a malformed row is a ``UserError`` naming file and line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    rows: list[dict[str, Any]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(
                        f"{path}:{number}: not valid JSON ({exc.msg})", "restore the original file"
                    ) from exc
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{number}: expected a JSON object", "restore the original file")
                missing = [key for key in required if key not in row]
                if missing:
                    raise UserError(
                        f"{path}:{number}: missing field(s) {', '.join(missing)}", "restore the original file"
                    )
                rows.append(row)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})", "restore the original file") from exc
    return rows


def load_rows(name: str, sha256: str, required: Sequence[str] = ()) -> tuple[list[dict[str, Any]], Path]:
    """Checksum-verified rows of the shared data file ``name``."""
    path = data_file(name, sha256)
    return read_jsonl(path, required), path


def choose(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """``limit`` items drawn with ``seed`` (kept in their original order), or all when ``limit`` is None."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}", "fix the suite settings")
    picked = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in picked]


def finish_run(
    suite: str,
    settings: SuiteSettings,
    data_sha256: dict[str, str],
    metrics: Sequence[MetricSpec],
    records: list[ItemRecord],
    started: float,
) -> SuiteRun:
    return SuiteRun(
        suite=suite,
        settings=settings.model_dump(mode="json"),
        data_sha256=data_sha256,
        metrics=list(metrics),
        records=records,
        seconds=time.monotonic() - started,
    )
