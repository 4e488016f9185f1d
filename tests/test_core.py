"""The small shared pieces: registry, user errors, atomic writes, CLI exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.atomic import atomic_dir, atomic_write_text
from harness.errors import UserError
from harness.registry import Registry


def test_registry_lazy_entry_and_did_you_mean() -> None:
    registry: Registry[object] = Registry("thing")
    registry.register("path_join", "os.path:join")
    import os.path

    assert registry.get("path_join") is os.path.join
    with pytest.raises(UserError, match="did you mean 'path_join'"):
        registry.get("path_jion")


def test_registry_refuses_a_second_entry_of_one_name() -> None:
    registry: Registry[object] = Registry("thing")
    registry.register("a", "os.path:join")
    with pytest.raises(UserError, match="'a' is registered twice"):
        registry.register("a", "os.path:split")


def _installed_package(root: Path, entries: dict[str, str]) -> None:
    """A real installed distribution on ``root`` (dist-info with entry points) and its module."""
    (root / "my_suites.py").write_text("class EchoSuite:\n    name = 'echo'\n", encoding="utf-8")
    info = root / "my_suites-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-suites\nVersion: 0.1\n", encoding="utf-8")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[moegate.suites]\n{lines}", encoding="utf-8")


def test_suites_from_an_installed_package_and_collisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.suites import SUITES

    assert SUITES.group == "moegate.suites"
    _installed_package(tmp_path, {"echo": "my_suites:EchoSuite", "wikitext2": "my_suites:EchoSuite"})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry[object] = Registry("suite", entry_points="moegate.suites")
    registry.register("collapse", "harness.suites.collapse:CollapseSuite")
    assert registry.get("echo").name == "echo"  # type: ignore[attr-defined]
    clashing: Registry[object] = Registry("suite", entry_points="moegate.suites")
    clashing.register("wikitext2", "harness.suites.perplexity:WikiText2Suite")
    with pytest.raises(UserError, match=r"'wikitext2' is registered twice \(by moegate and by my-suites"):
        clashing.names()


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target, kind="store") as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_what_it_wrote(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target, kind="store") as tmp:
        (tmp / "old.txt").write_text("old")
    with atomic_dir(target, kind="store") as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == [".moegate-store", "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_write_text(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.txt"
    atomic_write_text(path, "hello")
    assert path.read_text() == "hello"
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]


def test_cli_unknown_command_exits_2() -> None:
    result = subprocess.run([sys.executable, "-m", "harness.cli", "nosuch"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "No such command" in result.stderr
