"""What proves a stored baseline is the one recorded: hashes (accidental edits), a pin and a signature (deliberate ones).

- The manifest's sha256 of every records file and artifact catches an accidental edit or a damaged
  copy. It proves nothing against a deliberate edit: whoever edits a records file can rewrite its hash.
- ``[baseline] manifest_sha256`` in the gate file pins the manifest (and through it every records file
  and artifact): changing the baseline then means changing a reviewed file.
- With ``MOEGATE_BASELINE_KEY`` set, every store written is signed (HMAC-SHA256 of its manifest, in
  ``manifest.json.hmac``) and every baseline read is verified; ``[baseline] require_signature = true``
  refuses a baseline without a valid signature. It proves the store was written by someone holding the key.
  ``calibration.json`` beside it (whose churn can widen a budget) is signed and verified the same way;
  the pin does not cover it (it is written after the manifest is pinned).

Records are also checked for values no model can produce (NaN or infinite scores, negative NLL,
windows of no tokens, 0/1 metrics that are neither), which a hand edit leaves behind.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Mapping
from pathlib import Path

from harness.atomic import atomic_write_text
from harness.errors import UserError
from harness.records import SuiteRun

KEY_ENV = "MOEGATE_BASELINE_KEY"
SIGNATURE = "manifest.json.hmac"
PIN_FIX = "if the baseline was re-recorded on purpose, paste the manifest_sha256 line `moegate baseline record` printed into the gate file"


def _key() -> bytes | None:
    key = os.environ.get(KEY_ENV)
    return key.encode("utf-8") if key else None


def signature(manifest: bytes, key: bytes) -> str:
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def sign(store: Path, manifest: bytes) -> None:
    """Write ``manifest.json.hmac`` into ``store`` when ``MOEGATE_BASELINE_KEY`` is set."""
    sign_file(Path(store) / SIGNATURE.removesuffix(".hmac"), manifest)


def sign_file(path: Path, data: bytes) -> None:
    """Write ``<path>.hmac`` (the HMAC of ``data``, which ``path`` holds) when ``MOEGATE_BASELINE_KEY`` is set."""
    key = _key()
    if key is not None:
        atomic_write_text(_signature_path(path), signature(data, key) + "\n")


def verify(store: Path, manifest: bytes, *, pin: str | None = None, require_signature: bool = False) -> None:
    """Refuse a baseline whose manifest differs from the pinned sha256 or whose signature does not verify."""
    store = Path(store)
    if pin is not None:
        actual = hashlib.sha256(manifest).hexdigest()
        if actual != pin.lower():
            raise UserError(f"baseline {store} has manifest sha256 {actual[:16]}…, the gate file pins {pin[:16]}…", PIN_FIX)
    verify_file(store / SIGNATURE.removesuffix(".hmac"), manifest, redo="re-record it",
                require_signature=require_signature)  # fmt: skip


def verify_file(path: Path, data: bytes, *, redo: str, require_signature: bool = False) -> None:
    """Refuse ``data`` (read from ``path``) when ``MOEGATE_BASELINE_KEY`` is set and ``<path>.hmac`` is
    missing or does not match; without the key, refuse only if the gate file requires a signature."""
    key = _key()
    if key is None:
        if require_signature:
            raise UserError(f"the gate file requires a signed baseline and {KEY_ENV} is not set",
                            f"set {KEY_ENV} to the key the baseline was recorded with")
        return
    sig = _signature_path(path)
    if not sig.is_file():
        raise UserError(f"{path} is not signed ({sig.name} missing) and {KEY_ENV} is set",
                        f"{redo} with {KEY_ENV} set, or unset {KEY_ENV}")
    stored = sig.read_text(encoding="ascii", errors="replace").strip()
    if not hmac.compare_digest(stored, signature(data, key)):
        raise UserError(f"{path}: the signature in {sig.name} does not match it under {KEY_ENV}",
                        f"it was changed after it was signed, or signed with another key: {redo}")


def _signature_path(path: Path) -> Path:
    return path.with_name(path.name + ".hmac")


def impossible_value(run: SuiteRun) -> str | None:
    """The first value in ``run``'s records no model can produce, described; None when all are possible."""
    kinds = {m.name: m.kind for m in run.metrics}
    perplexity = any(kind == "perplexity" for kind in kinds.values())
    for record in run.records:
        for name, value in record.scores.items():
            where = f"item {record.item_id} score {name} = {value!r}"
            if not math.isfinite(value):
                return where
            if perplexity and ((name == "nll" and value < 0) or (name == "tokens" and value <= 0)):
                return where
            if kinds.get(name) == "binary" and value not in (0.0, 1.0):
                return where
            if kinds.get(name) == "perplexity" and value <= 0:
                return where
    return None


def check_values(store: Path, runs: Mapping[str, SuiteRun]) -> None:
    for name, run in runs.items():
        found = impossible_value(run)
        if found is not None:
            raise UserError(f"baseline {store}, suite '{name}': {found} is impossible for a model to produce",
                            "the records were edited or damaged: restore them from version control or re-record the baseline")
