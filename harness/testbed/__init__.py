"""The MoE test bed: a real Qwen2-MoE checkpoint built from the dense SmolLM2-135M-Instruct.

``ensure_testbed()`` builds it once (a few minutes on a CPU) and caches it; later calls return at once.
Knobs live in ``TestbedSettings`` (routed experts, top-k, shared fraction, seed).
"""

from __future__ import annotations

from harness.testbed._ensure import COMPLETE_MARKER, ensure_testbed, testbed_dir
from harness.testbed._settings import TestbedSettings

__all__ = ["COMPLETE_MARKER", "TestbedSettings", "ensure_testbed", "testbed_dir"]
