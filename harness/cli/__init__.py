"""The ``moegate`` command. Subcommands live in their own modules and load lazily.

Every user-caused failure is a ``UserError``: one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from harness._version import __version__
from harness.errors import UserError

# name -> "module:attr" of a click command; one line per subcommand keeps the CLI one hop from here.
COMMANDS: dict[str, str] = {
    "info": "harness.cli.info:info",
    "testbed": "harness.cli.testbed:testbed",
    "profile": "harness.cli.profile:profile",
    "compress": "harness.cli.compress:compress",
    "detect": "harness.cli.detect:detect",
    "suites": "harness.cli.suites:suites",
    "eval": "harness.cli.evaluate:evaluate",
    "baseline": "harness.cli.gate:baseline",
    "run": "harness.cli.gate:run",
    "verdict": "harness.cli.gate:verdict",
    "risk": "harness.cli.risk:risk",
    "demo": "harness.cli.demo:demo",
    "inspect": "harness.cli.inspect:inspect_cmd",
    "serve-check": "harness.cli.serve_check:serve_check",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in COMMANDS.items() if _module_exists(target))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _module_exists(target):
            return None
        module_name, _, attr = target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


def _module_exists(target: str) -> bool:
    return importlib.util.find_spec(target.partition(":")[0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moegate")
def cli() -> None:
    """moegate: evaluation harness and regression gate for compressed Mixture-of-Experts LLMs."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the click group and maps ``UserError`` to exit code 2."""
    try:
        cli.main(args=argv, prog_name="moegate", standalone_mode=False)
    except UserError as exc:
        click.echo(f"moegate: error: {exc.line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("moegate: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 1 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)
