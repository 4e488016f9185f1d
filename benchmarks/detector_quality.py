"""Precision and recall of every detector flag on the hand-labelled set.

    python benchmarks/detector_quality.py [--data tests/data/detectors_labelled.jsonl]
        [--heldout tests/data/detectors_heldout.jsonl] [--errors] [--flores N] [--real-runs]

Each line of the labelled set is one candidate output (with its prompt, expected language, min_len,
model tokens and finish reason where the item needs them, and, where a comparative flag matters, the
baseline's output for the same item) and the flags a person says it should raise. Two sets, scored
separately: the tuning set (``--data``; thresholds were chosen on it, so its numbers are in-sample)
and the held-out set (``--heldout``; written before the tuning it checks, never tuned on). Hard negatives sit beside the positives: correct Japanese (Han + kana + Latin terms),
Chinese with Latin names, code, math with Greek letters, Spanish quoting English terms, emoji, shared
negations, short answers. ``--flores N`` also counts false alarms of ``script_mixing``,
``wrong_language`` and ``repetition`` on the first N real FLORES-200 devtest sentences of 8 languages
(needs the data folder); ``--real-runs`` counts degenerate-run alarms on real code and web text (the
HumanEval prompts with their canonical solutions, the C4 sample).
Prints a Markdown table; the last line is a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.detectors import FLAGS, DetectInput, detect

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
DEFAULT_DATA = DATA_DIR / "detectors_labelled.jsonl"
DEFAULT_HELDOUT = DATA_DIR / "detectors_heldout.jsonl"
FLORES_LANGS = {"eng_Latn": "en", "spa_Latn": "es", "fra_Latn": "fr", "deu_Latn": "de", "zho_Hans": "zh",
                "arb_Arab": "ar", "rus_Cyrl": "ru", "jpn_Jpan": "ja"}  # fmt: skip


@dataclass
class FlagStats:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def load_labelled(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate(items: list[dict]) -> tuple[dict[str, FlagStats], list[tuple[str, set[str], set[str]]]]:
    """Per-flag counts and the items whose flags differ from their labels ``(id, expected, got)``."""
    stats = {flag: FlagStats() for flag in FLAGS}
    errors = []
    for item in items:
        common = {k: item[k] for k in ("prompt", "lang", "min_len") if item.get(k) is not None}
        own = {k: item[k] for k in ("tokens", "finish_reason") if item.get(k) is not None}
        cand = DetectInput(id=item["id"], response=item["candidate"], **common, **own)
        base = None
        if item.get("baseline") is not None:
            theirs = {k: item[f"baseline_{k}"] for k in ("tokens", "finish_reason") if item.get(f"baseline_{k}") is not None}
            base = DetectInput(id=item["id"], response=item["baseline"], **common, **theirs)
        got = set(detect(cand, base).flags)
        expected = set(item["labels"])
        for flag in FLAGS:
            if flag in got and flag in expected:
                stats[flag].tp += 1
            elif flag in got:
                stats[flag].fp += 1
            elif flag in expected:
                stats[flag].fn += 1
        if got != expected:
            errors.append((item["id"], expected, got))
    return stats, errors


def flores_check(limit: int) -> tuple[dict[str, tuple[int, int]], tuple[int, int]]:
    """On the first ``limit`` FLORES-200 devtest lines of 8 languages: false alarms of ``script_mixing``,
    ``wrong_language`` and ``repetition`` when each sentence is checked against its own language, and how many
    sentences ``wrong_language`` catches when checked against each of the 7 other languages."""
    from harness.resources import data_dir

    path = data_dir() / "flores200_devtest.jsonl"
    rows = [json.loads(line) for line in path.open(encoding="utf-8")][:limit]
    alarms = {"script_mixing": 0, "wrong_language": 0, "repetition": 0}
    total = caught = pairs = 0
    for row in rows:
        for key, lang in FLORES_LANGS.items():
            flags = detect(DetectInput(id=str(row["id"]), response=row[key], lang=lang)).flags
            total += 1
            for flag in alarms:
                alarms[flag] += flag in flags
            for other in FLORES_LANGS.values():
                if other != lang:
                    pairs += 1
                    caught += (
                        "wrong_language" in detect(DetectInput(id="x", response=row[key], lang=other)).flags
                    )
    return {flag: (n, total) for flag, n in alarms.items()}, (caught, pairs)


def print_table(title: str, path: Path, show_errors: bool) -> None:
    items = load_labelled(path)
    stats, errors = evaluate(items)
    print(f"{title}: {path.name} ({len(items)} items)\n")
    print("| flag | positives | TP | FP | FN | precision | recall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for flag, s in stats.items():
        print(f"| {flag} | {s.tp + s.fn} | {s.tp} | {s.fp} | {s.fn} | {s.precision:.3f} | {s.recall:.3f} |")
    if show_errors:
        for item_id, expected, got in errors:
            print(f"MISMATCH {path.name} {item_id}: expected {sorted(expected)} got {sorted(got)}", file=sys.stderr)
    min_p = min(s.precision for s in stats.values())
    min_r = min(s.recall for s in stats.values())
    print(
        f"\nsummary ({title}): {len(items)} items, {len(errors)} with any wrong flag; "
        f"min precision {min_p:.3f}, min recall {min_r:.3f}\n"
    )


def real_runs() -> dict[str, tuple[int, int]]:
    """Texts whose ``repetition`` evidence includes a degenerate character run, per real corpus."""
    import gzip

    from harness.detectors.runs import degenerate_run
    from harness.resources import data_dir

    def read(name: str) -> list[dict]:
        with gzip.open(data_dir() / name, "rt", encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]

    corpora = {
        "HumanEval prompts + canonical solutions": [r["prompt"] + r["canonical_solution"] for r in read("HumanEval.jsonl.gz")],
        "C4 validation sample": [r["text"] for r in read("c4_validation_sample_2k.jsonl.gz")],
    }
    return {name: (sum(degenerate_run(t) is not None for t in texts), len(texts)) for name, texts in corpora.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the tuning set (in-sample)")
    parser.add_argument("--heldout", type=Path, default=DEFAULT_HELDOUT, help="the held-out set (never tuned on)")
    parser.add_argument("--errors", action="store_true", help="list items whose flags differ from the labels")
    parser.add_argument(
        "--flores", type=int, default=0, metavar="N", help="also check N FLORES sentences per language"
    )
    parser.add_argument("--real-runs", action="store_true", help="count degenerate-run alarms on HumanEval and C4")
    args = parser.parse_args(argv)
    print_table("tuning set (in-sample)", args.data, args.errors)
    print_table("held-out set (never tuned on)", args.heldout, args.errors)
    if args.flores:
        alarms, (caught, pairs) = flores_check(args.flores)
        print(f"FLORES-200 devtest, first {args.flores} lines x 8 languages (real sentences)\n")
        print("| check | result |\n|---|---:|")
        for flag, (n, total) in alarms.items():
            print(f"| {flag} false alarms (sentence vs its own language) | {n}/{total} |")
        print(
            f"| wrong_language caught (sentence vs each other language) | {caught}/{pairs} ({caught / pairs:.3f}) |"
        )
    if args.real_runs:
        print("\nDegenerate character runs on real text\n\n| corpus | texts with a run |\n|---|---:|")
        for name, (hits, total) in real_runs().items():
            print(f"| {name} | {hits}/{total} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
