"""The value of the option to wait, and the decision rule a planner can read off the tree.

On one scenario tree (optimizer.tree) three plans are solved on the same leaves and probabilities:

- now-or-never: the two-stage compact model (optimizer.formulation), every decision taken today
  for all leaves, a conversion at a later start option included (it is committed now);
- multi-stage: optimizer.multistage, a decision dated d_j taken by the node at d_j;
- wait-and-see: each leaf's own optimum knowing its whole future, weighted by its probability
  (an upper bound no policy reaches).

For a maximisation now-or-never <= multi-stage <= wait-and-see, since each relaxes the information
constraints of the previous. The value of the option to wait is VW = multi-stage - now-or-never
(in the fleet's risk objective), and wait-and-see - multi-stage is what perfect foresight would add.

Interval: VW on one tree is a sample estimate. R independent trees (seed streams SAA_FIRST_STREAM +
r of optimizer.scenarios, never the plan's stream 0) give i.i.d. VW_r; their two-sided Student-t
interval (optimizer.robustness.t_interval, as the SAA gap) is reported with the in-sample figure.
When converting now dominates, every VW_r is 0 up to the solver's gap, and so is the interval.

Decision rule: at each decision date, each node of that depth observed a BTC price and a trailing
30-day mean hashprice (optimizer.tree_scenarios) and either started a site's conversion, kept
waiting, or had already converted (or can no longer: no later start option). Per (date, site) the
table lists the nodes, and the converting and waiting nodes are partitioned into at most four
axis-aligned regions of the (hashprice, BTC price) plane labelled convert or wait
(optimizer.decision_regions), with the share of nodes the regions reproduce.

Work: each independent tree is one task of `run_tasks(fn, arg_lists)` (default: here, one after the
other; solvers.tree_tasks runs them on Ray). A tree's draws depend only on (seed, stream, node
position), so the result is the same however the tasks are split.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimizer.decision_regions import RegionRule, fit_regions
from optimizer.economics import GroupEconomics, economics_grid, group_economics
from optimizer.fleet import Fleet, RiskSettings
from optimizer.formulation import build_compact_model, extract_allocation
from optimizer.multistage import TreePlan, build_multistage_model, extract_tree_plan, tree_index
from optimizer.scenarios import OPTIMIZATION_STREAM, SAA_FIRST_STREAM
from optimizer.tree import ScenarioTree, build_tree, build_tree_from_branching
from optimizer.tree_scenarios import TreeScenarios, generate_tree_scenarios

TaskMap = Callable[[Callable, Sequence[tuple]], list]  # run fn(*args) for each args tuple; results in order
WAIT_AND_SEE_LEAVES = 10  # single-leaf solves per task: each is short, a task amortises its overhead


def run_here(fn: Callable, arg_lists: Sequence[tuple]) -> list[Any]:
    """The default TaskMap: every task in this process, in order."""
    return [fn(*args) for args in arg_lists]


class ConversionAction(enum.Enum):
    CONVERT = "convert"  # the node starts the site's conversion
    WAIT = "wait"  # the node could start it now or later and does not
    CONVERTED = "converted"  # an ancestor already started it
    CLOSED = "closed"  # no start option at or after this date: the site keeps what it has


@dataclass(frozen=True)
class ModelSize:
    nodes: int
    scenarios: int
    variables: int
    integer_variables: int
    constraints: int


@dataclass(frozen=True)
class TreeSolution:
    tree: ScenarioTree
    paths: TreeScenarios
    economics: GroupEconomics
    plan: TreePlan
    now_plan: object  # Allocation: the best decide-everything-now plan on the same leaves
    multistage_usd: float
    now_or_never_usd: float
    wait_and_see_usd: float | None
    multistage_size: ModelSize
    now_or_never_size: ModelSize
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def value_of_waiting_usd(self) -> float:
        return self.multistage_usd - self.now_or_never_usd


def model_size(model, n_nodes: int, n_scenarios: int) -> ModelSize:
    import pyomo.environ as pyo

    variables = list(model.component_data_objects(pyo.Var, active=True, descend_into=True))
    integers = sum(1 for v in variables if v.is_integer() or v.is_binary())
    constraints = sum(1 for _ in model.component_data_objects(pyo.Constraint, active=True, descend_into=True))
    return ModelSize(n_nodes, n_scenarios, len(variables), integers, constraints)


def solve_tree(
    fleet: Fleet,
    tree: ScenarioTree,
    seed: int,
    stream: int = OPTIMIZATION_STREAM,
    *,
    risk: RiskSettings | None = None,
    time_limit_s: float = 120.0,
    mip_rel_gap: float = 0.0,
    wait_and_see: bool = True,
    paths: TreeScenarios | None = None,
    run_tasks: TaskMap = run_here,
) -> TreeSolution:
    """Draw the tree's paths (or take `paths`: a user's tree), then solve the multi-stage, now-or-never and
    (optionally) wait-and-see plans; the wait-and-see leaves in batches of WAIT_AND_SEE_LEAVES per task."""
    from solvers.highs import solve

    risk = risk or fleet.risk
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if paths is None:
        paths = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, tree, seed, stream)
    economics = group_economics(fleet, paths.scenarios)
    timings["scenarios_and_economics"] = time.perf_counter() - start

    start = time.perf_counter()
    multi = build_multistage_model(fleet, tree, economics, risk)
    multi_size = model_size(multi, tree.n_nodes, tree.n_leaves)
    multi_usd = solve(multi, time_limit_s, mip_rel_gap).objective_usd
    plan = extract_tree_plan(multi, fleet)
    timings["multistage"] = time.perf_counter() - start

    start = time.perf_counter()
    now = build_compact_model(fleet, economics, risk, tree.leaf_probability())
    now_size = model_size(now, 1, tree.n_leaves)
    now_usd = solve(now, time_limit_s, mip_rel_gap).objective_usd
    now_plan = extract_allocation(now, fleet)
    timings["now_or_never"] = time.perf_counter() - start

    ws = None
    if wait_and_see:
        start = time.perf_counter()
        limits, n = (time_limit_s, mip_rel_gap), tree.n_leaves
        batches = [
            (fleet, economics.columns(range(first, min(first + WAIT_AND_SEE_LEAVES, n))), risk, limits)
            for first in range(0, n, WAIT_AND_SEE_LEAVES)
        ]
        values = [v for batch in run_tasks(leaf_optima, batches) for v in batch]
        ws = float(tree.leaf_probability() @ np.array(values))
        timings["wait_and_see"] = time.perf_counter() - start
    return TreeSolution(tree, paths, economics, plan, now_plan, multi_usd, now_usd, ws, multi_size, now_size, timings)


def leaf_optima(fleet: Fleet, economics: GroupEconomics, risk: RiskSettings, limits: tuple[float, float]) -> list:
    """Each leaf's own optimum, knowing its whole future (the wait-and-see bound's terms)."""
    from solvers.highs import solve

    return [
        solve(build_compact_model(fleet, economics.columns([w]), risk), *limits).objective_usd
        for w in range(economics.n_scenarios)
    ]


@dataclass(frozen=True)
class Interval:
    estimate_usd: float
    lower_usd: float | None  # None: fewer than two replications
    upper_usd: float | None
    confidence_level: float
    values_usd: tuple[float, ...]


def interval_of(values: Sequence[float], confidence_level: float) -> Interval:
    """The two-sided Student-t interval on the mean of i.i.d. values (optimizer.robustness.t_interval, as the SAA
    gap); fewer than two values: no bounds."""
    from optimizer.robustness import t_interval

    ci = t_interval(np.asarray(values, dtype=float), confidence_level)
    return Interval(ci.estimate_usd, ci.lower_usd, ci.upper_usd, confidence_level, tuple(float(v) for v in values))


@dataclass(frozen=True)
class ReplicationValue:
    """What an independent tree contributes to the interval (its paths stay in the task that drew them)."""

    stream: int
    multistage_usd: float
    now_or_never_usd: float
    timings_s: dict[str, float]

    @property
    def value_of_waiting_usd(self) -> float:
        return self.multistage_usd - self.now_or_never_usd


def solve_replication(fleet: Fleet, tree: ScenarioTree, seed: int, stream: int, options: dict) -> ReplicationValue:
    """One independent tree: draw it from (seed, stream), solve its multi-stage and now-or-never plans."""
    solution = solve_tree(fleet, tree, seed, stream, wait_and_see=False, **options)
    return ReplicationValue(stream, solution.multistage_usd, solution.now_or_never_usd, solution.timings_s)


@dataclass(frozen=True)
class WaitingValue:
    """The in-sample tree's three plans, and the value of waiting with its interval over independent trees."""

    in_sample: TreeSolution
    value_of_waiting: Interval
    replications: tuple[ReplicationValue, ...]
    replications_wall_s: float = 0.0  # the independent trees' wall time (their tasks may run in parallel)


