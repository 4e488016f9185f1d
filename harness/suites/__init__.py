"""Suites turn a model into item records. Registered lazily by name; see ``base.Suite``.

Built-in suites are listed here; an installed package adds its own through the ``moegate.suites``
entry point group (a name already taken is an error, never a silent replacement).
"""

from harness.suites.base import (
    ITEM_IDS,
    SUITES,
    ChosenItems,
    Suite,
    SuiteSettings,
    declared_flags,
    runs_chosen_items,
    suite_settings,
    with_limit,
)

_LAZY = {
    "wikitext2": "harness.suites.perplexity:WikiText2Suite",
    "c4": "harness.suites.perplexity:C4Suite",
    "flores": "harness.suites.translation:FloresSuite",
    "collapse": "harness.suites.collapse:CollapseSuite",
    "kld": "harness.suites.kld:KldSuite",
    "humaneval": "harness.suites.humaneval:HumanEvalSuite",
    "arc_challenge": "harness.suites.lm_eval_tasks:ArcChallengeSuite",
    "gsm8k": "harness.suites.lm_eval_tasks:Gsm8kSuite",
    "gsm8k_cot": "harness.suites.lm_eval_tasks:Gsm8kCotSuite",
    "mmlu_pro": "harness.suites.lm_eval_tasks:MmluProSuite",
    "mmlu_pro_mc": "harness.suites.lm_eval_tasks:MmluProMcSuite",
}
for _name, _target in _LAZY.items():
    SUITES.register(_name, _target)

__all__ = [
    "ITEM_IDS",
    "SUITES",
    "ChosenItems",
    "Suite",
    "SuiteSettings",
    "declared_flags",
    "runs_chosen_items",
    "suite_settings",
    "with_limit",
]
