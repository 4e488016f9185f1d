"""Which weights a gate compares: the baseline checkpoint its store was recorded from, and a candidate
that may be that very model.

The request cache is keyed by fingerprint, so a candidate whose fingerprint equals the baseline's is
served the baseline's own answers. With every weight byte in the fingerprint that is right for a local
candidate (it *is* the baseline, and the report says so); a served one is only known by its server's
facts and a probe of its answers, so it is evaluated without the cache instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.api.models import resolve_testbed
from harness.backends import Backend
from harness.cache import CachedBackend
from harness.checkpoint._digests import sampled_digest
from harness.checkpoint.fingerprint import content_digest, model_files
from harness.errors import UserError
from harness.resources import cache_dir
from harness.store import Manifest

Log = Callable[[str], None]
LOCAL_BACKENDS = ("transformers", "mlx")


def local_checkpoint(model: str, backend: str, log: Log | None = None) -> Path | None:
    """The checkpoint folder or GGUF file a local backend loads ``model`` from (None for hub ids and servers)."""
    if backend not in LOCAL_BACKENDS:
        return None
    path = Path(resolve_testbed(model, backend, log)).expanduser()
    if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
        return path
    return None


def weights_digest(model: str, backend: str, log: Log | None = None) -> str | None:
    """Every byte of the local checkpoint's model files, hashed (``content_digest``); None when not local."""
    path = local_checkpoint(model, backend, log)
    return content_digest(path) if path is not None else None


def check_baseline_weights(manifest: Manifest, log: Log | None = None) -> None:
    """Refuse a baseline checkpoint whose bytes are not those the store was recorded from.

    A test bed built on another CPU or with other library versions has other bytes (README, "test bed"):
    its candidates would be compared with records of a different model.
    """
    if manifest.weights_digest is None:
        return
    path = local_checkpoint(manifest.model, manifest.backend, log)
    if path is None:
        return
    now = content_digest(path)
    if now != manifest.weights_digest:
        raise UserError(
            f"the baseline checkpoint {path} is not the one the baseline store was recorded from (weights digest "
            f"{now[:12]}, the store's {manifest.weights_digest[:12]})",
            "record the baseline again on this checkpoint (moegate baseline record --gate <gate file>), or point "
            "the gate at the checkpoint the store was recorded from",
        )


def _sampled(path: Path) -> list[tuple[str, str]]:
    files = [path] if path.is_file() else model_files(path)
    return [(f.name, sampled_digest(f)) for f in files]


def same_as_baseline(
    opened: Backend, fingerprint: str, manifest: Manifest, candidate: Path | None, log: Log | None = None,
) -> tuple[Backend, str | None]:  # fmt: skip
    """The backend to evaluate the candidate with, and a report line when it cannot be told from the baseline."""
    if fingerprint != manifest.fingerprint:
        return opened, None
    if opened.name not in LOCAL_BACKENDS:
        uncached = opened.backend if isinstance(opened, CachedBackend) else opened
        return uncached, ("the candidate cannot be told from the baseline by its fingerprint (same server facts and "
                          "probe answers): it is evaluated without the request cache")
    baseline = local_checkpoint(manifest.model, manifest.backend, log)
    if candidate is not None and baseline is not None and _sampled(candidate) != _sampled(baseline):
        raise UserError(
            f"the candidate's fingerprint equals the baseline's, but its files differ from {baseline}'s",
            f"the digest cache is stale: delete {cache_dir() / 'digests'} and rerun",
        )
    return opened, ("the candidate is identical to the baseline (every weight byte, config and tokenizer, and the "
                    "same backend settings): its answers are the baseline's own")
