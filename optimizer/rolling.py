"""Out-of-sample scoring of the multi-stage policy by re-solving at each node (rolling horizon).

Fresh evaluation trees (seed stream EVALUATION_STREAM, tree t keyed by the prefix (t,), same dates and
branching) are walked from the root. At its root the policy takes the in-sample multi-stage plan's root
decision. At each later decision node v of depth j it re-plans, knowing only v's history: a look-ahead
tree is built whose first j levels are a chain carrying v's realised segments (so its paths share v's
history exactly) and whose later levels branch afresh from v's end state (seed stream LOOKAHEAD_STREAM,
keyed by (t, v's position), so look-ahead trees of different nodes and fresh trees are independent); the
multi-stage model is solved on it with every decision of v's ancestors fixed to what the policy already
did, and v takes the decision of its chain node. No in-sample decision below the root is reused, and
nothing v decides depends on v's future.

Each evaluation leaf then lives the plan its path assembled (optimizer.multistage.combine_path),
scored by the exact numpy evaluator (optimizer.allocation.scenario_profits_usd) on the leaf's own
economics. The now-or-never plan (two-stage on the in-sample leaves) and the calculator rule
(optimizer.robustness.calculator_allocation at the in-sample mean hashprice and power prices) are
scored on the same leaves; the out-of-sample value of waiting is rolling - now-or-never.

Several fresh trees give i.i.d. scores: each policy's objective, and the paired differences rolling -
now-or-never and rolling - calculator, get a Student-t interval over the trees (as the SAA gap does).

Work, as tasks of `run_tasks` (optimizer.option_value.TaskMap; solvers.tree_tasks runs them on Ray):
drawing each fresh tree, then level by level every node of that depth in every fresh tree (a node's
re-plan needs its ancestors' decisions, not its siblings'). Each task's draws depend only on (seed,
stream, tree and node position), so the result is the same however the tasks are split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from optimizer.allocation import Allocation, scenario_profits_usd
from optimizer.economics import GroupEconomics, economics_grid, group_economics, site_power_price_usd_per_mwh
from optimizer.fleet import Fleet, RiskSettings
from optimizer.multistage import NodeDecision, build_multistage_model, combine_path, extract_tree_plan
from optimizer.option_value import Interval, TaskMap, TreeSolution, interval_of, run_here
from optimizer.risk import risk_objective_value
from optimizer.scenarios import EVALUATION_STREAM
from optimizer.tree import ScenarioTree
from optimizer.tree_scenarios import generate_tree_scenarios

LOOKAHEAD_STREAM = 1_000  # look-ahead trees of the rolling policy (prefixed keys: apart from the SAA streams 2 + r)
POLICIES = ("multi-stage (rolling)", "now-or-never", "calculator")


@dataclass(frozen=True)
class PolicyScore:
    policy: str  # one of POLICIES
    objective_usd: float  # the fleet's risk objective over the evaluation leaves
    mean_usd: float
    profits_usd: np.ndarray  # [S] per evaluation leaf


@dataclass(frozen=True)
class RollingEvaluation:
    """One fresh tree: the three policies' scores and what the rolling policy decided at each node."""

    tree: ScenarioTree
    scores: tuple[PolicyScore, ...]
    decisions: dict[int, NodeDecision]  # evaluation node -> what the rolling policy decided there
    solves: int

    def score(self, policy: str) -> PolicyScore:
        return next(s for s in self.scores if s.policy == policy)

    @property
    def value_of_waiting_usd(self) -> float:
        return self.score("multi-stage (rolling)").objective_usd - self.score("now-or-never").objective_usd

    @property
    def gain_over_calculator_usd(self) -> float:
        return self.score("multi-stage (rolling)").objective_usd - self.score("calculator").objective_usd


@dataclass(frozen=True)
class RollingStudy:
    """The rolling policy and its baselines on several fresh trees, with intervals over the trees."""

    evaluations: tuple[RollingEvaluation, ...]
    objectives: dict[str, Interval]  # policy -> its objective over the fresh trees
    value_of_waiting: Interval  # rolling - now-or-never, paired per tree
    gain_over_calculator: Interval  # rolling - calculator, paired per tree
    wall_s: float

    @property
    def solves(self) -> int:
        return sum(e.solves for e in self.evaluations)


@dataclass(frozen=True)
class FreshTree:
    """What the rolling policy needs of a fresh tree: its decision nodes' segments and its leaves' economics."""

    history: dict[int, tuple]  # decision node (not the root) -> (segment, end state)
    economics: GroupEconomics


