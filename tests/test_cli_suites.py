"""``moegate suites list|show``: every suite listed with its metrics; unknown names exit 2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.cli.suites import suites


def test_list_names_every_native_suite_with_metrics() -> None:
    result = CliRunner().invoke(suites, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in map(json.loads, result.output.splitlines())}
    for name, metric in [
        ("wikitext2", "ppl"),
        ("c4", "ppl"),
        ("flores", "chrf"),
        ("collapse", "pass"),
        ("humaneval", "pass@1"),
    ]:
        assert metric in [m["name"] for m in rows[name]["metrics"]]
        assert rows[name]["profiles"] == ["ci", "full"] and rows[name]["description"]
    assert rows["wikitext2"]["metrics"][0]["higher_is_better"] is False


def test_show_prints_the_profile_settings() -> None:
    result = CliRunner().invoke(suites, ["show", "wikitext2", "--profile", "ci"])
    assert result.exit_code == 0, result.output
    assert "seq_len = 512" in result.output and "limit = 8" in result.output
    full = json.loads(CliRunner().invoke(suites, ["show", "wikitext2", "--profile", "full", "--json"]).output)
    assert full["settings"]["seq_len"] == 2048 and full["settings"]["limit"] is None


def test_unknown_suite_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["suites", "show", "wikitext"])
    assert exit_info.value.code == 2
    assert "did you mean 'wikitext2'" in capsys.readouterr().err
