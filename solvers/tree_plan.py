"""The scenario-tree analysis of a fleet with `tree` settings: multi-stage plan, value of waiting with its
interval, decision rule and (optionally) the rolling out-of-sample score; shared by the CLI and the service.

It runs in the caller's process: the trees are small next to the plan's scenario set (the MIP is the
cost), every draw is keyed by (seed, stream, node position), so the result is the same wherever it runs.
`progress(stage, done, total)` hears "tree" (the plan's tree), "tree reps" (each independent tree) and
"tree oos" (each re-solve of the rolling policy); a callback that raises stops the analysis there.

Every decision date after the first is a recourse date of the fleet the analysis plans (optimizer.multistage
.with_recourse_at): its nodes may sell, move, idle or restart racks, besides converting and leasing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from optimizer.fleet import Fleet
from optimizer.tree_report import TreeReport, tree_report

# The tree's models are small; the value of waiting is a difference of two optima, so both are solved to a
# gap far below the difference that matters (the fleet's own gap, if tighter).
TREE_MIP_REL_GAP = 1e-7


def plan_tree(
    fleet: Fleet,
    progress: Callable[[str, int, int], None] | None = None,
    provided=None,
    export_path=None,
    out_of_sample: bool | None = None,
    replications: int | None = None,
) -> TreeReport:
    """`provided`: the plan's tree from a file (optimizer.tree_io); `export_path`: write the plan's tree there."""
    from optimizer.fleet import TreeSettings
    from optimizer.multistage import with_recourse_at
    from optimizer.option_value import value_of_waiting
    from optimizer.rolling import evaluate_rolling

    settings = fleet.tree
    if provided is not None:
        dates, branching = tree_shape(provided.tree, fleet.horizon.step_hours)
        if settings is not None and same_dates(settings.decision_months, provided.tree, fleet):
            dates = list(settings.decision_months)  # the fleet's own months, not ones rounded back from steps
        settings = settings or TreeSettings(
            decision_months=dates,
            branching=branching,
            **({} if replications is None else {"replications": replications}),
        )
    elif settings is None:
        raise ValueError("the fleet has no `tree` settings")
    else:
        dates, branching = settings.decision_months, settings.per_date()
    fleet = with_recourse_at(fleet, dates)
    report = progress or (lambda stage, done, total: None)
    result = value_of_waiting(
        fleet,
        dates,
        branching,
        replications=settings.replications,
        time_limit_s=fleet.solver.time_limit_s or 120.0,
        mip_rel_gap=min(fleet.solver.mip_rel_gap, TREE_MIP_REL_GAP),
        progress=report,
        provided=provided,
    )
    if export_path is not None:
        from optimizer.tree_io import save_tree_scenarios

        Path(export_path).parent.mkdir(parents=True, exist_ok=True)
        save_tree_scenarios(export_path, result.in_sample.paths)
    rolling = None
    if settings.out_of_sample if out_of_sample is None else out_of_sample:
        report("tree oos", 0, 1)
        rolling = evaluate_rolling(
            fleet,
            result.in_sample,
            fleet.scenarios.seed,
            time_limit_s=fleet.solver.time_limit_s or 120.0,
            mip_rel_gap=min(fleet.solver.mip_rel_gap, TREE_MIP_REL_GAP),
        )
        report("tree oos", 1, 1)
    return tree_report(fleet, dates, branching, result, rolling)


def same_dates(decision_months, tree, fleet: Fleet) -> bool:
    from optimizer.tree import decision_steps_of

    return decision_steps_of(decision_months, fleet.horizon.step_hours, fleet.horizon.n_steps) == tree.decision_steps


def tree_shape(tree, step_hours: float) -> tuple[list[float], list[int]]:
    """Decision months (from the decision steps) and the branching after each date (of the first node there)."""
    from optimizer.constants import DAYS_PER_MONTH, HOURS_PER_DAY

    months = [round(step * step_hours / HOURS_PER_DAY / DAYS_PER_MONTH, 6) for step in tree.decision_steps]
    branching = [len(tree.children(tree.nodes_at_depth(j)[0])) for j in range(tree.n_stages)]
    return months, branching
