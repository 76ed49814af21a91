"""The scenario-tree analysis of a fleet with `tree` settings: multi-stage plan, value of waiting with its
interval, decision rule and (optionally) the rolling out-of-sample score; shared by the CLI and the service.

It runs in the caller's process: the trees are small next to the plan's scenario set (the MIP is the
cost), every draw is keyed by (seed, stream, node position), so the result is the same wherever it runs.
`progress(stage, done, total)` hears "tree" (the plan's tree), "tree reps" (each independent tree) and
"tree oos" (each re-solve of the rolling policy); a callback that raises stops the analysis there.
"""

from __future__ import annotations

from collections.abc import Callable

from optimizer.fleet import Fleet
from optimizer.tree_report import TreeReport, tree_report


def plan_tree(fleet: Fleet, progress: Callable[[str, int, int], None] | None = None) -> TreeReport:
    from optimizer.option_value import value_of_waiting
    from optimizer.rolling import evaluate_rolling

    settings = fleet.tree
    if settings is None:
        raise ValueError("the fleet has no `tree` settings")
    report = progress or (lambda stage, done, total: None)
    dates, branching = settings.decision_months, settings.per_date()
    result = value_of_waiting(
        fleet,
        dates,
        branching,
        replications=settings.replications,
        time_limit_s=fleet.solver.time_limit_s or 120.0,
        mip_rel_gap=fleet.solver.mip_rel_gap,
        progress=report,
    )
    rolling = None
    if settings.out_of_sample:
        report("tree oos", 0, 1)
        rolling = evaluate_rolling(
            fleet,
            result.in_sample,
            fleet.scenarios.seed,
            time_limit_s=fleet.solver.time_limit_s or 120.0,
            mip_rel_gap=fleet.solver.mip_rel_gap,
        )
        report("tree oos", 1, 1)
    return tree_report(fleet, dates, branching, result, rolling)
