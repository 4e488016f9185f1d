"""One small on-disk cache keyed by file identity, for facts read from a whole file (scans, digests).

An entry is named by the file's path, size, mtime, ctime and inode: a file rewritten in place changes
its mtime and ctime, so its facts are read again. As in git's "racy clean" rule, a file changed in the
last ``RACY_SECONDS`` is never cached: a second write within the same clock tick could keep its
timestamps. An unreadable or unwritable cache only costs the rereading.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from harness.atomic import atomic_write_text
from harness.errors import UserError
from harness.resources import cache_dir

RACY_SECONDS = 2


def entry_for(file: Path, st: os.stat_result, folder: str, version: str) -> Path | None:
    """Where the facts of ``file`` (as of stat ``st``) are cached; None when there is no cache folder."""
    key = f"{version}\0{Path(file).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
    try:
        return cache_dir() / folder / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
    except (OSError, UserError):
        return None


def read_entry(entry: Path | None) -> Any:
    """The cached JSON value, or None when there is none (or it cannot be read)."""
    if entry is None:
        return None
    try:
        return json.loads(entry.read_text(encoding="utf-8")) if entry.is_file() else None
    except (OSError, ValueError):
        return None


def write_entry(entry: Path | None, st: os.stat_result, value: Any) -> None:
    """Cache ``value`` unless the file changed too recently to be trusted by its timestamps."""
    if entry is None or time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) <= RACY_SECONDS * 1e9:
        return
    with contextlib.suppress(UserError, OSError):  # a convenience: a full disk there must not fail the caller
        atomic_write_text(entry, json.dumps(value))
