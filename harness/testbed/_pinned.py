"""The test bed's build in a child process whose CPU kernels are pinned, so its bytes do not depend on the CPU.

Measured here (README, "test bed"): the same build gives other bytes under ATen's AVX2 and AVX-512
kernels, under MKL's AVX2 and AVX-512 code paths, and on a busy machine (MKL's dynamic threading);
pinning all three fixes the bytes. Both are
chosen when a process starts (``ATEN_CPU_CAPABILITY`` at torch's first dispatch, ``MKL_CBWR`` when MKL
loads), hence a child. AVX2 is what every x86-64 server of the last decade runs; elsewhere (ARM, or an
x86 CPU without AVX2) the build runs with its native kernels and records that, so those bytes are
still bound to their baselines by the stores' ``weights_digest``. The torch version can change the
bytes too; it is recorded beside the kernels in ``testbed.json``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE",
                  "MKL_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
"""AVX2 kernels in ATen and MKL, and a fixed thread count: MKL's dynamic threading gave other bytes when the
machine was busy (measured: the same unpinned build, idle and under load, differed)."""
_PROGRESS, _INFO = "progress\t", "info\t"


def _has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def build_pinned(out: Path, settings: Any, gguf: Path, calib: Path, progress: Callable[[str], None] | None) -> dict[str, Any]:
    """``_build.build`` in a child with ``PINNED_KERNELS`` (in this process where AVX2 is missing)."""
    if not _has_avx2():
        from harness.testbed._build import build

        return build(out, settings, gguf, calib, progress)
    args = [sys.executable, "-m", "harness.testbed._pinned", str(out), json.dumps(settings.as_dict()), str(gguf), str(calib)]
    env = {**os.environ, **PINNED_KERNELS}
    info: dict[str, Any] | None = None
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env) as child:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(_PROGRESS) and progress is not None:
                progress(line[len(_PROGRESS):].rstrip("\n"))
            elif line.startswith(_INFO):
                info = json.loads(line[len(_INFO):])
    if child.returncode != 0 or info is None:
        raise RuntimeError(f"the test bed build failed (exit code {child.returncode}; its error is printed above)")
    return info


def _main(argv: list[str]) -> None:
    from harness.testbed._build import build
    from harness.testbed._settings import TestbedSettings

    out, settings, gguf, calib = Path(argv[0]), TestbedSettings(**json.loads(argv[1])), Path(argv[2]), Path(argv[3])
    info = build(out, settings, gguf, calib, lambda message: print(f"{_PROGRESS}{message}", flush=True))
    print(f"{_INFO}{json.dumps(info)}", flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
