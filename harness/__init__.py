"""moegate: evaluation harness and regression gate for compressed Mixture-of-Experts LLMs.

Where things are (one hop from here):

- ``harness.backends``   — the three request kinds; transformers, mlx-lm, OpenAI-compatible servers
- ``harness.cache``      — SQLite request cache keyed by model fingerprint
- ``harness.suites``     — suites that turn a model into item records (``harness.records``)
- ``harness.detectors``  — silent-failure detectors over generated text
- ``harness.stats``      — paired statistics (McNemar, bootstrap, clustered SE, Holm)
- ``harness.gate``       — gate files, budgets and verdicts
- ``harness.reports``    — JSON, Markdown and HTML reports
- ``harness.testbed``, ``harness.compress``, ``harness.profiler`` — test subjects and expert profiles
- ``harness.cli``        — the ``moegate`` command
"""

from harness._version import __version__
from harness.errors import UserError
from harness.records import ItemRecord, MetricSpec, SuiteRun

__all__ = ["ItemRecord", "MetricSpec", "SuiteRun", "UserError", "__version__"]
