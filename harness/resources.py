"""Where moegate finds its data: the shared benchmark files, the suite and gate definitions, the cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from harness.errors import UserError

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The source checkout this package runs from, if any (editable installs and tests)."""
    candidate = _PACKAGE_DIR.parent
    return candidate if (candidate / "pyproject.toml").is_file() and (candidate / "suites").is_dir() else None


def _definitions_dir(name: str) -> Path:
    """``<name>/`` of the checkout, or its copy packed into the wheel as ``harness/_<name>``."""
    root = repo_root()
    candidates = ([root / name] if root else []) + [_PACKAGE_DIR / f"_{name}"]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        raise UserError(f"moegate's {name}/ directory is missing from this install", "reinstall moegate")
    return found


def suites_dir() -> Path:
    """``suites/``: suite settings, collapse prompts, lm-eval task configs."""
    return _definitions_dir("suites")


def gates_dir() -> Path:
    """``gates/``: the gate files shipped with moegate."""
    return _definitions_dir("gates")


def data_dir() -> Path:
    """The benchmark data folder: ``$MOEGATE_DATA_DIR``, else ``shared/data`` beside the checkout or cwd."""
    env = os.environ.get("MOEGATE_DATA_DIR")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise UserError(f"MOEGATE_DATA_DIR={env} is not a directory", "point it at the folder holding the benchmark files")
        return path
    starts = [Path.cwd(), *([repo_root()] if repo_root() else [])]
    for start in starts:
        for ancestor in [start, *start.parents]:
            for candidate in (ancestor / "shared" / "data", ancestor.parent / "shared" / "data"):
                if candidate.is_dir():
                    return candidate
    raise UserError(
        "benchmark data folder not found (looked for shared/data beside the checkout and the working directory)",
        "set MOEGATE_DATA_DIR to the folder holding gsm8k_test.jsonl and the other benchmark files",
    )


def data_file(name: str, sha256: str | None = None) -> Path:
    """A benchmark file by name, checked against its pinned sha256 when one is given."""
    path = data_dir() / name
    if not path.is_file():
        raise UserError(f"data file {path} is missing", "restore it or set MOEGATE_DATA_DIR to a folder that has it")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise UserError(
                f"data file {path} has sha256 {actual[:12]}…, expected {sha256[:12]}…",
                "restore the original file (see SOURCES.md) or update the pinned sha256 in suites/",
            )
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """moegate's own cache (request cache, test bed): ``$MOEGATE_CACHE_DIR`` or ``~/.cache/moegate``."""
    env = os.environ.get("MOEGATE_CACHE_DIR")
    base = Path(env).expanduser() if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moegate"
    where = f"MOEGATE_CACHE_DIR={env}" if env else f"moegate's cache folder {base}"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{where} is a file, not a folder", "set MOEGATE_CACHE_DIR to a folder (it is created if missing)") from None
    except OSError as exc:
        raise UserError(f"{where} cannot be created ({exc.strerror or exc})", "set MOEGATE_CACHE_DIR to a writable folder") from None
    return base
