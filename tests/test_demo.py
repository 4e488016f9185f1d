"""``moegate demo`` end to end on the real test bed (slow: minutes on a CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.testbed
def test_demo_fails_the_pruned_candidate_and_passes_the_quantized(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "demo", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pruned = json.loads((tmp_path / "pruned-25pct-frequency" / "report.json").read_text())
    quantized = json.loads((tmp_path / "quantized-tiered" / "report.json").read_text())
    assert pruned["overall"] == "FAIL" and quantized["overall"] == "PASS"
    failed = [c for c in pruned["verdict"]["capabilities"] if c["status"] == "FAIL"]
    assert failed and all(c["reason"] for c in failed)
    assert "expert_heatmap" in pruned
    assert "pruned-25pct-frequency: FAIL" in proc.stdout and "quantized-tiered: PASS" in proc.stdout