def draw_fresh_tree(fleet: Fleet, tree: ScenarioTree, seed: int, index: int) -> FreshTree:
    """Fresh tree `index`: its paths from (seed, EVALUATION_STREAM, (index,)), kept as far as the policy needs."""
    paths = generate_tree_scenarios(
        fleet.bitcoin, fleet.markets, fleet.horizon, tree, seed, EVALUATION_STREAM, key_prefix=(index,)
    )
    decision_nodes = [n for n in range(1, tree.n_nodes) if tree.depth(n) < tree.n_stages]
    history = {n: (paths.segments[n], paths.states[n]) for n in decision_nodes}
    return FreshTree(history, group_economics(fleet, paths.scenarios))


def evaluate_rolling(
    fleet: Fleet,
    solution: TreeSolution,
    seed: int,
    *,
    risk: RiskSettings | None = None,
    time_limit_s: float = 120.0,
    mip_rel_gap: float = 0.0,
) -> RollingEvaluation:
    """The policy on one fresh tree (index 0), in this process."""
    study = evaluate_rolling_trees(
        fleet, solution, seed, 1, risk=risk, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap
    )
    return study.evaluations[0]


def evaluate_rolling_trees(
    fleet: Fleet,
    solution: TreeSolution,
    seed: int,
    trees: int,
    *,
    risk: RiskSettings | None = None,
    time_limit_s: float = 120.0,
    mip_rel_gap: float = 0.0,
    confidence_level: float = 0.95,
    run_tasks: TaskMap = run_here,
    progress=None,
) -> RollingStudy:
    """Score the rolling policy, now-or-never and the calculator rule on `trees` fresh trees.

    `progress(stage, done, total)` hears "tree oos" with the re-solves done, after each level of nodes.
    """
    start = time.perf_counter()
    risk = risk or fleet.risk
    report = progress or (lambda stage, done, total: None)
    tree = solution.tree
    dr = dict(solution.plan.leaf_plans[0].dr_mw)  # a root commitment: the same on every path
    fresh = run_tasks(draw_fresh_tree, [(fleet, tree, seed, t) for t in range(trees)])
    decisions = _roll(fleet, solution, seed, fresh, dr, risk, (time_limit_s, mip_rel_gap), run_tasks, report)
    calculator = calculator_plan(fleet, solution)
    evaluations = tuple(
        _score(fleet, solution, calculator, fresh[t].economics, decisions[t], dr, risk) for t in range(trees)
    )
    return RollingStudy(
        evaluations,
        {p: interval_of([e.score(p).objective_usd for e in evaluations], confidence_level) for p in POLICIES},
        interval_of([e.value_of_waiting_usd for e in evaluations], confidence_level),
        interval_of([e.gain_over_calculator_usd for e in evaluations], confidence_level),
        time.perf_counter() - start,
    )


def _roll(fleet, solution, seed, fresh, dr, risk, limits, run_tasks, report) -> list[dict[int, NodeDecision]]:
    """Every fresh tree's decisions per node: the in-sample root, then each level re-planned as one batch of tasks."""
    tree = solution.tree
    decisions: list[dict[int, NodeDecision]] = [{0: solution.plan.root} for _ in fresh]
    jobs_total = (tree.n_nodes - tree.n_leaves - 1) * len(fresh)
    done = 0
    report("tree oos", 0, jobs_total)
    for depth in range(1, tree.n_stages):
        jobs = [(t, node) for t in range(len(fresh)) for node in tree.nodes_at_depth(depth)]
        args = []
        for t, node in jobs:
            history = tree.path(node)
            given = [fresh[t].history[h] for h in history[1:]]
            ancestors = [decisions[t][h] for h in history[:-1]]
            args.append((fleet, tree, seed, (t, *tree.position[node]), given, ancestors, dr, risk, limits))
        for (t, node), chosen in zip(jobs, run_tasks(replan_node, args), strict=True):
            decisions[t][node] = NodeDecision(
                node, depth, chosen.lifecycles, chosen.conversion_start, chosen.lease_mw, chosen.purchases
            )
        done += len(jobs)
        report("tree oos", done, jobs_total)
    return decisions


