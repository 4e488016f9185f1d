"""``moegate detect``: run the silent-failure detectors on generated outputs (JSONL), optionally
against a baseline's outputs for the same ids. Exit 0 whether or not anything is flagged: the gate
decides what a flag costs; exit 2 when an input line cannot be read."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from harness.detectors import FLAGS, DetectInput, DetectResult
from harness.detectors import detect as detect_item
from harness.errors import UserError

_FIELDS = {"id", "prompt", "response", "lang", "min_len", "tokens", "finish_reason"}


def _parse_line(path: Path, lineno: int, line: str) -> DetectInput:
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg})", "write one JSON object per line") from None
    if not isinstance(obj, dict):
        raise UserError(
            f"{where}: expected a JSON object, got {type(obj).__name__}", "write one object per line"
        )
    for key in ("id", "response"):
        if key not in obj:
            raise UserError(f"{where}: missing field {key!r}", 'each line needs "id" and "response"')
    if isinstance(obj["id"], int) and not isinstance(obj["id"], bool):
        obj["id"] = str(obj["id"])
    if obj.get("min_len") is not None and (
        not isinstance(obj["min_len"], int) or isinstance(obj["min_len"], bool)
    ):
        raise UserError(
            f"{where}: min_len must be an integer, got {obj['min_len']!r}", 'write e.g. "min_len": 40'
        )
    try:
        return DetectInput.model_validate({k: v for k, v in obj.items() if k in _FIELDS})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{where}: field {field!r}: {err['msg']}", "fix the value on that line") from None


def read_inputs(path: Path) -> list[DetectInput]:
    """Every line of a detect JSONL file; blank lines are skipped. Raises ``UserError`` naming the line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}", "check the path") from None
    items: list[DetectInput] = []
    seen: dict[str, int] = {}
    for lineno, bline in enumerate(raw.split(b"\n"), start=1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{path}:{lineno}: not UTF-8 (byte {exc.start})", "save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        item = _parse_line(path, lineno, line.lstrip("\ufeff"))
        if item.id in seen:
            raise UserError(
                f"{path}:{lineno}: duplicate id {item.id!r} (first on line {seen[item.id]})",
                "make ids unique",
            )
        seen[item.id] = lineno
        items.append(item)
    return items


def run_detect(candidates: list[DetectInput], baselines: list[DetectInput] | None) -> dict[str, Any]:
    """The ``--json`` document: per-item flags and details, and a count per flag."""
    by_id = {b.id: b for b in baselines or []}
    results: list[DetectResult] = [detect_item(c, by_id.get(c.id)) for c in candidates]
    counts = Counter(f for r in results for f in r.flags)
    return {
        "items": [{"id": r.id, "flags": list(r.flags), "details": r.details} for r in results],
        "summary": {flag: counts.get(flag, 0) for flag in FLAGS},
        "paired": sum(c.id in by_id for c in candidates),
    }


def _short(details: dict[str, Any]) -> str:
    """One line of evidence per flag for the table."""
    parts = []
    for flag, ev in details.items():
        if flag == "script_mixing":
            parts.append(f"{flag}: " + " ".join(f"{o['chars']}({o['script']})" for o in ev["offending"][:3]))
        elif flag == "wrong_language":
            parts.append(f"{flag}: {ev['detected']} {ev['confidence']:.2f} (expected {ev['expected']})")
        elif flag == "denial":
            parts.append(f"{flag}: " + "; ".join(ev["phrases"][:2]))
        elif "ratio" in ev:
            parts.append(f"{flag}: ratio {ev['ratio']}")
        else:
            parts.append(flag)
    return "\n".join(parts)


@click.command("detect")
@click.option(
    "--candidate",
    "candidate",
    type=click.Path(path_type=Path),
    required=True,
    help="JSONL: {id, prompt, response, lang?, min_len?} per line.",
)
@click.option(
    "--baseline",
    "baseline",
    type=click.Path(path_type=Path),
    default=None,
    help="The baseline's JSONL for the same ids (enables low_diversity, length_collapse, denial).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a table.")
def detect(candidate: Path, baseline: Path | None, as_json: bool) -> None:
    """Flag silent failures (script mixing, wrong language, loops, collapse, denial) in generated outputs."""
    cands = read_inputs(candidate)
    bases = read_inputs(baseline) if baseline is not None else None
    doc = run_detect(cands, bases)
    if as_json:
        click.echo(json.dumps({"items": doc["items"], "summary": doc["summary"]}, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"moegate detect: {candidate}" + (f" vs {baseline}" if baseline else ""))
    table.add_column("id")
    table.add_column("flags")
    table.add_column("evidence", overflow="fold")
    for item in doc["items"]:
        if item["flags"]:
            table.add_row(item["id"], ", ".join(item["flags"]), _short(item["details"]))
    if table.row_count:
        console.print(table)
    flagged = sum(bool(i["flags"]) for i in doc["items"])
    counts = ", ".join(f"{f}={n}" for f, n in doc["summary"].items() if n) or "none"
    paired = f", {doc['paired']} paired with the baseline" if bases is not None else ""
    console.print(f"{flagged}/{len(doc['items'])} items flagged{paired}; flags: {counts}")
