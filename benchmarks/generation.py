"""Greedy generation on the test bed: model.generate (the old path) vs moegate's decoding loop vs transformers'
continuous batching (``model.generate_batch``), on a gate's own generation requests.

The requests are those the suites send (recorded from a run against a backend that answers instantly): the
gsm8k suite's (lm-eval's gsm8k task, the suite's few-shot prompts and stop strings, ``--limit`` items, the ci
profile's budget) and the collapse suite's prompts of gates/testbed.toml. Each method runs in ABBA order
(``--repeats`` rounds of forward then reverse order); the script prints each method's time, the ratios to
the old path, and whether the outputs agree with the old path's: texts and token counts per request, and
where they differ the first differing character.

``generate_batch`` has no stop strings: it runs each row to EOS or the budget and the text is cut afterwards
(``finish``), so its token counts are not comparable, only its texts.

    python benchmarks/generation.py --limit 8 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tomllib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.backends._generation import finish, generate_with_model
from harness.backends.base import GenerateRequest, Generation
from harness.backends.transformers import TransformersBackend
from harness.suites import SUITES, suite_settings

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """A backend that keeps the generation requests a suite sends and answers them at once."""

    name = "recorder"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.requests: list[GenerateRequest] = []

    def fingerprint(self) -> str:
        return "recorder"

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        self.requests.extend(requests)
        return [Generation(" the", 1, "length") for _ in requests]


def suite_requests(tokenizer: Any, limit: int) -> dict[str, list[GenerateRequest]]:
    """The gsm8k suite's requests (ci profile, ``limit`` items) and the test bed gate's collapse requests."""
    gate = tomllib.loads((ROOT / "gates" / "testbed.toml").read_text(encoding="utf-8"))["suites"]["collapse"]
    plans = {
        "gsm8k": suite_settings("gsm8k", "ci", {"limit": limit}),
        "collapse": suite_settings("collapse", gate.get("profile", "ci"), {"item_ids": gate["item_ids"]}),
    }
    out = {}
    for name, settings in plans.items():
        recorder = Recorder(tokenizer)
        run = SUITES.get(name)().run(recorder, settings)  # type: ignore[arg-type]
        if run.error:
            raise SystemExit(f"{name}: {run.error}")
        out[name] = recorder.requests
    return out


def old_path(backend: TransformersBackend, requests: Sequence[GenerateRequest]) -> list[Generation]:
    """The backend's generation before the loop: model.generate on each sorted batch of a group."""
    eos_ids = backend._eos_ids()
    pad = backend.tokenizer.pad_token_id if backend.tokenizer.pad_token_id is not None else eos_ids[0]
    results: dict[int, Generation] = {}
    for members in groups(requests).values():
        req = requests[members[0]]
        prompts = cut_prompts(backend, requests, members)
        for start in range(0, len(members), backend.batch_size):
            chunk = members[start:start + backend.batch_size]
            news = generate_with_model(backend.model, backend.tokenizer, backend.device, [prompts[i] for i in chunk],
                                       req, eos_ids, pad)
            results.update((i, finish(backend.tokenizer, new, req, eos_ids)) for i, new in zip(chunk, news, strict=True))
    return [results[i] for i in range(len(requests))]


def continuous_batching(backend: TransformersBackend, requests: Sequence[GenerateRequest]) -> list[Generation]:
    """transformers' ``generate_batch`` (paged attention, continuous batching) per group, texts cut afterwards."""
    import torch
    from transformers import GenerationConfig

    eos_ids = backend._eos_ids()
    results: dict[int, Generation] = {}
    for members in groups(requests).values():
        req = requests[members[0]]
        prompts = cut_prompts(backend, requests, members)
        config = GenerationConfig(max_new_tokens=req.max_tokens, do_sample=False, eos_token_id=eos_ids,
                                  pad_token_id=backend.tokenizer.pad_token_id)
        with torch.inference_mode():
            out = backend.model.generate_batch([prompts[i] for i in members], generation_config=config, warmup=False)
        rows = sorted(out.values(), key=lambda o: int(o.request_id.removeprefix("req_")))
        for i, row in zip(members, rows, strict=True):
            results[i] = finish(backend.tokenizer, row.generated_tokens, req, eos_ids)
    return [results[i] for i in range(len(requests))]


