"""Per-token prompt log-probs from an OpenAI-compatible answer, in either of the two formats servers use.

Both parsers return the same ``PromptScores`` (start offset, log-prob, greedy flag per prompt token), so
the scoring code in ``openai.py`` does not care how the server was asked.

1. **echo + logprobs** (legacy OpenAI completions, vLLM, llama.cpp): ``choices[0].logprobs`` holds
   ``tokens``, ``token_logprobs``, ``top_logprobs`` and ``text_offset`` for the prompt followed by the
   generated tokens; the offsets come from the server.
2. **vLLM's ``prompt_logprobs``** extension (request field ``prompt_logprobs: N``). Format relied on, from
   vLLM's source: ``CompletionResponseChoice.prompt_logprobs: list[dict[int, Logprob] | None]`` and
   ``prompt_token_ids: list[int] | None`` (filled when the request sets ``return_token_ids``)
   (vllm/entrypoints/openai/completion/protocol.py); ``Logprob(logprob, rank, decoded_token)``, the first
   prompt position ``None`` (vllm/logprobs.py, ``create_prompt_logprobs``); each position's dict holds the
   prompt token with its rank in the whole vocabulary plus the top-N with ranks 1..N
   (``append_logprobs_for_next_position``); ``decoded_token`` is ``tokenizer.decode([id])`` of that one
   id, "" for a partial UTF-8 byte (vllm/v1/engine/logprobs.py ``_verify_tokens``). JSON turns the int
   keys into strings. A dict does not say which key is the prompt token (older vLLM put it last, newer
   first), so the prompt token ids must come from ``prompt_token_ids`` or vLLM's ``/tokenize`` route
   (docs.vllm.ai, OpenAI-compatible server, "Tokenizer API"); never from the order. A token that is
   only part of a UTF-8 character decodes to "" and the token that completes the character carries all
   of it (vLLM 0.32 ``_correct_decoded_token``), so the pieces still spell the prompt: a "" token is
   zero-width at the start of its character. Character offsets come from the decoded tokens, and only
   when they spell the prompt exactly; otherwise the answer is refused.

``prompt_positions`` parses each position's whole dict (the prompt token and the top-N), so a caller
that wants teacher-forced top-k distributions reads them from the same parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PromptScores:
    """Per prompt token: start offset in the prompt, log-prob (None for the first), top-1 or not."""

    offsets: tuple[int, ...]
    logprobs: tuple[float | None, ...]
    greedy: tuple[bool, ...]


@dataclass(frozen=True)
class TokenLogprob:
    """One entry of a vLLM ``prompt_logprobs`` position."""

    logprob: float
    rank: int | None
    """Rank in the whole vocabulary (1 = argmax); None when the server does not say."""
    text: str
    """``decoded_token``: "" for a partial UTF-8 character."""


Position = dict[int, TokenLogprob]
"""Token id -> entry: the prompt token of that position plus the server's top-N at it."""


def _first_choice(answer: Any) -> dict[str, Any]:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        raise ValueError("the answer has no choices")
    return choice


def parse_echo(answer: dict[str, Any], prompt: str, shift: int = 0) -> PromptScores:
    """Prompt tokens (offset < len(prompt)) of an echo+logprobs answer in the legacy completions format.

    With ``shift`` s the log-prob of prompt token k is read at position k + s of the answer's list (which
    also holds the generated token, so a late-by-one server still yields the last prompt token).
    """
    choice = _first_choice(answer)
    lp = choice.get("logprobs")
    if not isinstance(lp, dict) or not isinstance(lp.get("text_offset"), list) or not isinstance(lp.get("token_logprobs"), list):
        raise ValueError("no logprobs.text_offset / token_logprobs in the answer")
    if isinstance(choice.get("text"), str) and not choice["text"].startswith(prompt):
        raise ValueError("the answer's text does not start with the prompt (echo ignored)")
    offsets, logprobs, tops = lp["text_offset"], lp["token_logprobs"], lp.get("top_logprobs") or []
    keep = [i for i, off in enumerate(offsets) if isinstance(off, int) and off < len(prompt)]
    if not keep or offsets[keep[0]] != 0:
        raise ValueError("prompt token offsets do not start at 0 (echo ignored)")
    texts = lp.get("tokens") or []
    for k in keep[1:]:  # offsets that do not locate the token's own text (e.g. counted past a BOS) are refused
        piece = texts[k] if k < len(texts) and isinstance(texts[k], str) else ""
        if piece and prompt[offsets[k]: offsets[k] + len(piece)] != piece:
            raise ValueError(f"echo offset {offsets[k]} does not locate token {piece!r} in the prompt")
    values: list[float | None] = []
    greedy: list[bool] = []
    for k in keep:
        i = k + shift
        value = logprobs[i] if 0 < i < len(logprobs) else None
        top = tops[i] if 0 < i < len(tops) and isinstance(tops[i], dict) else {}
        values.append(value)
        greedy.append(value is not None and (not top or value >= max(top.values()) - 1e-5))
    return PromptScores(tuple(offsets[k] for k in keep), tuple(values), tuple(greedy))


