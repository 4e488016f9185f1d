"""Seconds per phase of a cold ``moegate demo``: a fresh request cache, the test bed already built.

Runs the demo's own steps (``harness.cli.demo``: calibration file, the two candidates, the baseline record
and both gates) with ``MOEGATE_CACHE_DIR`` set to a new temporary folder whose ``testbed`` links to the built
test bed, timestamps every log line, and prints the seconds per phase for each model and the total. The
verdicts' printed lines go to ``--verdicts`` (diff two runs' files to see that a change kept every number).

    flock /tmp/moegate-heavy.lock python benchmarks/demo_phases.py --verdicts /tmp/verdicts.txt
Last line: ``total X s``.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTION = re.compile(r"^(baseline|candidate [\w.-]+): (running|gating)")
SUITE_START = re.compile(r"^suite (\w+): running$")
SUITE_DONE = re.compile(r"^suite (\w+): \d+ items in ")
TRACE_DONE = re.compile(r"^suite (\w+): route traces of ")


def phases(marks: list[tuple[float, str]], end: float) -> dict[str, dict[str, float]]:
    """Per section (``baseline``, ``candidate <name>``, each from its first log line): seconds per phase.

    A suite runs from its ``running`` line to its ``items in`` line; a suite's route trace from the line
    before its ``route traces of`` line; ``setup`` is a section's start to its first suite (the audit, the
    model load); ``reports`` its last suite or trace to the next section (store, verdict, reports).
    """
    out: dict[str, dict[str, float]] = {}
    section: str | None = None
    last = 0.0
    started: dict[str, float] = {}
    for t, message in marks:
        if (m := SECTION.match(message)) is not None:
            if section is not None:
                out[section]["reports"] = t - last
            section, last, started = m.group(1), t, {}
            out.setdefault(section, {})
            continue
        if section is None:
            continue
        phase = out[section]
        if (m := SUITE_START.match(message)) is not None:
            phase.setdefault("setup", t - last)
            started[m.group(1)] = t
        elif (m := SUITE_DONE.match(message)) is not None and m.group(1) in started:
            phase[f"suite {m.group(1)}"] = t - started.pop(m.group(1))
            last = t
        elif (m := TRACE_DONE.match(message)) is not None:
            phase[f"routes {m.group(1)}"] = t - last
            last = t
    if section is not None:
        out[section]["reports"] = end - last
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", type=Path, default=Path.home() / ".cache" / "moegate" / "testbed",
                        help="the built test bed's folder (linked into the fresh cache)")
    parser.add_argument("--verdicts", type=Path, default=None, help="write the demo's printed verdicts here")
    args = parser.parse_args()
    if not args.testbed.is_dir():
        raise SystemExit(f"no built test bed at {args.testbed}: run moegate testbed build first")
    work = Path(tempfile.mkdtemp(prefix="demo-phases-"))
    (work / "cache").mkdir()
    (work / "cache" / "testbed").symlink_to(args.testbed.resolve())
    os.environ["MOEGATE_CACHE_DIR"] = str(work / "cache")

    from rich.console import Console

    from harness.api import load_gate, resolve_testbed
    from harness.cli.demo import calibration_file, gate_demo_candidates, make_candidates
    from harness.cli.gate import print_outcome
    from harness.resources import cache_dir, gates_dir

    marks: list[tuple[float, str]] = []

    def log(message: str) -> None:
        marks.append((time.perf_counter(), message))
        print(f"{marks[-1][0] - start:7.1f} s  {message}", flush=True)

    start = time.perf_counter()
    config = load_gate(gates_dir() / "testbed.toml")
    testbed = Path(resolve_testbed("testbed", log=log))
    folder = cache_dir() / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    log("candidates: making")
    candidates = make_candidates(testbed, folder, calibration_file(folder), log)
    log("candidates: made")
    outcomes = gate_demo_candidates(config, str(testbed), candidates, work / "reports", log)
    end = time.perf_counter()
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    for name, outcome in outcomes.items():
        console.rule(f"{name}: {outcome.verdict.overall}")
        print_outcome(outcome, console)
    text = re.sub(re.escape(str(work)), "<work>", console.export_text())
    if args.verdicts is not None:
        args.verdicts.write_text(text, encoding="utf-8")
    print(text)
    at = {m.split(":")[0]: t for t, m in marks if m.startswith(("candidates:", "candidate pruned", "candidate quantized"))
          and not m.endswith("gating")}
    making = next(t for t, m in marks if m == "candidates: making")
    table = {"start": {"gate file, test bed": making - start}, "candidates": {"prune (C4 usage profile, write)": at["candidate quantized-tiered"] - at["candidate pruned-25pct-frequency"],
                            "quantize (write)": at["candidates"] - at["candidate quantized-tiered"]}}
    table |= phases(marks, end)
    for section, rows in table.items():
        print(f"{section}: {sum(rows.values()):.1f} s")
        for phase, seconds in rows.items():
            print(f"  {phase:<40} {seconds:7.1f}")
    print(f"total {end - start:.1f} s")


if __name__ == "__main__":
    main()