def groups(requests: Sequence[GenerateRequest]) -> dict[tuple[Any, ...], list[int]]:
    """Request indices by (stop strings, budget), as the backend groups greedy requests."""
    out: dict[tuple[Any, ...], list[int]] = {}
    for i, req in enumerate(requests):
        out.setdefault((req.stop, req.max_tokens), []).append(i)
    return out


def cut_prompts(backend: TransformersBackend, requests: Sequence[GenerateRequest], members: list[int]) -> dict[int, list[int]]:
    """Each member's prompt ids cut to the backend's budget; ``members`` sorted longest first, as the backend does."""
    budget = max(1, backend.max_length - requests[members[0]].max_tokens)
    prompts = {i: backend._prompt_ids(requests[i])[-budget:] for i in members}
    members.sort(key=lambda i: (-len(prompts[i]), prompts[i]))
    return prompts


def agreement(reference: Sequence[Generation], other: Sequence[Generation], *, tokens: bool = True) -> str:
    same = sum(a.text == b.text and (not tokens or a.tokens == b.tokens) for a, b in zip(reference, other, strict=True))
    notes = []
    for k, (a, b) in enumerate(zip(reference, other, strict=True)):
        if a.text != b.text:
            at = next((j for j, (x, y) in enumerate(zip(a.text, b.text, strict=False)) if x != y), min(len(a.text), len(b.text)))
            notes.append(f"#{k} texts differ from char {at} of {len(a.text)}/{len(b.text)}")
        elif tokens and a.tokens != b.tokens:
            notes.append(f"#{k} tokens {a.tokens} vs {b.tokens}")
    return f"{same}/{len(reference)} equal" + (f" ({'; '.join(notes)})" if notes else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8, help="gsm8k items")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="ABBA rounds (each runs every method twice)")
    parser.add_argument("--suites", default="gsm8k,collapse")
    parser.add_argument("--no-continuous", action="store_true", help="skip transformers' generate_batch")
    args = parser.parse_args()

    from harness.backends import open_backend
    from harness.testbed import ensure_testbed

    backend = open_backend(str(ensure_testbed()), dtype="float32", device="cpu", batch_size=args.batch_size)
    assert isinstance(backend, TransformersBackend)
    methods: dict[str, Callable[[TransformersBackend, Sequence[GenerateRequest]], list[Generation]]] = {
        "model.generate": old_path, "moegate loop": lambda b, r: b.generate(r)}
    if not args.no_continuous:
        methods["generate_batch"] = continuous_batching
    wanted = [s.strip() for s in args.suites.split(",") if s.strip()]
    for name, requests in suite_requests(backend.tokenizer, args.limit).items():
        if name not in wanted:
            continue
        seconds = dict.fromkeys(methods, 0.0)
        outputs: dict[str, list[Generation]] = {}
        order = list(methods)
        for _ in range(args.repeats):
            for method in order + order[::-1]:
                start = time.perf_counter()
                outputs[method] = methods[method](backend, requests)
                seconds[method] += time.perf_counter() - start
        prompt_tokens = sum(len(backend._prompt_ids(r)) for r in requests)
        generated = sum(g.tokens for g in outputs["model.generate"])
        print(f"{name}: {len(requests)} requests, {prompt_tokens} prompt tokens, {generated} generated tokens "
              f"(model.generate), budget {requests[0].max_tokens}, stop {list(requests[0].stop)}")
        base = seconds["model.generate"]
        for method, total in seconds.items():
            mean = total / (2 * args.repeats)
            same = "" if method == "model.generate" else \
                f"; vs model.generate: {agreement(outputs['model.generate'], outputs[method], tokens=method != 'generate_batch')}"
            print(f"  {method}: {mean:.2f} s per run, ratio to model.generate {total / base:.3f}{same}")
    print(f"command: python benchmarks/generation.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
