"""One exception type for every failure a user can cause.

The CLI turns it into a single line on stderr and exit code 2; nothing else may print a traceback
for bad input. Always say what is wrong *and* how to fix it.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a path, a file, a config, a flag.

    Args:
        problem: what is wrong, naming the thing (file, line, field).
        fix: what the user should do about it.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem
