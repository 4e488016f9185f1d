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
   (docs.vllm.ai, OpenAI-compatible server, "Tokenizer API"); never from the order. Character offsets
   come from the decoded tokens, and only when they spell the prompt exactly; otherwise the answer is
   refused (a tokenizer whose pieces do not decode on their own cannot be mapped to characters).
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
    keep = [i for i, off in enumerate(offsets) if off < len(prompt)]
    if not keep or offsets[keep[0]] != 0:
        raise ValueError("prompt token offsets do not start at 0 (echo ignored)")
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


def parse_prompt_logprobs(answer: dict[str, Any], prompt: str, token_ids: list[int], shift: int = 0) -> PromptScores:
    """Prompt tokens of a vLLM ``prompt_logprobs`` answer, given the prompt's token ids.

    Position j's entry for the prompt token is ``prompt_logprobs[j][str(token_ids[j])]``. With ``shift`` s
    the log-prob (and rank) of prompt token k is read at position k + s, as in ``parse_echo``; the
    answer has no position after the prompt, so a late-by-one server gives no value for the last token.
    """
    entries = _first_choice(answer).get("prompt_logprobs")
    if not isinstance(entries, list):
        raise ValueError("no choices[0].prompt_logprobs in the answer")
    if len(entries) != len(token_ids):
        raise ValueError(f"{len(entries)} prompt_logprobs entries for {len(token_ids)} prompt tokens")
    if not token_ids:
        raise ValueError("the prompt has no tokens")
    actual: list[dict[str, Any] | None] = [None]
    for j in range(1, len(entries)):
        position = entries[j]
        entry = position.get(str(token_ids[j])) if isinstance(position, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("logprob"), (int, float)) or not isinstance(entry.get("decoded_token"), str):
            raise ValueError(f"prompt_logprobs[{j}] has no entry for the prompt token id {token_ids[j]}")
        actual.append(entry)
    offsets = _offsets(prompt, [str(e["decoded_token"]) for e in actual[1:] if e is not None])
    values: list[float | None] = []
    greedy: list[bool] = []
    for k in range(len(token_ids)):
        i = k + shift
        entry = actual[i] if 0 < i < len(actual) else None
        value = float(entry["logprob"]) if entry is not None else None
        values.append(value)
        greedy.append(entry is not None and _is_top1(entry, entries[i]))
    return PromptScores(offsets, tuple(values), tuple(greedy))


def _is_top1(entry: dict[str, Any], position: dict[str, Any]) -> bool:
    """Rank 1 when the server gives the rank; else no entry of the position (the top-N) beats it."""
    rank = entry.get("rank")
    if isinstance(rank, int) and not isinstance(rank, bool):
        return rank == 1
    others = [e.get("logprob") for e in position.values() if isinstance(e, dict)]
    return all(entry["logprob"] >= v for v in others if isinstance(v, (int, float)))


def _offsets(prompt: str, texts_after_first: list[str]) -> tuple[int, ...]:
    """Start offsets of every prompt token; the first (no entry, no text) covers whatever precedes the rest."""
    if "" in texts_after_first:  # vLLM decodes a partial UTF-8 byte token to "": its characters are lost
        raise ValueError("a prompt token decodes to nothing (a partial UTF-8 character), so tokens cannot be mapped to characters")
    tail = "".join(texts_after_first)
    if not prompt.endswith(tail):
        raise ValueError("the decoded prompt tokens do not spell the prompt, so tokens cannot be mapped to characters")
    position = len(prompt) - len(tail)
    offsets = [0]
    for text in texts_after_first:
        offsets.append(position)
        position += len(text)
    return tuple(offsets)
