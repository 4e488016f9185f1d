"""Record the baseline's route traces: for every item of every suite, its routing mass per MoE layer and expert.

Called by ``moegate baseline record`` after the suites ran. The text traced per item is what the model
processed: the prompt (through the chat template when the suite chats) plus the baseline's own output
(generation) or the choice it picked (multiple choice); for perplexity suites, the scored window. Each
suite's routes become its ``route_mass.npz`` artifact (``harness.diagnosis.RouteMass``), hashed in the
manifest like the records. A backend that cannot trace routes (openai) is skipped with a stated reason.
Behind the request cache (``CachedBackend``) each suite's encoded routes are cached like any request, keyed by
the model's fingerprint and the exact texts traced: re-recording an unchanged baseline traces nothing again.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from harness.backends.base import Backend, RouteTracingBackend
from harness.cache import CachedBackend, request_key
from harness.diagnosis import ROUTES_ARTIFACT, RouteMass, encode_routes, item_route_mass
from harness.errors import UserError
from harness.records import Artifacts, ItemRecord, SuiteRun

Log = Callable[[str], None]
BATCH = 16
ROUTES_KIND = "route_mass"
"""The request cache's kind for a suite's encoded route masses."""
NO_TRACES = "route traces skipped: the {name} backend cannot see inside the model (no expert diagnosis for this baseline)"


def _chat(backend: Any, prompt: str) -> str:
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return prompt
    return str(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True))


def _answer(record: ItemRecord) -> str:
    if record.output is not None:
        return record.output
    choices, lls = record.meta.get("choices"), record.meta.get("loglikelihoods")
    if isinstance(choices, list) and isinstance(lls, list) and choices and len(choices) == len(lls):
        choice = str(choices[max(range(len(lls)), key=lambda i: lls[i])])
        return choice if choice[:1].isspace() else " " + choice
    return ""


def _window_texts(backend: Any, run: SuiteRun) -> dict[str, str] | None:
    """Perplexity suites: the scored windows' texts (their records hold only a description)."""
    from harness.suites import SUITES
    from harness.suites._common import load_rows
    from harness.suites.perplexity import corpus_text

    suite = SUITES.get(run.suite)()
    cls = getattr(suite, "Settings", None)
    first = run.records[0].meta if run.records else {}
    if cls is None or "chars_sent" not in first or "seq_len" not in first or not hasattr(backend, "tok_encode"):
        return None
    settings = cls.model_validate(run.settings)
    rows, path = load_rows(settings.data_file, settings.data_sha256)
    text = corpus_text(rows, settings, path)[: int(first["chars_sent"])]
    window = min(int(first["seq_len"]), int(getattr(backend, "max_length", first["seq_len"])))
    ids = backend.tok_encode(text)
    chunks = [ids[start:start + window] for start in range(0, len(ids), window)]
    return {f"w{i}": backend.tokenizer.decode(chunk) for i, chunk in enumerate(chunks) if len(chunk) >= 2}


def item_texts(backend: Any, run: SuiteRun) -> list[tuple[str, str]]:
    """(item id, text the model processed) for every record of ``run``."""
    windows = _window_texts(backend, run)
    if windows is not None:
        return [(r.item_id, windows[r.item_id]) for r in run.records if r.item_id in windows]
    chat = bool(run.settings.get("chat"))
    return [(r.item_id, (_chat(backend, r.prompt) if chat else r.prompt) + _answer(r)) for r in run.records]


def trace_suite(backend: RouteTracingBackend, run: SuiteRun, texts: list[tuple[str, str]] | None = None) -> RouteMass:
    """Route masses of every item of ``run`` (``texts``: its ``item_texts``, when already computed)."""
    texts = item_texts(backend, run) if texts is None else texts
    masses, picks, tokens, layers, experts = [], [], [], None, 0
    for start in range(0, len(texts), BATCH):
        batch = texts[start:start + BATCH]
        for trace in backend.route_trace([t for _, t in batch]):
            if layers is None:
                layers, experts = tuple(trace.layers), trace.num_experts
            elif tuple(trace.layers) != layers:
                raise ValueError(f"route trace layers changed within suite {run.suite}")
            m, p = item_route_mass(trace.expert_ids, trace.weights, experts)
            masses.append(m)
            picks.append(p)
            tokens.append(len(trace.expert_ids[0]) if trace.expert_ids else 0)
    shape = (0, len(layers or ()), experts)
    return RouteMass(
        item_ids=tuple(i for i, _ in texts), layers=layers or (),
        mass=np.stack(masses).astype(np.float32) if masses else np.zeros(shape, dtype=np.float32),
        picks=np.stack(picks) if picks else np.zeros(shape, dtype=np.int64),
        tokens=np.array(tokens, dtype=np.int64),
    )  # fmt: skip


def _routes_blob(backend: RouteTracingBackend, run: SuiteRun) -> tuple[bytes, int]:
    """The suite's encoded route masses and its item count, from the request cache when it holds them."""
    if not isinstance(backend, CachedBackend):
        routes = trace_suite(backend, run)
        return encode_routes(routes), len(routes.item_ids)
    texts = item_texts(backend, run)
    key = request_key(backend.fingerprint(), ROUTES_KIND, {"texts": texts, "batch": BATCH})
    found = backend.cache.get_many([key]).get(key)
    if isinstance(found, dict) and isinstance(found.get("blob"), str) and isinstance(found.get("items"), int):
        return base64.b64decode(found["blob"]), found["items"]
    routes = trace_suite(backend, run, texts)
    blob = encode_routes(routes)
    backend.cache.put_many(ROUTES_KIND, [(key, {"blob": base64.b64encode(blob).decode("ascii"), "items": len(routes.item_ids)})])
    return blob, len(routes.item_ids)


def record_routes(backend: Backend, runs: dict[str, SuiteRun], log: Log | None = None) -> dict[str, SuiteRun]:
    """``runs`` with each suite's ``route_mass.npz`` artifact added (the runs unchanged when tracing is impossible)."""
    say = log or (lambda _m: None)
    if not isinstance(backend, RouteTracingBackend):
        say(NO_TRACES.format(name=backend.name))
        return runs
    out: dict[str, SuiteRun] = {}
    start = time.perf_counter()
    for name, run in runs.items():
        if run.error is not None or not run.records:
            out[name] = run
            continue
        try:
            blob, items = _routes_blob(backend, run)
        except UserError as exc:  # a dense model: nothing to trace, said once
            say(f"route traces skipped: {exc.problem}")
            return runs
        artifacts = {key: run.artifacts[key] for key in run.artifacts}
        out[name] = run.model_copy(update={"artifacts": Artifacts({**artifacts, ROUTES_ARTIFACT: blob})})
        say(f"suite {name}: route traces of {items} items ({len(blob) / 1024:.0f} KiB)")
    say(f"route traces recorded in {time.perf_counter() - start:.1f} s")
    return out
