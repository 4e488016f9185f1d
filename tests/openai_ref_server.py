"""A small reference OpenAI-compatible server over a transformers model, for the openai backend's tests.

Why it exists: it covers every knob in one fast process (the real engines are in tests/test_engines.py).
It implements the legacy echo format (tokens, token_logprobs, top_logprobs, text_offset) as vLLM 0.32
does: token texts are decoded pieces, "" for part of a UTF-8 character with the whole character on the
token that completes it, and offsets add up their lengths; ``logprobs`` without echo gives the generated
tokens' log-probs (what the self-consistency probe compares with).

It also answers vLLM's ``prompt_logprobs`` extension in vLLM's format (``choices[0].prompt_logprobs``:
``None`` then one dict per prompt token, keyed by token id, holding the prompt token with its rank in the
vocabulary and the top-N with ranks 1..N, each ``{logprob, rank, decoded_token}``; ``prompt_token_ids``
when ``return_token_ids`` is set; token-id prompts) and vLLM's ``/tokenize`` route, so the
plain name offers both ways; the ``-vllm`` names are listed ``owned_by: vllm``, so the backend reads
vLLM's row of the adapter table for them.

Test knobs, so one server process covers every case: the same weights are also served as
``<name>-shifted`` (prompt log-probs one position late, as one llama.cpp build returned them),
``<name>-noecho`` (``echo`` and ``prompt_logprobs`` ignored, like servers without prompt log-probs),
``<name>-vllm`` (``prompt_logprobs`` only, ``echo`` ignored), ``<name>-vllm-noids`` (also no
``prompt_token_ids``, like vLLM before ``return_token_ids``: the ids come from ``/tokenize``) and
``<name>-vllm-shifted`` (the prompt token's log-prob and rank one position late, the first kept) and
``<name>-selfpair`` (echo pairs each prompt token with the prediction made *after* it, as
llama-cpp-python 0.3.36 does for a model without BOS: no shift fits);
``--shift 1`` and ``--no-echo`` do the same for every name; ``--fail-first N`` answers the first N POSTs
with 429 (then 503) to exercise retries; ``--exit-after N`` ends the process at the N+1-th POST (a
dropped server); ``--delay D --jitter S`` delay each model-less answer by D plus up to S seconds (answers
then finish out of order); a model-less server answers ``ok:<prompt>`` and counts requests in flight
(``GET /stats``).

Run: ``python tests/openai_ref_server.py --model DIR --port 8000``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.Lock()
        self.failures_left = args.fail_first
        self.posts = 0
        self.in_flight = self.max_in_flight = 0
        self.model = self.tokenizer = None
        if args.model:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            torch.set_num_threads(1)
            self.tokenizer = AutoTokenizer.from_pretrained(args.model)
            self.model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()

    def ids(self, prompt: str | list[int]) -> list[int]:
        return list(prompt) if isinstance(prompt, list) else list(self.tokenizer(prompt)["input_ids"])

    def complete(self, body: dict[str, Any], prompt: str | list[int]) -> tuple[str, list[int], str]:
        """Greedy continuation of ``prompt``: text, token ids, finish reason."""
        import torch

        tok = self.tokenizer
        ids = torch.tensor([self.ids(prompt)])
        max_tokens = int(body.get("max_tokens") or 16)
        with torch.inference_mode():
            out = self.model.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.eos_token_id,
                                      eos_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        reason = "length"
        if tok.eos_token_id in new:
            new, reason = new[: new.index(tok.eos_token_id)], "stop"
        text = tok.decode(new, skip_special_tokens=True)
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        cuts = [text.find(s) for s in stops if s and s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        return text, new, reason

    def pieces(self, ids: list[int]) -> list[str]:
        """vLLM's token texts: "" while a character is unfinished, then all of it on the completing token."""
        out, done = [], ""
        for k in range(len(ids)):
            text = self.tokenizer.decode(ids[: k + 1]).rstrip("\ufffd")
            out.append(text[len(done):] if text.startswith(done) else "")
            done = text if text.startswith(done) else done
        return out

    def single(self, token: int) -> str:
        text = self.tokenizer.decode([token])
        return "" if text.endswith("\ufffd") else text

    def logprobs(self, ids: list[int], start: int, shift: bool, selfpair: bool = False) -> dict[str, Any]:
        """Legacy-format log-probs of ``ids[start:]`` (start 0: echo, the first token has none)."""
        import torch

        with torch.inference_mode():
            logp = self.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        lps: list[float | None] = [None] + [float(logp[i - int(not selfpair), ids[i]]) for i in range(1, len(ids))]
        tops: list[dict[str, float] | None] = [None]
        for i in range(1, len(ids)):
            best = int(logp[i - 1].argmax())
            tops.append({self.single(best): float(logp[i - 1, best])})
        if shift:
            lps = [None, *lps[:-1]]
            tops = [None, *tops[:-1]]
        pieces = self.pieces(ids)
        offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(ids))]
        return {"tokens": pieces[start:], "token_logprobs": lps[start:], "top_logprobs": tops[start:],
                "text_offset": offsets[start:]}

    def prompt_logprobs(self, prompt: str | list[int], top_n: int, shift: bool) -> tuple[list[int], list[dict[str, Any] | None]]:
        """vLLM-format prompt log-probs: the prompt token first (its rank in the vocabulary), then the top-N."""
        import torch

        ids = self.ids(prompt)
        pieces = self.pieces(ids)
        with torch.inference_mode():
            logp = self.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        entries: list[dict[str, Any] | None] = [None]
        for i in range(1, len(ids)):
            row, actual = logp[i - 1], ids[i]
            value = float(row[actual])
            entry = {str(actual): {"logprob": value, "rank": 1 + int((row > row[actual]).sum()),
                                   "decoded_token": pieces[i]}}
            top = torch.topk(row, top_n)
            for rank, (v, t) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), start=1):
                entry.setdefault(str(t), {"logprob": float(v), "rank": rank, "decoded_token": self.single(t)})
            entries.append(entry)
        if shift:  # value and rank of the prompt token one position late; keys and texts stay
            late = [None, None, *[e[str(ids[i])] for i, e in enumerate(entries[1:-1], start=1) if e is not None]]
            for i in range(2, len(ids)):
                entries[i][str(ids[i])] = {**late[i], "decoded_token": entries[i][str(ids[i])]["decoded_token"]}
        return ids, entries


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                knobs = ["shifted", "noecho", "vllm", "vllm-noids", "vllm-shifted", "selfpair"] if state.model else []
                names = [state.args.name] + [f"{state.args.name}-{k}" for k in knobs]
                self._send(200, {"object": "list", "data": [
                    {"id": n, "object": "model", "created": 0, "max_model_len": state.args.max_len,
                     **({"owned_by": "vllm"} if "-vllm" in n else {})} for n in names]})
            elif self.path == "/stats":
                self._send(200, {"posts": state.posts, "max_in_flight": state.max_in_flight})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            with state.lock:
                state.posts += 1
                if state.args.exit_after and state.posts > state.args.exit_after:
                    os._exit(0)  # a dropped server: the connection closes without an answer
                fail = state.failures_left > 0
                if fail:
                    state.failures_left -= 1
                    status = 429 if state.failures_left % 2 == 1 or state.args.fail_first == 1 else 503
            if fail:
                self._send(status, {"error": "busy"}, {"Retry-After": "0"} if status == 429 else None)
                return
            path = self.path.rstrip("/")
            name = str(body.get("model", ""))
            if state.model is None:
                with state.lock:
                    state.in_flight += 1
                    state.max_in_flight = max(state.max_in_flight, state.in_flight)
                time.sleep(state.args.delay + random.uniform(0, state.args.jitter))
                with state.lock:
                    state.in_flight -= 1
                self._send(200, {"choices": [{"text": f"ok:{body.get('prompt')}", "finish_reason": "length"}],
                                 "usage": {"completion_tokens": 1}})
                return
            if path == "/v1/completions" and len(state.ids(body["prompt"])) + int(body.get("max_tokens") or 16) > state.args.max_len:
                n = len(state.ids(body["prompt"]))
                self._send(400, {"object": "error", "message": f"This model's maximum context length is {state.args.max_len} "
                                 f"tokens. However, you requested {n + int(body.get('max_tokens') or 16)} tokens.", "code": 400})
                return
            with state.lock:  # one forward at a time (torch threads are already few)
                if path == "/v1/completions":
                    prompt = body["prompt"]
                    text, new, reason = state.complete(body, prompt)
                    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
                    no_echo = state.args.no_echo or name.endswith("-noecho") or "-vllm" in name
                    shift = bool(state.args.shift) or name.endswith("-shifted")
                    if body.get("echo") and not no_echo:
                        choice["text"] = (prompt if isinstance(prompt, str) else state.tokenizer.decode(prompt)) + text
                        if body.get("logprobs") is not None:
                            choice["logprobs"] = state.logprobs(state.ids(prompt) + new, 0, shift, name.endswith("-selfpair"))
                    elif body.get("logprobs") is not None and new:  # the generated tokens' own log-probs, never shifted
                        choice["logprobs"] = state.logprobs(state.ids(prompt) + new, len(state.ids(prompt)), False)
                    if body.get("prompt_logprobs") is not None and not name.endswith("-noecho"):
                        ids, choice["prompt_logprobs"] = state.prompt_logprobs(prompt, int(body["prompt_logprobs"]), shift)
                        if body.get("return_token_ids") and not name.endswith("-noids"):
                            choice["prompt_token_ids"] = ids
                elif path == "/tokenize" and not name.endswith("-noecho") and "messages" in body:  # vLLM's chat form
                    text = state.tokenizer.apply_chat_template(body["messages"], tokenize=False,
                                                               add_generation_prompt=body.get("add_generation_prompt", True))
                    ids = state.tokenizer(text, add_special_tokens=body.get("add_special_tokens", False))["input_ids"]
                    self._send(200, {"count": len(ids), "max_model_len": state.args.max_len, "tokens": list(ids)})
                    return
                elif path == "/tokenize" and not name.endswith("-noecho"):
                    ids = state.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
                    self._send(200, {"count": len(ids), "max_model_len": state.args.max_len, "tokens": list(ids)})
                    return
                elif path == "/v1/chat/completions":
                    prompt = state.tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
                    text, new, reason = state.complete(body, prompt)
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                else:
                    self._send(404, {"error": "not found"})
                    return
            self._send(200, {"object": "text_completion", "model": state.args.name, "choices": [choice],
                             "usage": {"completion_tokens": len(new)}})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="", help="HF model folder (empty: a model-less server for retry tests)")
    parser.add_argument("--name", default="ref")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--shift", type=int, default=0)
    parser.add_argument("--no-echo", action="store_true")
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--exit-after", type=int, default=0)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(State(args)))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
