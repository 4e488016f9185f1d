"""``moegate serve-check URL``: what moegate can use on an OpenAI-compatible server, before gating through it.

The first command to run against a cluster's endpoint. It probes the server (never a local model unless
``--reference`` names one) and prints: the engine and its version, generation, chat template, echo and
prompt log-probs (with top-k), tokenize, max context, whether two identical greedy requests give the same
text, the self-consistency probe of its prompt log-probs, and which suites can run through it. Exit 0 when
it can run every suite of ``--gate`` (without a gate: when it can generate), 2 with the reason otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from harness.errors import UserError


def _yes(value: object) -> str:
    return "[green]yes[/]" if value else "[red]no[/]"


def suite_needs(name: str, settings: object | None = None) -> list[str]:
    """Request kinds suite ``name`` sends (``generate`` becomes ``chat`` when its ``chat`` setting is on; lm-eval
    tasks that apply a chat template need a local tokenizer, which a server does not lend)."""
    from harness.suites import SUITES

    kinds = sorted(getattr(SUITES.get(name), "request_kinds", None) or ())
    chat = bool(getattr(settings, "chat", False))
    local_template = ["local_chat_template"] if getattr(settings, "apply_chat_template", False) else []
    return ["chat" if kind == "generate" and chat else kind for kind in kinds] + local_template


@click.command("serve-check")
@click.argument("url")
@click.option("--model-name", default=None, help="served model name (default: the only one /v1/models lists)")
@click.option("--gate", "gate_path", type=click.Path(path_type=Path), default=None, help="judge the server by this gate's suites")
@click.option("--reference", default=None, help="local checkpoint of the same model: also compare per-token log-probs")
@click.option("--api-key", default=None, envvar="MOEGATE_API_KEY", help="bearer token (or $MOEGATE_API_KEY)")
@click.option("--json", "as_json", is_flag=True, help="print the findings as JSON")
def serve_check(url: str, model_name: str | None, gate_path: Path | None, reference: str | None, api_key: str | None,
                as_json: bool) -> None:
    """Probe the OpenAI-compatible server at URL and say which suites moegate can run through it."""
    from harness.backends import open_backend
    from harness.backends._openai_checks import serve_report
    from harness.backends.openai import OpenAIBackend
    from harness.suites import SUITES, suite_settings

    backend = OpenAIBackend(url, model_name, api_key=api_key, max_retries=2)
    local = open_backend(reference, dtype="float32") if reference else None
    report = serve_report(backend, local)
    if gate_path is not None:
        from harness.api import load_gate

        config = load_gate(gate_path)
        suites = {name: suite_needs(name, settings) for name, settings in config.settings.items()}
    else:
        suites = {name: suite_needs(name, suite_settings(name)) for name in SUITES.names()}
    blocked = {name: reasons for name, kinds in suites.items()
               if (reasons := [f"{k}: {why}" for k in kinds if (why := report.missing(k))] or
                   ([] if kinds else ["the suite does not declare its request kinds"]))}
    if as_json:
        click.echo(json.dumps({**dataclasses.asdict(report), "suites": {n: blocked.get(n, []) for n in suites}},
                              indent=2, default=str))
    else:
        _print(report, suites, blocked)
    if gate_path is not None and blocked:
        name, reasons = next(iter(blocked.items()))
        raise UserError(f"server {backend.base_url} ({backend.model_name}) cannot run {len(blocked)} suite(s) of "
                        f"{gate_path}: {name} needs {reasons[0]}", "serve the model with an engine that can (see `moegate "
                        "serve-check` against vLLM), or drop those suites from the gate")
    if gate_path is None and report.missing("generate") and report.missing("chat"):
        raise UserError(f"server {backend.base_url} ({backend.model_name}) can neither complete nor chat",
                        "check the URL and that the server serves this model")


def _print(report, suites: dict[str, list[str]], blocked: dict[str, list[str]]) -> None:
    caps, info = report.capabilities, report.engine
    table = Table(title=f"{info.base_url}  model {info.model}", show_header=False)
    table.add_column("what")
    table.add_column("found")
    table.add_row("engine", f"{info.engine} {info.version or '(version not told)'}")
    table.add_row("max context", str(info.max_context) if info.max_context else "not told")
    table.add_row("generation (/v1/completions)", _yes(caps.completions))
    table.add_row("chat template (/v1/chat/completions)", _yes(caps.chat))
    table.add_row("echo log-probs", _yes(caps.echo_logprobs))
    table.add_row("prompt log-probs (prompt_logprobs)", _yes(caps.vllm_prompt_logprobs))
    table.add_row("  with top-k", f"k={report.prompt_topk}" if report.prompt_topk else _yes(False))
    table.add_row("scoring asks with", caps.logprobs_via or "[red]nothing (no prompt log-probs)[/]")
    table.add_row("tokenize route", _yes(report.tokenize))
    table.add_row("identical greedy requests, identical text", "n/a" if report.deterministic is None else _yes(report.deterministic))
    if report.consistency is not None:
        c = report.consistency
        found = (f"[green]pass[/] (max |diff| {c.max_abs_diff:.2g} nats over {c.tokens} tokens)" if c.ok
                 else f"[red]FAIL[/]: {c.detail}")
        table.add_row("self-consistency of prompt log-probs", found)
    if report.alignment is not None:
        table.add_row("alignment vs --reference", report.alignment.describe())
    Console().print(table)
    for name, kinds in suites.items():
        reasons = blocked.get(name)
        status = "[green]can run[/]" if not reasons else f"[red]cannot run[/] ({'; '.join(reasons)})"
        Console().print(f"  {name:<14} {', '.join(kinds) or '?':<24} {status}", highlight=False)
