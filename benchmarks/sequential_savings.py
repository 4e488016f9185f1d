"""How many items sequential early stopping saves, and what it costs in errors, by simulation.

The gate's sequential test (``harness.stats.sequential``, used by ``[gate] sequential = true``) on paired 0/1
items: each simulated item flips right->wrong with probability ``r2w`` and wrong->right with
``w2r``, so the true regression is ``r2w - w2r``. For a range of true regressions around the budget it
prints how often the gate says PASS / FAIL / INCONCLUSIVE and the mean share of items it evaluated;
a fixed-sample test evaluates all of them. "Clear" cases are the rows far from the budget.

    python benchmarks/sequential_savings.py --items 1000 --budget 2 --alpha 0.025
Last line: ``clear cases: mean items used = X`` (O'Brien-Fleming spending, mean over the two clear rows).
"""

from __future__ import annotations

import argparse

import numpy as np

from harness.stats.sequential import sequential_noninferiority


def simulate(rng: np.random.Generator, items: int, regression: float, churn: float) -> list[int]:
    """Per-item regressions (+1 right->wrong, -1 wrong->right, 0 same) with a given true regression."""
    w2r = churn
    r2w = churn + regression
    u = rng.random(items)
    return [1 if x < r2w else -1 if x < r2w + w2r else 0 for x in u]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000, help="items in the capability (MMLU-Pro CI scale)")
    parser.add_argument("--budget", type=float, default=2.0, help="drop budget in points")
    parser.add_argument("--churn", type=float, default=3.0, help="points of wrong->right flips (discordance)")
    parser.add_argument("--alpha", type=float, default=0.025, help="one-sided alpha of the capability")
    parser.add_argument("--sims", type=int, default=400)
    parser.add_argument("--spending", default="fixed,obf,pocock", help="fixed = one look at all items (no stopping)")
    parser.add_argument("--looks", type=int, default=5, help="planned looks ([gate] looks)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    budget = args.budget / 100
    b = args.budget
    regressions = [-b, 0.0, b / 2, b, 1.5 * b, 2 * b, 3 * b, 5 * b]
    clear: list[float] = []
    print(f"{args.items} items, budget {args.budget} points, churn {args.churn} points, alpha {args.alpha}, "
          f"{args.looks} looks, {args.sims} runs per row")
    print(f"{'spending':8} {'true drop':>9} {'PASS':>6} {'FAIL':>6} {'INCONCL':>7} {'items used':>10}")
    for spending in [s.strip() for s in args.spending.split(",")]:
        for drop in regressions:
            outcomes = {"PASS": 0, "FAIL": 0, "INCONCLUSIVE": 0}
            used = 0.0
            for _ in range(args.sims):
                diffs = simulate(rng, args.items, drop / 100, args.churn / 100)
                looks, kind = (1, "obf") if spending == "fixed" else (args.looks, spending)
                result = sequential_noninferiority(diffs, budget, alpha=args.alpha, spending=kind, looks=looks)  # type: ignore[arg-type]
                outcomes[result.decision] += 1
                used += result.fraction_used
            share = used / args.sims
            if spending == "obf" and drop in (regressions[0], regressions[-1]):
                clear.append(share)
            print(f"{spending:8} {drop:9.1f} {outcomes['PASS'] / args.sims:6.3f} {outcomes['FAIL'] / args.sims:6.3f} "
                  f"{outcomes['INCONCLUSIVE'] / args.sims:7.3f} {share:10.2f}")
    print(f"clear cases: mean items used = {sum(clear) / len(clear):.2f}")


if __name__ == "__main__":
    main()
