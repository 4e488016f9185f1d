"""llama.cpp's own ``--kl-divergence`` statistics beside the kld suite's, on one GGUF pair (issue 13 §7, the anchor).

Both tools see the same text and the same windows: moegate's kld suite (``harness.suites.kld``, text corpus
only, ``--windows`` windows of ``--seq-len`` tokens) runs on BASE as baseline and CAND as candidate through
the transformers backend (which loads a GGUF by dequantizing it to float32); the exact text prefix the suite
sent is written to ``--work`` and given to ``llama-perplexity -c SEQ_LEN -b SEQ_LEN --chunks WINDOWS``, first
with ``--kl-divergence-base`` on BASE, then with ``--kl-divergence`` on CAND. The tokens llama.cpp stored in
its base file are checked against the suite's.

llama.cpp scores only the second half of each chunk (the logits at positions ``n_ctx/2 .. n_ctx-2``), the
suite every position but a window's first; the suite's per-token values are therefore also summarized over
exactly llama.cpp's positions. To explain what remains, the same positions are also scored (a) exactly, from
both models' full float64 log-softmax rows in transformers (no top-k estimate), (b) with llama.cpp's own
formula on transformers' rows (base log-probs stored as uint16 over ``max − 16``, terms below −16 skipped),
and (c) llama.cpp's stored base distribution against transformers' base distribution of the same BASE file
(the two engines' disagreement on one model: the floor under any comparison).

    python benchmarks/kld_llamacpp.py --bin /tmp/anchor-build/bin --base BASE.gguf --cand CAND.gguf --work DIR

(README "Checked against llama.cpp": how the binaries were built, the GGUFs made and what was measured.)
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

LLAMA_FLOOR = -16.0
"""llama.cpp stores base log-probs down to ``max − 16`` and skips terms whose base log-prob is at most −16."""
LLAMA_STATS = {
    "kl_mean": r"Mean\s+KLD:\s+([-\d.]+)\s+±\s+([-\d.]+)",
    "kl_max": r"Maximum KLD:\s+([-\d.]+)",
    "kl_p999": r"99\.9%\s+KLD:\s+([-\d.]+)",
    "kl_p99": r"99\.0%\s+KLD:\s+([-\d.]+)",
    "kl_median": r"Median\s+KLD:\s+([-\d.]+)",
    "same_top": r"Same top p:\s+([-\d.]+)\s+±\s+([-\d.]+)\s+%",
    "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([-\d.]+)",
    "dp_rms": r"RMS Δp\s+:\s+([-\d.]+)",
}


@dataclass(frozen=True)
class Row:
    """One line of the table: a tool, the positions it scored, and the statistics both tools report."""

    label: str
    tokens: int
    kl_mean: float
    kl_p99: float
    same_top: float
    """Share, 0..1."""
    kl_mean_se: float | None = None


class Recording:
    """A backend that keeps the top-k tables it returns, so the suite's own tables can be compared per token."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.tables: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def next_token_topk(self, requests: Sequence[Any]) -> list[Any]:
        tables = list(self._backend.next_token_topk(requests))
        self.tables += tables
        return tables


def kld_settings(windows: int, seq_len: int) -> Any:
    """The shipped ``suites/kld.toml`` settings with the text corpus only, ``windows`` windows of ``seq_len``."""
    from harness.suites.kld import KldSettings

    return KldSettings(seq_len=seq_len, limit=windows, corpora=["text"])


def suite_text(settings: Any) -> str:
    from harness.suites._common import load_rows
    from harness.suites.perplexity import corpus_text

    rows, path = load_rows(settings.data_file, settings.data_sha256)
    return corpus_text(rows, settings, path)


