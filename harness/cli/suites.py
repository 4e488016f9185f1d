"""``moegate suites``: which suites exist, what they measure, and the exact settings a profile pins."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.errors import UserError
from harness.resources import suites_dir
from harness.suites import SUITES, suite_settings


def _suite_file(name: str) -> dict[str, Any]:
    path = suites_dir() / f"{name}.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})", "fix the file's syntax") from exc


def suite_summary(name: str) -> dict[str, Any]:
    """Name, description, metrics and profiles of one suite (for ``list`` and for reports)."""
    document = _suite_file(name)
    summary: dict[str, Any] = {
        "name": name,
        "description": str(document.get("description", "")),
        "profiles": [p for p in ("ci", "full") if isinstance(document.get(p), dict)],
    }
    try:
        suite_cls = SUITES.get(name)
    except ImportError as exc:  # a suite whose optional dependency is missing: listed, marked unavailable
        summary["metrics"] = []
        summary["unavailable"] = f"{type(exc).__name__}: {exc}"
        return summary
    if not summary["description"]:
        summary["description"] = (
            (suite_cls.__doc__ or "").strip().splitlines()[0] if suite_cls.__doc__ else ""
        )
    summary["metrics"] = [
        {"name": m.name, "kind": m.kind, "higher_is_better": m.higher_is_better} for m in suite_cls.metrics
    ]
    return summary


@click.group("suites")
def suites() -> None:
    """List the evaluation suites and show their pinned settings."""


@suites.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per suite.")
def list_suites(as_json: bool) -> None:
    """Every suite: name, metrics (with direction), profiles, description."""
    for name in SUITES.names():
        summary = suite_summary(name)
        if as_json:
            click.echo(json.dumps(summary, ensure_ascii=False))
            continue
        metrics = ", ".join(
            f"{m['name']} ({'↑' if m['higher_is_better'] else '↓'})" for m in summary["metrics"][:4]
        )
        if len(summary["metrics"]) > 4:
            metrics += f", +{len(summary['metrics']) - 4} more"
        if "unavailable" in summary:
            metrics = f"unavailable ({summary['unavailable']})"
        click.echo(f"{name:<14} {metrics}")
        click.echo(f"{'':<14} profiles: {', '.join(summary['profiles']) or 'defaults only'}")
        if summary["description"]:
            click.echo(f"{'':<14} {summary['description']}")


@suites.command("show")
@click.argument("name")
@click.option("--profile", type=click.Choice(["ci", "full"]), default="ci", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
def show_suite(name: str, profile: str, as_json: bool) -> None:
    """The settings suite NAME runs with under PROFILE (file defaults, then the profile's table)."""
    settings = suite_settings(name, profile)
    summary = suite_summary(name)
    values = settings.model_dump(mode="json")
    if as_json:
        click.echo(
            json.dumps({**summary, "profile": profile, "settings": values}, ensure_ascii=False, indent=2)
        )
        return
    click.echo(f"# {name} [{profile}] — {summary['description']}")
    click.echo(f"# metrics: {', '.join(m['name'] for m in summary['metrics'])}")
    for key, value in values.items():
        click.echo(f"{key} = {json.dumps(value, ensure_ascii=False)}")