def value_of_waiting(
    fleet: Fleet,
    decision_months: list[float],
    branching: int | list[int],
    *,
    seed: int | None = None,
    replications: int = 5,
    confidence_level: float = 0.95,
    risk: RiskSettings | None = None,
    time_limit_s: float = 120.0,
    mip_rel_gap: float = 0.0,
    wait_and_see: bool = True,
    progress=None,
    provided: TreeScenarios | None = None,
    run_tasks: TaskMap = run_here,
) -> WaitingValue:
    """Solve the plan's tree (stream 0) and `replications` independent trees (streams 2, 3, ...).

    `progress(stage, done, total)` hears "tree" once the plan's tree is solved and "tree reps" once the
    independent trees (tasks of `run_tasks`) are.
    `provided`: the plan's tree from a file (optimizer.tree_io); the independent trees are drawn with its shape
    when it is uniform, else with `decision_months` and `branching`.
    """

    seed = fleet.scenarios.seed if seed is None else seed
    if provided is None:
        tree = build_tree(decision_months, branching, fleet.horizon.step_hours, fleet.horizon.n_steps)
    else:  # independent trees of the provided tree's dates and (first nodes') branching
        ks = [len(provided.tree.children(provided.tree.nodes_at_depth(j)[0])) for j in range(provided.tree.n_stages)]
        tree = build_tree_from_branching(provided.tree.decision_steps, ks, provided.tree.n_steps)
    options = dict(risk=risk, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)
    report = progress or (lambda stage, done, total: None)
    report("tree", 0, 1)
    in_tree = tree if provided is None else provided.tree
    in_sample = solve_tree(
        fleet,
        in_tree,
        seed,
        OPTIMIZATION_STREAM,
        wait_and_see=wait_and_see,
        paths=provided,
        run_tasks=run_tasks,
        **options,
    )
    report("tree", 1, 1)
    report("tree reps", 0, replications)
    start = time.perf_counter()
    reps = tuple(
        run_tasks(solve_replication, [(fleet, tree, seed, SAA_FIRST_STREAM + r, options) for r in range(replications)])
    )
    report("tree reps", replications, replications)
    values = [r.value_of_waiting_usd for r in reps] if reps else [in_sample.value_of_waiting_usd]
    return WaitingValue(in_sample, interval_of(values, confidence_level), reps, time.perf_counter() - start)


