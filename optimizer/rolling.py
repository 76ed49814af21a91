"""Out-of-sample scoring of the multi-stage policy by re-solving at each node (rolling horizon).

A fresh evaluation tree (seed stream EVALUATION_STREAM, same dates and branching) is walked from the
root. At its root the policy takes the in-sample multi-stage plan's root decision. At each later
decision node v of depth j it re-plans, knowing only v's history: a look-ahead tree is built whose
first j levels are a chain carrying v's realised segments (so its paths share v's history exactly)
and whose later levels branch afresh from v's end state (seed stream LOOKAHEAD_STREAM, keyed by v's
position so look-ahead trees of different nodes are independent); the multi-stage model is solved
on it with every decision of v's ancestors fixed to what the policy already did, and v takes the
decision of its chain node. No in-sample decision below the root is reused, and nothing v decides
depends on v's future.

Each evaluation leaf then lives the plan its path assembled (optimizer.multistage.combine_path),
scored by the exact numpy evaluator (optimizer.allocation.scenario_profits_usd) on the leaf's own
economics. The now-or-never plan (two-stage on the in-sample leaves) and the calculator rule
(optimizer.robustness.calculator_allocation at the in-sample mean hashprice and power prices) are
scored on the same leaves; the out-of-sample value of waiting is rolling - now-or-never.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from optimizer.allocation import Allocation, scenario_profits_usd
from optimizer.economics import economics_grid, group_economics, site_power_price_usd_per_mwh
from optimizer.fleet import Fleet, RiskSettings
from optimizer.multistage import NodeDecision, build_multistage_model, combine_path, extract_tree_plan
from optimizer.option_value import TreeSolution
from optimizer.risk import risk_objective_value
from optimizer.scenarios import EVALUATION_STREAM
from optimizer.tree import ScenarioTree
from optimizer.tree_scenarios import generate_tree_scenarios

LOOKAHEAD_STREAM = 1_000  # look-ahead trees of the rolling policy; far from the SAA streams 2 + r


@dataclass(frozen=True)
class PolicyScore:
    policy: str  # "multi-stage (rolling)", "now-or-never", "calculator"
    objective_usd: float  # the fleet's risk objective over the evaluation leaves
    mean_usd: float
    profits_usd: np.ndarray  # [S] per evaluation leaf


@dataclass(frozen=True)
class RollingEvaluation:
    tree: ScenarioTree
    scores: tuple[PolicyScore, ...]
    decisions: dict[int, NodeDecision]  # evaluation node -> what the rolling policy decided there
    solves: int
    wall_s: float

    def score(self, policy: str) -> PolicyScore:
        return next(s for s in self.scores if s.policy == policy)

    @property
    def value_of_waiting_usd(self) -> float:
        return self.score("multi-stage (rolling)").objective_usd - self.score("now-or-never").objective_usd


def evaluate_rolling(
    fleet: Fleet,
    solution: TreeSolution,
    seed: int,
    *,
    risk: RiskSettings | None = None,
    stream: int = EVALUATION_STREAM,
    time_limit_s: float = 120.0,
    mip_rel_gap: float = 0.0,
) -> RollingEvaluation:
    from solvers.highs import solve

    start = time.perf_counter()
    risk = risk or fleet.risk
    tree = solution.tree
    paths = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, tree, seed, stream)
    economics = group_economics(fleet, paths.scenarios)
    grid = economics_grid(fleet, economics)
    root = solution.plan.root
    dr = dict(solution.plan.leaf_plans[0].dr_mw)  # a root commitment: the same on every path
    decisions: dict[int, NodeDecision] = {0: root}
    solves = 0
    for node in range(1, tree.n_nodes):
        depth = tree.depth(node)
        if depth >= tree.n_stages:
            continue
        history = tree.path(node)
        decisions[node] = _replan(
            fleet, tree, paths, history, decisions, dr, seed, risk, solve, time_limit_s, mip_rel_gap
        )
        solves += 1
    leaf_plans = [combine_path(fleet, grid, [decisions[n] for n in tree.path(leaf)[:-1]], dr) for leaf in tree.leaves]
    rolling = np.array(
        [scenario_profits_usd(fleet, economics.columns([w]), p, grid)[0] for w, p in enumerate(leaf_plans)]
    )
    now = scenario_profits_usd(fleet, economics, solution.now_plan, grid)
    calculator = scenario_profits_usd(fleet, economics, calculator_plan(fleet, solution), grid)
    probability = tree.leaf_probability()
    scores = tuple(
        PolicyScore(name, _objective(values, risk, probability), float(probability @ values), values)
        for name, values in (("multi-stage (rolling)", rolling), ("now-or-never", now), ("calculator", calculator))
    )
    return RollingEvaluation(tree, scores, decisions, solves, time.perf_counter() - start)


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


def _replan(fleet, tree, paths, history, decisions, dr, seed, risk, solve, time_limit_s, mip_rel_gap):
    """The decision at evaluation node history[-1]: solve a look-ahead tree from its history, ancestors fixed."""
    from optimizer.tree import build_tree_from_branching

    node, depth = history[-1], len(history) - 1
    ks = [1] * depth + [_branching_at(tree, d) for d in range(depth, tree.n_stages)]
    look = build_tree_from_branching(tree.decision_steps, ks, tree.n_steps)
    chain = list(range(depth + 1))  # look-ahead nodes 0..depth form the chain of the history
    given = {c: (paths.segments[h], paths.states[h]) for c, h in zip(chain[1:], history[1:], strict=True)}
    ahead = generate_tree_scenarios(
        fleet.bitcoin,
        fleet.markets,
        fleet.horizon,
        look,
        seed,
        LOOKAHEAD_STREAM,
        given=given,
        key_prefix=tree.position[node],
    )
    economics = group_economics(fleet, ahead.scenarios)
    model = build_multistage_model(fleet, look, economics, risk)
    grid = model.grid_info.grid
    for c, h in zip(chain[:-1], history[:-1], strict=True):
        _fix_node(model, fleet, grid, c, decisions[h])
    if depth > 0:
        for s in model.dr_mw:
            model.dr_mw[s].fix(dr.get(s, 0.0))
    solve(model, time_limit_s, mip_rel_gap)
    plan = extract_tree_plan(model, fleet)
    chosen = next(d for d in plan.nodes if d.node == chain[-1])
    return NodeDecision(node, depth, chosen.lifecycles, chosen.conversion_start, chosen.lease_mw, chosen.purchases)


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