def run_llamacpp(binary: Path, model: Path, text: Path, base_file: Path, settings: Any, threads: int,
                 compare: bool, extra: Sequence[str] = ()) -> str:
    """``llama-perplexity`` writing (``compare`` False) or reading the base file; its whole output."""
    cmd = [str(binary), "-m", str(model), "-f", str(text), "-c", str(settings.seq_len), "-b", str(settings.seq_len),
           "--chunks", str(settings.limit), "-t", str(threads), "--kl-divergence-base", str(base_file)]
    if compare:
        cmd.append("--kl-divergence")
    cmd += extra
    print("$ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"llama-perplexity exited {done.returncode}:\n{out[-3000:]}")
    return out


def parse_llamacpp(out: str) -> dict[str, float]:
    """The statistics llama.cpp printed (``same_top`` as a share; ``*_se`` its ±)."""
    found: dict[str, float] = {}
    for name, pattern in LLAMA_STATS.items():
        match = re.search(pattern, out)
        if match is None:
            raise SystemExit(f"llama-perplexity printed no '{name}' line")
        scale = 0.01 if name in ("same_top", "dp_rms") else 1.0
        found[name] = float(match.group(1)) * scale
        if match.lastindex == 2:
            found[f"{name}_se"] = float(match.group(2)) * scale
    return found


def read_base_header(path: Path) -> tuple[int, int, int, np.ndarray, int]:
    """llama.cpp's base file: n_ctx, n_vocab, n_chunk, the [n_chunk·n_ctx] tokens, and where the rows start."""
    with path.open("rb") as f:
        if f.read(8) != b"_logits_":
            raise SystemExit(f"{path} is not a llama.cpp --kl-divergence-base file")
        n_ctx, n_vocab, n_chunk = (int(x) for x in np.frombuffer(f.read(12), np.int32))
        tokens = np.frombuffer(f.read(4 * n_ctx * n_chunk), np.int32)
        return n_ctx, n_vocab, n_chunk, tokens, f.tell()


def llamacpp_base_rows(path: Path) -> Iterator[np.ndarray]:
    """Per chunk, llama.cpp's stored base log-probs [n_ctx − 1 − n_ctx/2, vocab] (uint16 over ``max − 16``)."""
    n_ctx, n_vocab, n_chunk, _, start = read_base_header(path)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = n_ctx - 1 - n_ctx // 2
    data = np.memmap(path, np.uint16, "r", offset=start, shape=(n_chunk, rows, nv))
    for chunk in range(n_chunk):
        block = np.asarray(data[chunk])
        head = block[:, :4].copy().view(np.float32)  # [rows, 2]: scale, min log-prob
        yield head[:, :1].astype(np.float64) * block[:, 4:4 + n_vocab] + head[:, 1:2].astype(np.float64)


def llamacpp_quantized(lp: np.ndarray) -> np.ndarray:
    """Log-prob rows as llama.cpp's base file stores them (``log_softmax`` with its uint16 grid over ``max − 16``)."""
    top = lp.max(axis=1, keepdims=True)
    low = np.maximum(lp.min(axis=1, keepdims=True), top + LLAMA_FLOOR)
    scale = ((top - low) / 65535.0).astype(np.float32).astype(np.float64)
    steps = np.where(lp > low, np.rint((lp - low) / np.where(scale > 0, scale, 1.0)), 0.0)
    out: np.ndarray = scale * steps + low
    return out


def llamacpp_kl(base_lp: np.ndarray, cand_lp: np.ndarray) -> np.ndarray:
    """llama.cpp's per-token KL: Σ p_base (ln p_base − ln p_cand) over base log-probs above −16."""
    keep = base_lp > LLAMA_FLOOR
    out: np.ndarray = np.where(keep, np.exp(base_lp) * (base_lp - cand_lp), 0.0).sum(axis=1)
    return out


def second_halves(window_sizes: Sequence[int], seq_len: int) -> np.ndarray:
    """Indices, into the suite's per-token arrays, of llama.cpp's positions (logits at n_ctx/2 .. n_ctx−2)."""
    first = seq_len // 2
    out, at = [], 0
    for size in window_sizes:
        if size != seq_len - 1:
            raise SystemExit(f"a window of {size + 1} tokens: every window must be full ({seq_len})")
        out.append(np.arange(at + first, at + size))
        at += size
    return np.concatenate(out)


def moegate_side(base: Path, cand: Path, settings: Any) -> tuple[Any, Any, Any, Any, int]:
    """The kld suite on BASE (as baseline) and CAND: per-token divergence, both backends, characters sent."""
    from harness.backends import open_backend
    from harness.divergence import compare, decode_topk
    from harness.suites.kld import TEXT_ARTIFACT, KldSuite

    suite = KldSuite()
    base_backend = open_backend(str(base), "transformers", dtype="float32", device="cpu")
    start = time.perf_counter()
    base_run = suite.run(base_backend, settings)
    print(f"moegate kld suite, baseline {base.name}: {time.perf_counter() - start:.0f} s", flush=True)
    cand_backend = Recording(open_backend(str(cand), "transformers", dtype="float32", device="cpu"))
    start = time.perf_counter()
    cand_run = suite.run(cand_backend, settings, baseline=base_run)
    print(f"moegate kld suite, candidate {cand.name}: {time.perf_counter() - start:.0f} s", flush=True)
    (cand_table,) = cand_backend.tables
    div = compare(decode_topk(base_run.artifacts[TEXT_ARTIFACT]), cand_table)
    recorded = np.concatenate([r.per_token["kl"] for r in cand_run.records])
    if recorded.shape != div.kl.shape or not np.allclose(recorded, div.kl, rtol=1e-5, atol=1e-9):
        raise SystemExit("the suite's stored per-token KL differs from compare() on its own tables")
    chars = int(cand_run.records[0].meta["chars_sent"])
    return div, base_backend, cand_backend, cand_run, chars


def exact_rows(base: Any, cand: Any, text: str, settings: Any, llama_base: Path) -> dict[str, np.ndarray]:
    """On llama.cpp's positions: exact full-vocabulary KL and same-top in transformers, llama.cpp's formula on
    transformers' rows, and llama.cpp's stored base against transformers' base."""
    import torch

    from harness.backends._scoring import rolling_windows
    from harness.divergence import kl_full

    first = settings.seq_len // 2
    chunks = rolling_windows(base.tok_encode(text), settings.seq_len)[: settings.limit]
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("exact", "exact_top", "formula", "formula_top", "engines", "engines_top")}
    for chunk, llama_lp in zip(chunks, llamacpp_base_rows(llama_base), strict=True):
        ids = torch.tensor([chunk[:-1]])
        with torch.inference_mode():
            lp, lq = (torch.log_softmax(m.model(ids).logits[0, first:].double(), dim=-1).numpy() for m in (base, cand))
        stored = llamacpp_quantized(lp)
        out["exact"].append(kl_full(lp, lq))
        out["exact_top"].append(lp.argmax(1) == lq.argmax(1))
        out["formula"].append(llamacpp_kl(stored, lq))
        out["formula_top"].append(stored.argmax(1) == lq.argmax(1))
        out["engines"].append(llamacpp_kl(llama_lp, lp))
        out["engines_top"].append(llama_lp.argmax(1) == lp.argmax(1))
    return {k: np.concatenate(v) for k, v in out.items()}