@dataclass(frozen=True)
class RulePoint:
    node: int
    hashprice_usd_per_ph_day: float
    btc_price_usd: float
    action: ConversionAction


@dataclass(frozen=True)
class DecisionRule:
    """At one decision date, for one AI site: what each node saw and did, and the regions that separate them."""

    decision_month: float
    site: str
    points: tuple[RulePoint, ...]
    regions: RegionRule  # fitted on the converting and waiting nodes (the others had no choice)

    def text(self) -> str:
        converts = [p for p in self.points if p.action is ConversionAction.CONVERT]
        waits = [p for p in self.points if p.action is ConversionAction.WAIT]
        where = f"month {self.decision_month:g}, site {self.site}"
        if not converts and not waits:
            done = sum(p.action is ConversionAction.CONVERTED for p in self.points)
            return f"{where}: no choice left ({done} converted earlier, {len(self.points) - done} closed)"
        if not converts:
            return f"{where}: never converts here ({len(waits)} nodes wait)"
        if not waits:
            return f"{where}: converts on every open path"
        fit = self.regions
        reproduced = f"reproduces {fit.nodes - fit.misclassified} of {fit.nodes} nodes"
        return f"{where}: convert if {fit.text()} ({reproduced})"


def decision_rules(fleet: Fleet, solution: TreeSolution, decision_months: list[float]) -> list[DecisionRule]:
    tree, paths = solution.tree, solution.paths
    grid = economics_grid(fleet, solution.economics)
    index = tree_index(fleet, grid, tree)
    decided = {node.node: node for node in solution.plan.nodes}
    out = []
    for j, month in enumerate(decision_months):
        for site in [s.id for s in fleet.sites if s.ai is not None]:
            open_later = any(stage >= j for (s, _), stage in index.start_stage.items() if s == site)
            points = []
            for n in tree.nodes_at_depth(j):
                earlier = any(site in decided[a].conversion_start for a in tree.path(n)[:-1])
                if earlier:
                    action = ConversionAction.CONVERTED
                elif site in decided[n].conversion_start:
                    action = ConversionAction.CONVERT
                elif open_later:
                    action = ConversionAction.WAIT
                else:
                    action = ConversionAction.CLOSED
                hashprice = float(paths.node_hashprice_usd_per_ph_day[n])
                points.append(RulePoint(n, hashprice, float(paths.node_btc_price_usd[n]), action))
            out.append(_rule(month, site, points))
    return out


def _rule(month: float, site: str, points: list[RulePoint]) -> DecisionRule:
    chose = [p for p in points if p.action in (ConversionAction.CONVERT, ConversionAction.WAIT)]
    states = [(p.hashprice_usd_per_ph_day, p.btc_price_usd) for p in chose]
    regions = fit_regions(states, [p.action is ConversionAction.CONVERT for p in chose])
    return DecisionRule(month, site, tuple(points), regions)
