"""Build-once cache of the test bed: a settings+inputs hash names the folder, a marker written last says done."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path

from harness.atomic import atomic_dir, atomic_write_text
from harness.resources import cache_dir, data_file, file_sha256
from harness.smollm2 import smollm2_gguf
from harness.testbed._settings import TestbedSettings

COMPLETE_MARKER = ".complete"


def _inputs() -> tuple[Path, Path]:
    from harness.testbed._build import CALIB_FILE

    return smollm2_gguf(), data_file(CALIB_FILE)


def testbed_dir(settings: TestbedSettings | None = None) -> Path:
    """Default cache location: ``cache_dir()/testbed/<hash of settings, source GGUF and calibration file>``."""
    settings = settings or TestbedSettings()
    gguf, calib = _inputs()
    return cache_dir() / "testbed" / settings.key(file_sha256(gguf), file_sha256(calib))


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / "model.safetensors").is_file()


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent builders of the same folder (teammates' tests may race for it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{path.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_testbed(
    out: Path | None = None,
    settings: TestbedSettings | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Return the folder of a complete test bed, building it first if needed.

    Args:
        out: where to put it; default ``testbed_dir(settings)`` in moegate's cache.
        settings: the knobs; default ``TestbedSettings()`` (8 routed experts, top-2, 75% of the neurons shared).
        progress: called with a short message after each fitted layer, and with the build time at the end.
    """
    settings = settings or TestbedSettings()
    target = Path(out) if out is not None else testbed_dir(settings)
    if is_complete(target):
        return target
    with _build_lock(target):
        if is_complete(target):  # another process finished it while we waited
            return target
        from harness.testbed._pinned import build_pinned

        gguf, calib = _inputs()
        with atomic_dir(target, kind="testbed", recognise=lambda old: (old / COMPLETE_MARKER).is_file()) as tmp:
            info = build_pinned(tmp, settings, gguf, calib, progress)
            # fixed content: a rebuild must give the same bytes in every file (the time goes to progress)
            atomic_write_text(tmp / COMPLETE_MARKER, "complete\n")
    if progress:
        progress(f"built in {info['build_seconds']} s")
    return target