def _score(fleet, solution, calculator, economics, decisions, dr, risk) -> RollingEvaluation:
    tree = solution.tree
    grid = economics_grid(fleet, economics)
    leaf_plans = [combine_path(fleet, grid, [decisions[n] for n in tree.path(leaf)[:-1]], dr) for leaf in tree.leaves]
    rolling = np.array(
        [scenario_profits_usd(fleet, economics.columns([w]), p, grid)[0] for w, p in enumerate(leaf_plans)]
    )
    now = scenario_profits_usd(fleet, economics, solution.now_plan, grid)
    calc = scenario_profits_usd(fleet, economics, calculator, grid)
    probability = tree.leaf_probability()
    scores = tuple(
        PolicyScore(name, _objective(values, risk, probability), float(probability @ values), values)
        for name, values in zip(POLICIES, (rolling, now, calc), strict=True)
    )
    return RollingEvaluation(tree, scores, decisions, len(decisions) - 1)


def _objective(values: np.ndarray, risk: RiskSettings, probability: np.ndarray) -> float:
    if np.allclose(probability, probability[0]):
        return risk_objective_value(values, risk.objective.value, risk.alpha, risk.weight)
    return float(probability @ values)  # uneven trees: expected value


def calculator_plan(fleet: Fleet, solution: TreeSolution) -> Allocation:
    """The profitability-calculator rule at the in-sample leaves' mean hashprice and power prices."""
    from optimizer.robustness import calculator_allocation

    scenarios = solution.paths.scenarios
    hashprice = float(scenarios.hashprice_usd_per_ph_day.mean())
    power = {s.id: float(site_power_price_usd_per_mwh(s, scenarios).mean()) for s in fleet.sites}
    return calculator_allocation(fleet, hashprice, power)


def replan_node(
    fleet: Fleet,
    tree: ScenarioTree,
    seed: int,
    key: tuple[int, ...],
    given: list[tuple],
    ancestors: list[NodeDecision],
    dr: dict[str, float],
    risk: RiskSettings,
    limits: tuple[float, float],
) -> NodeDecision:
    """The decision at a node of depth len(given) whose history carries the segments `given` (the root's
    child first) and whose ancestors decided `ancestors`: solve a look-ahead tree from that history.

    `key`: (fresh tree, node position), the look-ahead tree's name in its seed keys. The decision returned
    is the look-ahead chain node's (its `node` field is the look-ahead tree's numbering).
    """
    from optimizer.tree import build_tree_from_branching
    from solvers.highs import solve

    depth = len(given)
    ks = [1] * depth + [_branching_at(tree, d) for d in range(depth, tree.n_stages)]
    look = build_tree_from_branching(tree.decision_steps, ks, tree.n_steps)
    chain = list(range(depth + 1))  # look-ahead nodes 0..depth form the chain of the history
    ahead = generate_tree_scenarios(
        fleet.bitcoin,
        fleet.markets,
        fleet.horizon,
        look,
        seed,
        LOOKAHEAD_STREAM,
        given=dict(zip(chain[1:], given, strict=True)),
        key_prefix=key,
    )
    economics = group_economics(fleet, ahead.scenarios)
    model = build_multistage_model(fleet, look, economics, risk)
    grid = model.grid_info.grid
    for c, decision in zip(chain[:-1], ancestors, strict=True):
        _fix_node(model, fleet, grid, c, decision)
    if depth > 0:
        for s in model.dr_mw:
            model.dr_mw[s].fix(dr.get(s, 0.0))
    solve(model, *limits)
    plan = extract_tree_plan(model, fleet)
    return next(d for d in plan.nodes if d.node == chain[-1])


def _branching_at(tree: ScenarioTree, depth: int) -> int:
    node = tree.nodes_at_depth(depth)[0]
    return len(tree.children(node))


def _fix_node(model, fleet: Fleet, grid, node: int, decision: NodeDecision) -> None:
    for n, g, ell in model.NX:
        if n == node:
            key = grid.lifecycles[g][ell].key
            model.x[n, g, ell].fix(decision.lifecycles.get(fleet.rack_groups[g].id, {}).get(key, 0))
    for n, s, k in model.NSTARTS:
        if n == node:
            model.convert_at[n, s, k].fix(int(decision.conversion_start.get(s) == k))
    for n, o, s, k in model.NLEASES:
        if n == node:
            on = decision.conversion_start.get(s) == k
            model.lease_mw[n, o, s, k].fix(decision.lease_mw.get((o, s), 0.0) if on else 0.0)
    for n, b in model.NBUY:
        if n == node:
            model.buy[n, b].fix(decision.purchases.get(grid.purchase_lots[b].key, 0))