def row(label: str, kl: np.ndarray, same: np.ndarray, se: float | None = None) -> Row:
    return Row(label, int(kl.size), float(kl.mean()), float(np.quantile(kl, 0.99)), float(np.mean(same)), se)


def print_table(rows: Sequence[Row], anchor: Row) -> None:
    print("| scored by | positions | tokens | mean KLD | vs llama.cpp | p99 KLD | same top | vs llama.cpp (points) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        label, _, positions = r.label.partition(" @ ")
        se = f" ± {r.kl_mean_se:.6f}" if r.kl_mean_se is not None else ""
        rel = "" if r is anchor else f"{100 * (r.kl_mean - anchor.kl_mean) / anchor.kl_mean:+.1f}%"
        pts = "" if r is anchor else f"{100 * (r.same_top - anchor.same_top):+.2f}"
        print(f"| {label} | {positions} | {r.tokens} | {r.kl_mean:.6f}{se} | {rel} | {r.kl_p99:.5f} | "
              f"{100 * r.same_top:.3f}% | {pts} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", type=Path, required=True, help="folder holding the built llama-perplexity")
    parser.add_argument("--base", type=Path, required=True, help="base GGUF (e.g. Q8_0)")
    parser.add_argument("--cand", type=Path, required=True, help="candidate GGUF (e.g. Q4_K_M)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the text and llama.cpp's base file")
    parser.add_argument("--windows", type=int, default=16, help="windows (llama.cpp chunks); the testbed gate's 16")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per window (llama.cpp -c)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-args", default="", help="more llama-perplexity options for both runs, e.g. '-ctk f32 -ctv f32'")
    parser.add_argument("--no-exact", action="store_true", help="skip the full-vocabulary rows (two more passes)")
    args = parser.parse_args()

    from harness.stats.kld import kld_statistics

    args.work.mkdir(parents=True, exist_ok=True)
    settings = kld_settings(args.windows, args.seq_len)
    div, base_backend, cand_backend, _, chars = moegate_side(args.base, args.cand, settings)
    text = suite_text(settings)[:chars]
    text_file = args.work / "wikitext2-kld-prefix.txt"
    text_file.write_text(text, encoding="utf-8")
    binary = args.bin / "llama-perplexity"
    base_file = args.work / f"{args.base.stem}.kld"
    base_out = run_llamacpp(binary, args.base, text_file, base_file, settings, args.threads, compare=False,
                            extra=shlex.split(args.llama_args))
    ppl = re.search(r"Final estimate: PPL = ([\d.]+)", base_out)
    n_ctx, _, n_chunk, tokens, _ = read_base_header(base_file)
    ours = np.array(base_backend.tok_encode(text)[: n_ctx * n_chunk], np.int32)
    same_tokens = int((ours == tokens).sum()) if ours.size == tokens.size else -1
    print(f"llama.cpp base: PPL {ppl.group(1) if ppl else '?'} over {n_chunk} chunks of {n_ctx}; "
          f"tokens identical to the suite's: {same_tokens}/{tokens.size}", flush=True)
    llama = parse_llamacpp(run_llamacpp(binary, args.cand, text_file, base_file, settings, args.threads, compare=True,
                                        extra=shlex.split(args.llama_args)))

    half = second_halves(div.window_sizes, settings.seq_len)
    suite_half = kld_statistics(div.kl[half], div.same_top[half], div.base_logprob[half], div.cand_logprob[half],
                                [settings.seq_len - 1 - settings.seq_len // 2] * len(div.window_sizes))
    suite_all = div.statistics()
    anchor = Row("llama.cpp `--kl-divergence` @ 2nd half of each chunk", suite_half.tokens, llama["kl_mean"],
                 llama["kl_p99"], llama["same_top"], llama["kl_mean_se"])
    rows = [anchor,
            Row("moegate kld suite (top-64 + tail) @ the same", suite_half.tokens, suite_half.kl_mean, suite_half.kl_p99,
                suite_half.same_top, suite_half.kl_mean_se)]
    if not args.no_exact:
        exact = exact_rows(base_backend, cand_backend, text, settings, base_file)
        rows += [row("exact full vocabulary, transformers @ the same", exact["exact"], exact["exact_top"]),
                 row("llama.cpp's formula on transformers' log-probs @ the same", exact["formula"], exact["formula_top"])]
    rows.append(Row("moegate kld suite (top-64 + tail) @ every position but a window's first", suite_all.tokens,
                    suite_all.kl_mean, suite_all.kl_p99, suite_all.same_top, suite_all.kl_mean_se))
    print(f"\nbase {args.base.name}, candidate {args.cand.name}: {n_chunk} windows of {n_ctx} tokens of WikiText-2 "
          f"raw test ({chars} characters)\n")
    print_table(rows, anchor)
    print(f"\nllama.cpp also printed: median {llama['kl_median']:.6f}, p99.9 {llama['kl_p999']:.5f}, max "
          f"{llama['kl_max']:.5f}, RMS Δp {100 * llama['dp_rms']:.3f}%, PPL ratio {llama['ppl_ratio']:.6f}; the suite "
          f"on the same positions: median {suite_half.kl_median:.6f}, p99.9 {suite_half.kl_p999:.5f}, max "
          f"{suite_half.kl_max:.5f}, RMS Δp {100 * suite_half.dp_rms:.3f}%, PPL ratio {suite_half.ppl_ratio:.6f}")
    if not args.no_exact:
        floor = exact["engines"]
        print(f"the two engines on BASE alone (llama.cpp's stored base vs transformers', same positions): mean KLD "
              f"{floor.mean():.6f}, p99 {np.quantile(floor, 0.99):.5f}, same top {100 * exact['engines_top'].mean():.3f}%")


if __name__ == "__main__":
    main()
