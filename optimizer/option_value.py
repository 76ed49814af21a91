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
table lists the nodes; when the converting nodes all saw a lower hashprice than the waiting ones the
rule reads "convert if hashprice <= h*" with h* the midpoint between the two groups (the same for BTC
price), else the regions overlap and the table is the rule.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from optimizer.economics import GroupEconomics, economics_grid, group_economics
from optimizer.fleet import Fleet, RiskSettings
from optimizer.formulation import build_compact_model, extract_allocation
from optimizer.multistage import TreePlan, build_multistage_model, extract_tree_plan, tree_index
from optimizer.scenarios import OPTIMIZATION_STREAM, SAA_FIRST_STREAM
from optimizer.tree import ScenarioTree, build_tree, build_tree_from_branching
from optimizer.tree_scenarios import TreeScenarios, generate_tree_scenarios


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
) -> TreeSolution:
    """Draw the tree's paths (or take `paths`: a user's tree), then solve the multi-stage, now-or-never and
    (optionally) wait-and-see plans."""
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
        values = [
            solve(build_compact_model(fleet, economics.columns([w]), risk), time_limit_s, mip_rel_gap).objective_usd
            for w in range(tree.n_leaves)
        ]
        ws = float(tree.leaf_probability() @ np.array(values))
        timings["wait_and_see"] = time.perf_counter() - start
    return TreeSolution(tree, paths, economics, plan, now_plan, multi_usd, now_usd, ws, multi_size, now_size, timings)


@dataclass(frozen=True)
class Interval:
    estimate_usd: float
    lower_usd: float | None  # None: fewer than two replications
    upper_usd: float | None
    confidence_level: float
    values_usd: tuple[float, ...]


@dataclass(frozen=True)
class WaitingValue:
    """The in-sample tree's three plans, and the value of waiting with its interval over independent trees."""

    in_sample: TreeSolution
    value_of_waiting: Interval
    replications: tuple[TreeSolution, ...]


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
) -> WaitingValue:
    """Solve the plan's tree (stream 0) and `replications` independent trees (streams 2, 3, ...).

    `progress(stage, done, total)` hears "tree" once the plan's tree is solved and "tree reps" per replication.
    `provided`: the plan's tree from a file (optimizer.tree_io); the independent trees are drawn with its shape
    when it is uniform, else with `decision_months` and `branching`.
    """
    from optimizer.robustness import t_interval

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
        fleet, in_tree, seed, OPTIMIZATION_STREAM, wait_and_see=wait_and_see, paths=provided, **options
    )
    report("tree", 1, 1)
    reps = []
    for r in range(replications):
        reps.append(solve_tree(fleet, tree, seed, SAA_FIRST_STREAM + r, wait_and_see=False, **options))
        report("tree reps", r + 1, replications)
    reps = tuple(reps)
    values = np.array([r.value_of_waiting_usd for r in reps]) if reps else np.array([in_sample.value_of_waiting_usd])
    ci = t_interval(values, confidence_level)
    interval = Interval(ci.estimate_usd, ci.lower_usd, ci.upper_usd, confidence_level, tuple(float(v) for v in values))
    return WaitingValue(in_sample, interval, reps)


@dataclass(frozen=True)
class RulePoint:
    node: int
    hashprice_usd_per_ph_day: float
    btc_price_usd: float
    action: ConversionAction


@dataclass(frozen=True)
class DecisionRule:
    """At one decision date, for one AI site: what each node saw and did, and the thresholds if they separate."""

    decision_month: float
    site: str
    points: tuple[RulePoint, ...]
    convert_below_hashprice: float | None  # convert if hashprice <= this (None: not separable or not needed)
    convert_below_btc_price: float | None
    convert_above_hashprice: float | None  # convert if hashprice >= this (the rarer, opposite direction)
    convert_above_btc_price: float | None

    def text(self) -> str:
        converts = [p for p in self.points if p.action is ConversionAction.CONVERT]
        waits = [p for p in self.points if p.action is ConversionAction.WAIT]
        if not converts:
            return f"month {self.decision_month:g}, site {self.site}: never converts here ({len(waits)} nodes wait)"
        if not waits:
            return f"month {self.decision_month:g}, site {self.site}: converts on every open path"
        parts = []
        if self.convert_below_hashprice is not None:
            parts.append(f"hashprice <= {self.convert_below_hashprice:.2f} $/PH/day")
        if self.convert_above_hashprice is not None:
            parts.append(f"hashprice >= {self.convert_above_hashprice:.2f} $/PH/day")
        if self.convert_below_btc_price is not None:
            parts.append(f"BTC <= {self.convert_below_btc_price:,.0f} $")
        if self.convert_above_btc_price is not None:
            parts.append(f"BTC >= {self.convert_above_btc_price:,.0f} $")
        rule = " or ".join(parts) if parts else "no single threshold separates: see the table"
        return f"month {self.decision_month:g}, site {self.site}: convert if {rule}"


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
    conv = [p for p in points if p.action is ConversionAction.CONVERT]
    wait = [p for p in points if p.action is ConversionAction.WAIT]

    def split(values_c, values_w):
        if not values_c or not values_w:
            return None, None
        below = (max(values_c) + min(values_w)) / 2 if max(values_c) < min(values_w) else None
        above = (min(values_c) + max(values_w)) / 2 if min(values_c) > max(values_w) else None
        return below, above

    hp_below, hp_above = split([p.hashprice_usd_per_ph_day for p in conv], [p.hashprice_usd_per_ph_day for p in wait])
    btc_below, btc_above = split([p.btc_price_usd for p in conv], [p.btc_price_usd for p in wait])
    return DecisionRule(month, site, tuple(points), hp_below, btc_below, hp_above, btc_above)
