"""Suites turn a model into item records. Registered lazily by name; see ``base.Suite``."""

from harness.suites.base import SUITES, Suite, SuiteSettings, suite_settings

_LAZY = {
    "wikitext2": "harness.suites.perplexity:WikiText2Suite",
    "c4": "harness.suites.perplexity:C4Suite",
    "flores": "harness.suites.translation:FloresSuite",
    "collapse": "harness.suites.collapse:CollapseSuite",
    "humaneval": "harness.suites.humaneval:HumanEvalSuite",
    "arc_challenge": "harness.suites.lm_eval_tasks:ArcChallengeSuite",
    "gsm8k": "harness.suites.lm_eval_tasks:Gsm8kSuite",
    "gsm8k_cot": "harness.suites.lm_eval_tasks:Gsm8kCotSuite",
    "mmlu_pro": "harness.suites.lm_eval_tasks:MmluProSuite",
    "mmlu_pro_mc": "harness.suites.lm_eval_tasks:MmluProMcSuite",
}
for _name, _target in _LAZY.items():
    SUITES.register(_name, _target)

__all__ = ["SUITES", "Suite", "SuiteSettings", "suite_settings"]
