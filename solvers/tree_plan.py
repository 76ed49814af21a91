"""The scenario-tree analysis of a fleet with `tree` settings: multi-stage plan, value of waiting with its
interval, decision rule and (optionally) the rolling out-of-sample score; shared by the CLI and the service.

The plan's tree is solved here; the independent trees and the rolling policy's fresh trees and
re-solves are tasks on Ray (solvers.tree_tasks) when Ray is up or configured, else here. Every draw is
keyed by (seed, stream, tree and node position), so the result is the same wherever it runs and for
any number of workers. `progress(stage, done, total)` hears "tree" (the plan's tree), "tree reps" (the
independent trees) and "tree oos" (the re-solves of the rolling policy, per level of nodes); a callback
that raises stops the analysis there.

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
    out_of_sample_trees: int | None = None,
    workers: int | None = None,
    local: bool | None = None,
) -> TreeReport:
    """`provided`: the plan's tree from a file (optimizer.tree_io); `export_path`: write the plan's tree there.
    `workers`: tree tasks at once on Ray; `local`: True runs them here, None decides (solvers.tree_tasks)."""
    from solvers.ray_pool import in_process
    from solvers.tree_tasks import tree_task_map

    run_tasks, local = tree_task_map(workers, local)
    with in_process(local):
        counts = {"replications": replications, "out_of_sample_trees": out_of_sample_trees}
        return _plan_tree(fleet, progress, provided, export_path, out_of_sample, counts, run_tasks)


def _plan_tree(fleet, progress, provided, export_path, out_of_sample, counts, run_tasks) -> TreeReport:
    from optimizer.fleet import TreeSettings
    from optimizer.multistage import with_recourse_at
    from optimizer.option_value import value_of_waiting
    from optimizer.rolling import evaluate_rolling_trees

    settings = fleet.tree
    if provided is not None:
        dates, branching = tree_shape(provided.tree, fleet.horizon.step_hours)
        if settings is not None and same_dates(settings.decision_months, provided.tree, fleet):
            dates = list(settings.decision_months)  # the fleet's own months, not ones rounded back from steps
        settings = settings or TreeSettings(
            decision_months=dates,
            branching=branching,
            **{key: n for key, n in counts.items() if n is not None},
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
        run_tasks=run_tasks,
    )
    if export_path is not None:
        from optimizer.tree_io import save_tree_scenarios

        Path(export_path).parent.mkdir(parents=True, exist_ok=True)
        save_tree_scenarios(export_path, result.in_sample.paths)
    rolling = None
    if settings.out_of_sample if out_of_sample is None else out_of_sample:
        rolling = evaluate_rolling_trees(
            fleet,
            result.in_sample,
            fleet.scenarios.seed,
            settings.out_of_sample_trees,
            time_limit_s=fleet.solver.time_limit_s or 120.0,
            mip_rel_gap=min(fleet.solver.mip_rel_gap, TREE_MIP_REL_GAP),
            run_tasks=run_tasks,
            progress=report,
        )
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