def prompt_token_ids(answer: dict[str, Any]) -> list[int] | None:
    """``choices[0].prompt_token_ids`` of a vLLM answer (``return_token_ids``), or None when absent.

    Raises ValueError when the answer has no ``prompt_logprobs`` at all (the server ignored the field), so
    nothing more is asked of a server that does not speak vLLM's extension.
    """
    choice = _first_choice(answer)
    if not isinstance(choice.get("prompt_logprobs"), list):
        raise ValueError("no choices[0].prompt_logprobs in the answer")
    ids = choice.get("prompt_token_ids")
    if isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        return list(ids)
    return None


def prompt_positions(answer: dict[str, Any]) -> list[Position | None]:
    """Every position of ``choices[0].prompt_logprobs`` as token id -> ``TokenLogprob`` (None: the first).

    Position j holds the distribution that predicted prompt token j: the prompt token and the top-N.
    """
    entries = _first_choice(answer).get("prompt_logprobs")
    if not isinstance(entries, list):
        raise ValueError("no choices[0].prompt_logprobs in the answer")
    positions: list[Position | None] = []
    for j, raw in enumerate(entries):
        if raw is None:
            positions.append(None)
            continue
        if not isinstance(raw, dict):
            raise ValueError(f"prompt_logprobs[{j}] is not an object")
        position: Position = {}
        for key, entry in raw.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("logprob"), (int, float)) and str(key).lstrip("-").isdigit()):
                raise ValueError(f"prompt_logprobs[{j}][{key!r}] is not a token id with a log-prob")
            rank = entry.get("rank")
            text = entry.get("decoded_token")
            position[int(key)] = TokenLogprob(float(entry["logprob"]), rank if isinstance(rank, int) and not isinstance(rank, bool) else None,
                                              text if isinstance(text, str) else "")
        positions.append(position)
    return positions


def parse_prompt_logprobs(answer: dict[str, Any], prompt: str | None, token_ids: list[int], shift: int = 0) -> PromptScores:
    """Prompt tokens of a vLLM ``prompt_logprobs`` answer, given the prompt's token ids.

    Position j's entry for the prompt token is ``positions[j][token_ids[j]]``. With ``shift`` s the
    log-prob (and rank) of prompt token k is read at position k + s, as in ``parse_echo``; the answer has
    no position after the prompt, so a late-by-one server gives no value for the last token. With
    ``prompt`` None (the prompt was sent as token ids) no character offsets are made (all zero).
    """
    positions = prompt_positions(answer)
    if len(positions) != len(token_ids):
        raise ValueError(f"{len(positions)} prompt_logprobs entries for {len(token_ids)} prompt tokens")
    if not token_ids:
        raise ValueError("the prompt has no tokens")
    actual: list[TokenLogprob | None] = [None]
    for j in range(1, len(positions)):
        entry = (positions[j] or {}).get(token_ids[j])
        if entry is None:
            raise ValueError(f"prompt_logprobs[{j}] has no entry for the prompt token id {token_ids[j]}")
        actual.append(entry)
    offsets = (0,) * len(token_ids) if prompt is None else _offsets(prompt, [e.text for e in actual[1:] if e is not None])
    values: list[float | None] = []
    greedy: list[bool] = []
    for k in range(len(token_ids)):
        i = k + shift
        entry = actual[i] if 0 < i < len(actual) else None
        values.append(entry.logprob if entry is not None else None)
        greedy.append(entry is not None and _is_top1(entry, positions[i] or {}))
    return PromptScores(offsets, tuple(values), tuple(greedy))


def _is_top1(entry: TokenLogprob, position: Position) -> bool:
    """Rank 1 when the server gives the rank; else no entry of the position (the top-N) beats it."""
    if entry.rank is not None:
        return entry.rank == 1
    return all(entry.logprob >= other.logprob for other in position.values())


def _offsets(prompt: str, texts_after_first: list[str]) -> tuple[int, ...]:
    """Start offsets of every prompt token; the first (no entry, no text) covers whatever precedes the rest.

    A "" piece (part of a UTF-8 character) is zero-width at the start of the character it helps spell.
    """
    tail = "".join(texts_after_first)
    if not prompt.endswith(tail):
        raise ValueError("the decoded prompt tokens do not spell the prompt, so tokens cannot be mapped to characters")
    position = len(prompt) - len(tail)
    offsets = [0]
    for text in texts_after_first:
        offsets.append(position)
        position += len(text)
    return tuple(offsets)


def continuation_tokens(scores: PromptScores, boundary: int, length: int) -> list[int]:
    """Indices of the prompt tokens after character ``boundary`` of a ``length``-character prompt.

    A token belongs to the continuation when it ends past the boundary (one straddling it included) or
    starts at or after it: a zero-width piece of the continuation's first character starts exactly there.
    """
    ends = [*list(scores.offsets[1:]), length]
    return [i for i, (start, end) in enumerate(zip(scores.offsets, ends, strict=True)) if end > boundary or start >= boundary]
