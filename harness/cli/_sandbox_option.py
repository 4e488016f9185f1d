"""``--allow-unsandboxed`` on the commands that run generated code (HumanEval): the user's opt-in to
running it where the kernel cannot isolate it. It sets the environment variable the sandbox reads."""

from __future__ import annotations

import os

import click

from harness.sandbox import ALLOW_UNSANDBOXED_VAR


def _allow(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        os.environ[ALLOW_UNSANDBOXED_VAR] = "1"
    return value


allow_unsandboxed_option = click.option(
    "--allow-unsandboxed",
    is_flag=True,
    expose_value=False,
    callback=_allow,
    help="Run generated code (HumanEval) even where no kernel sandbox is possible: the Python audit hook "
    f"alone then stands between it and your files ({ALLOW_UNSANDBOXED_VAR}=1 does the same).",
)
