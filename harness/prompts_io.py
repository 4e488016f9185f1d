"""Read calibration / profiling prompt files (``--prompts`` and ``--calib``).

Two formats, chosen by suffix, because people already have both lying around:

- ``.txt``: one prompt per line; blank lines are skipped.
- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line with a string ``text`` field and an optional
  string ``domain`` field (used for the per-domain breakdown); blank lines are skipped.

Every malformed input is a ``UserError`` naming the file (and the line), never a traceback.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

__all__ = ["SUFFIXES", "Prompt", "read_prompts"]

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz")


@dataclass(frozen=True)
class Prompt:
    """One prompt and the domain it came from (``None`` when the file does not say)."""

    text: str
    domain: str | None = None


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".txt"):
        return "txt"
    raise UserError(
        f"prompt file {path} has an unsupported suffix",
        f"use one of {', '.join(SUFFIXES)} (.txt: one prompt per line; .jsonl: objects with a 'text' field)",
    )


def _read_text(path: Path, fmt: str) -> str:
    try:
        if fmt == "jsonl.gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read prompt file {path}: {exc}", "check that the file is intact") from exc
    try:
        return raw.decode("utf-8-sig")  # tolerate a BOM from Windows editors
    except UnicodeDecodeError as exc:
        raise UserError(
            f"prompt file {path} is not UTF-8 (byte {exc.start})", "re-encode the file as UTF-8"
        ) from exc


def _parse_jsonl_line(path: Path, lineno: int, line: str) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}:{lineno}: not valid JSON ({exc.msg})", "write one JSON object per line"
        ) from exc
    if not isinstance(obj, dict):
        raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}",
                        'write objects like {"text": "...", "domain": "..."}')
    text = obj.get("text")
    if not isinstance(text, str):
        found = "missing" if "text" not in obj else f"a {type(text).__name__}"
        raise UserError(f"{path}:{lineno}: field 'text' is {found}, expected a string",
                        "give every line a string 'text' field")
    if not text.strip():
        raise UserError(f"{path}:{lineno}: field 'text' is empty", "drop the line or give it text")
    domain = obj.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise UserError(f"{path}:{lineno}: field 'domain' is a {type(domain).__name__}, expected a string",
                        "make 'domain' a string or leave it out")
    return Prompt(text=text, domain=domain or None)


def read_prompts(path: str | Path) -> list[Prompt]:
    """Read a prompt file into ``Prompt``s, in file order.

    Raises:
        UserError: missing file, unsupported suffix, unreadable/undecodable file, a malformed line
            (naming file and line), or a file holding no prompts.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"prompt file {path} does not exist", "pass an existing .txt or .jsonl[.gz] file")
    if not path.is_file():
        raise UserError(f"prompt file {path} is not a file", "pass a .txt or .jsonl[.gz] file, not a directory")
    fmt = _format_of(path)
    content = _read_text(path, fmt)
    prompts: list[Prompt] = []
    # split on "\n" only: str.splitlines() would also break inside JSON strings at U+2028 and friends.
    for lineno, raw_line in enumerate(content.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if not line.strip():
            continue
        if fmt == "txt":
            prompts.append(Prompt(text=line))
        else:
            prompts.append(_parse_jsonl_line(path, lineno, line))
    if not prompts:
        raise UserError(f"prompt file {path} holds no prompts", "add at least one non-empty prompt")
    return prompts
