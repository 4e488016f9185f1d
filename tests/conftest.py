"""Shared fixtures. Tests never touch the network: the hub is offline and data is local."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2-MoE checkpoint with SmolLM2's tokenizer, shared by the gate tests."""
    from tests.tiny_models import build_tiny_moe

    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def gate_toys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The toy suites of tests/gate_toys.py registered, and a private request cache."""
    from harness.suites import SUITES
    from tests.gate_toys import register_toys

    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    saved = register_toys()
    yield
    SUITES.restore(saved)


class _PrintToStderr(logging.Handler):
    """Prints to whatever ``sys.stderr`` is at the time, so capsys and capfd see it."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


@pytest.fixture
def loud_lm_eval(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """lm-eval's logger printing INFO on stderr, as lm-eval's own CLI leaves it; restored afterwards."""
    from harness.lm_eval_adapter import LOG_LEVEL_VAR

    monkeypatch.delenv(LOG_LEVEL_VAR, raising=False)
    logger = logging.getLogger("lm_eval")
    monkeypatch.setattr(logger, "handlers", [_PrintToStderr()])
    monkeypatch.setattr(logger, "propagate", False)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)
