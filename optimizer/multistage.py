"""The multi-stage plan on a scenario tree (optimizer.tree): decide now what must be decided now.

The two-stage compact model (optimizer.formulation) counts a group's racks per lifecycle
(optimizer.lifecycles) once for all scenarios. Here each change of course of a lifecycle (its
*departures*: selling, moving, idling, converting, restarting) is decided by the node of the last
decision date d_j at or before it, knowing the path up to d_j:

- `idle`, `sell`, `move:SITE` depart at the start: decided at the root;
- `ai@K:FATE` departs when the site's K-th conversion starts (month m_K);
- `sell@mM`, `move@mM:SITE`, `idle@mM` depart at recourse month M (fleet.recourse_months, which the
  tree analysis sets to its decision dates: with_recourse_at);
- `idle:restart@mK` departs twice: idle at the start (root), mining again at month K (the node at K
  chooses, among the racks the root idled, which restart);
- `mine` departs never: it is what is left;
- a purchase lot (optimizer.lifecycles.PurchaseLot) is ordered by the node of its order date: today's
  at the root, `option@mM` by the node at month M (an option's lots together at most max_racks).

A rack's *choice* at depth j is the lifecycle it follows as far as nodes of depth <= j have decided
(choice_at_depth: `idle` at the root for a rack that will restart later). A node n of depth j takes
x[n, g, l] racks of group g from the choice l refines (l.prefix: `mine`, or `idle` before a restart)
and puts them on l, for the lifecycles l whose last departure it decides; per group the racks on each
choice are carried down the tree (_add_racks_held) and never drop below zero. So:

    x[n, g, l]  (depth(n) = stage of l's last departure, integer)   racks node n moves onto l
    convert_at[n, s, k], lease_mw[n, o, s, k]       (depth(n) = stage(start k of site s))
    buy[n, b]                                        (depth(n) = stage of lot b's order date)
    dr_mw[s]                                         at the root (DR commitments are made now)
    convert[w, s], accept[w, o]                      per leaf: indicators of what its path did

Leaf w's view of the plan is the ordinary first stage with x[g, l] := racks on l at w's last decision
node (and likewise convert_at, lease_mw at the node of their stage); every scenario-independent
constraint family of the two-stage model holds on every leaf's view (optimizer.formulation's define_*
functions, applied to a Pyomo block per leaf whose first-stage "variables" are these expressions):
every rack on one lifecycle (by construction), a site converts at most once on a path (irreversible:
a later node cannot undo or repeat a start), capacity, DR and budget limits on every path. The profit
of leaf w is the two-stage profit expression on its own economics (exact mining dispatch per period,
coupled steps explicit), so the objective sum_w pi_w profit[w] (or mean-CVaR / worst over leaves with
their probabilities) is the multi-stage deterministic equivalent. Non-anticipativity is exact by
construction: two leaves that share the node at depth j share every variable of depth <= j; nothing a
node decides depends on a segment below it.

Leases are taken on a converted hall while the offer is still open (an offer lapses for start options
ready after its `start_by`: optimizer.allocation.lease_terms).

`build_nonanticipative_extensive_model` is the textbook counterpart (per-leaf copies of every
decision with explicit equality constraints between leaves sharing a node: racks per choice made by
the node's date, conversions, leases, purchase lots; hourly dispatch variables: optimizer.extensive),
used to prove the compact tree model exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pyo

from optimizer import formulation as F
from optimizer.allocation import Allocation
from optimizer.economics import GroupEconomics, economics_grid
from optimizer.fleet import Fleet, RiskSettings
from optimizer.lifecycles import (
    MINE_KEY,
    Lifecycle,
    PlanGrid,
    lifecycle_values_usd,
    presence,
    purchase_values_usd,
)
from optimizer.tree import ScenarioTree, decision_steps_of


def with_recourse_at(fleet: Fleet, decision_months) -> Fleet:
    """The fleet whose racks may change course at every decision date after today (and at its own
    recourse_months): what the tree analysis plans, so each node can sell, move, idle or restart.

    Each date is written as the plainest month on the same step (6.01232, read back from a tree file's
    step 183 of daily steps, is month 6), so lifecycle keys (`sell@m6`) do not depend on how it was given.
    """
    months = {_plainest_month(fleet, float(m)) for m in decision_months if m > 0}
    return fleet.model_copy(update={"recourse_months": sorted(months | set(fleet.recourse_months))})


def _plainest_month(fleet: Fleet, months: float) -> float:
    def step(m: float) -> tuple[int, ...]:
        return decision_steps_of([m], fleet.horizon.step_hours, fleet.horizon.n_steps)

    return next((r for r in (round(months, digits) for digits in range(4)) if step(r) == step(months)), months)


def departure_stage(tree: ScenarioTree, grid: PlanGrid, boundary: int) -> int:
    """Depth of the node that decides a change of course at `boundary`: the last decision date at or before it."""
    return tree.stage_of_step(int(grid.timeline.bounds[boundary]))


def lifecycle_stage(tree: ScenarioTree, grid: PlanGrid, life: Lifecycle) -> int:
    """Depth of the node that completes the choice of `life`: the stage of its last departure (`mine`, which
    never departs, is what is left on each path: depth J)."""
    if not life.departures:
        return tree.n_stages
    return departure_stage(tree, grid, life.departures[-1][0])


def choice_at_depth(tree: ScenarioTree, grid: PlanGrid, life: Lifecycle, depth: int) -> str:
    """What a rack on `life` has been committed to by the node of `depth`: the key of the lifecycle it follows
    until its first departure decided after that depth (the rack's *class* there); `life` itself once all are."""
    for boundary, before in life.departures:
        if departure_stage(tree, grid, boundary) > depth:
            return before
    return life.key


def start_stage(tree: ScenarioTree, grid: PlanGrid, site_id: str, k: int) -> int:
    return tree.stage_of_step(int(grid.timeline.bounds[grid.conversion_start[site_id][k]]))


@dataclass(frozen=True)
class TreeIndex:
    """Which node takes each decision on each leaf's path."""

    tree: ScenarioTree
    leaf_nodes: tuple[int, ...]
    x_stage: dict[tuple[int, int], int]  # (g, l) -> depth
    start_stage: dict[tuple[str, int], int]  # (site, k) -> depth
    buy_stage: dict[int, int]  # purchase lot b -> depth

    def node(self, w: int, depth: int) -> int:
        return self.tree.ancestor_at_depth(self.leaf_nodes[w], depth)


def tree_index(fleet: Fleet, grid: PlanGrid, tree: ScenarioTree) -> TreeIndex:
    x_stage = {
        (g, ell): lifecycle_stage(tree, grid, life)
        for g, options in enumerate(grid.lifecycles)
        for ell, life in enumerate(options)
    }
    starts = {
        (s, k): start_stage(tree, grid, s, k) for s, opts in grid.conversion_start.items() for k in range(len(opts))
    }
    buys = {b: departure_stage(tree, grid, lot.ordered_at) for b, lot in enumerate(grid.purchase_lots)}
    return TreeIndex(tree, tuple(tree.leaves), x_stage, starts, buys)


def build_multistage_model(
    fleet: Fleet, tree: ScenarioTree, economics: GroupEconomics, risk: RiskSettings
) -> pyo.ConcreteModel:
    """The compact multi-stage model: node-indexed decisions, one profit per leaf (economics columns = leaves)."""
    if economics.n_scenarios != tree.n_leaves:
        raise ValueError(f"economics have {economics.n_scenarios} scenarios, the tree {tree.n_leaves} leaves")
    grid = economics_grid(fleet, economics)
    index = tree_index(fleet, grid, tree)
    model = pyo.ConcreteModel(name="hashpivot_multistage")
    model.tree_index = index
    model.grid_info = F.FirstStage(grid, presence(grid))
    _add_node_variables(model, fleet, grid, index)
    held = _add_racks_held(model, fleet, grid, index)
    n_leaves = tree.n_leaves
    model.S = pyo.RangeSet(0, n_leaves - 1)
    model.leaf = pyo.Block(model.S)
    rack_value = lifecycle_values_usd(fleet, grid, economics)
    buy_value = purchase_values_usd(fleet, grid, economics)
    contract = economics.contract_pv_usd.sum(axis=0)
    lease_power = F.lease_power_pv_usd_per_mw(fleet, grid, economics)
    model.profit = pyo.Var(model.S, domain=pyo.Reals)
    for w in range(n_leaves):
        block = model.leaf[w]
        add_leaf_view(block, model, fleet, grid, index, w, held[index.leaf_nodes[w]])
        coupled = F.add_coupled_dispatch(block, fleet, economics.columns([w])).get(0, 0.0)
        block.profit_def = pyo.Constraint(
            expr=model.profit[w]
            == block.first_stage_usd
            + sum(float(rack_value[g, ell, w]) * block.x[g, ell] for g, ell in block.GL)
            + sum(float(buy_value[b, w]) * block.buy[b] for b in block.B)
            + float(contract[w])
            + sum(float(lease_power[key][w]) * block.lease_mw[key] for key in lease_power)
            + coupled
        )
    F.add_risk_objective(model, risk, tree.leaf_probability())
    return model


def _add_node_variables(model, fleet: Fleet, grid: PlanGrid, index: TreeIndex) -> None:
    tree = index.tree
    groups = fleet.rack_groups
    at_depth = {j: tree.nodes_at_depth(j) for j in range(tree.n_stages + 1)}
    decided = [(g, ell) for (g, ell), j in index.x_stage.items() if j < tree.n_stages]  # `mine` is what is left
    model.NX = pyo.Set(
        initialize=[(n, g, ell) for (g, ell) in decided for n in at_depth[index.x_stage[g, ell]]], dimen=3, ordered=True
    )
    model.x = pyo.Var(model.NX, domain=pyo.NonNegativeIntegers, bounds=lambda m, n, g, ell: (0, groups[g].racks))
    model.NSTARTS = pyo.Set(
        initialize=[(n, s, k) for (s, k), j in index.start_stage.items() for n in at_depth[j]], dimen=3, ordered=True
    )
    model.convert_at = pyo.Var(model.NSTARTS, domain=pyo.Binary)
    from optimizer.allocation import lease_terms

    leases = list(lease_terms(fleet, grid))
    model.NLEASES = pyo.Set(
        initialize=[(n, o, s, k) for (o, s, k) in leases for n in at_depth[index.start_stage[s, k]]],
        dimen=4,
        ordered=True,
    )
    model.lease_mw = pyo.Var(model.NLEASES, domain=pyo.NonNegativeReals)
    model.NBUY = pyo.Set(
        initialize=[(n, b) for b, j in index.buy_stage.items() for n in at_depth[j]], dimen=2, ordered=True
    )
    lot_bounds = F.purchase_bounds(fleet, grid)
    model.buy = pyo.Var(model.NBUY, domain=pyo.NonNegativeIntegers, bounds=lambda m, n, b: lot_bounds(m, b))
    dr_sites = [s.id for s in fleet.sites if s.demand_response is not None]
    model.dr_mw = pyo.Var(
        dr_sites, domain=pyo.NonNegativeReals, bounds=lambda m, s: (0, fleet.site(s).demand_response.max_mw)
    )


def _add_racks_held(model, fleet: Fleet, grid: PlanGrid, index: TreeIndex) -> list[dict[int, dict[str, object]]]:
    """[N] per group, racks on each choice (a lifecycle key, module docstring) once node n has decided.

    The root starts with every rack on `mine`. A node moves x[n, g, l] racks from the choice l refines
    (l.prefix: `mine`, or `idle` before a restart) to l, lifecycles with fewer departures first (a node may
    complete both a choice and its refinement when two departures fall in one stage). Racks are conserved
    by construction; each choice a node draws from keeps >= 0 racks there (== 0 for a choice the group does
    not have: `mine` of a hall's committed slots), so every path's counts are a lifecycle split of racks_g.
    """
    tree = index.tree
    options = [{life.key for life in lives} for lives in grid.lifecycles]
    held: list[dict[int, dict[str, object]]] = []
    model.racks_held = pyo.ConstraintList()
    decided_at: dict[int, list[tuple[int, int]]] = {}
    for n, g, ell in model.NX:
        decided_at.setdefault(n, []).append((g, ell))
    for n in range(tree.n_nodes):  # breadth first: a parent comes before its children
        parent = tree.parent[n]
        base = {g: {MINE_KEY: group.racks} for g, group in enumerate(fleet.rack_groups)} if parent < 0 else held[parent]
        counts = {g: dict(choices) for g, choices in base.items()}
        drawn = set()
        for g, ell in sorted(decided_at.get(n, []), key=lambda ge: len(grid.lifecycles[ge[0]][ge[1]].departures)):
            life = grid.lifecycles[g][ell]
            counts[g][life.prefix] = counts[g][life.prefix] - model.x[n, g, ell]
            counts[g][life.key] = counts[g].get(life.key, 0) + model.x[n, g, ell]
            drawn.add((g, life.prefix))
        for g, key in sorted(drawn):
            if key in options[g]:
                model.racks_held.add(counts[g][key] >= 0)
            else:
                model.racks_held.add(counts[g][key] == 0)
        held.append(counts)
    return held


def add_leaf_view(block, model, fleet: Fleet, grid: PlanGrid, index: TreeIndex, w: int, held: dict) -> None:
    """Leaf w's first stage: its path's decisions as expressions, and every first-stage constraint family."""
    block.grid_info = model.grid_info
    F._add_sets(block, fleet, grid)
    block.x = pyo.Expression(block.GL, rule=lambda b, g, ell: held[g].get(grid.lifecycles[g][ell].key, 0))
    block.buy = pyo.Expression(block.B, rule=lambda b, i: model.buy[index.node(w, index.buy_stage[i]), i])
    block.convert_at = pyo.Expression(
        block.STARTS, rule=lambda b, s, k: model.convert_at[index.node(w, index.start_stage[s, k]), s, k]
    )
    block.lease_mw = pyo.Expression(
        block.LEASES, rule=lambda b, o, s, k: model.lease_mw[index.node(w, index.start_stage[s, k]), o, s, k]
    )
    block.dr_mw = pyo.Expression(block.DR_SITES, rule=lambda b, s: model.dr_mw[s])
    block.convert = pyo.Var(block.AI_SITES, domain=pyo.Binary)  # the path converted the site (at most once)
    # the path signed the offer; a lease already signed (quarterly re-planning) is signed on every path
    block.accept = pyo.Var(
        block.OFFERS, domain=pyo.Binary, bounds=lambda b, o: (int(fleet.lease_offer(o).committed), 1)
    )
    F._add_expressions(block, fleet, grid)  # every rack follows one lifecycle: conserved by `held`
    F.define_one_start_per_site(block)
    F.define_conversion_block(block, fleet)
    F.define_lease_fits_conversion(block)
    F.define_offer_bounds(block, fleet)
    F.define_site_capacity(block, fleet)
    F.define_dr_within_mining(block)
    F.define_capital_budget(block, fleet)
    F.define_purchase_limit(block, fleet)
    block.first_stage_usd = pyo.Expression(expr=F._first_stage_pv_expr(block, fleet, grid))


@dataclass(frozen=True)
class NodeDecision:
    """What one node decides: racks moved onto lifecycles, conversions started, MW leased, racks ordered."""

    node: int
    depth: int
    lifecycles: dict[str, dict[str, int]]  # group id -> lifecycle key -> racks (decided at this node)
    conversion_start: dict[str, int]  # site id -> start option index started at this node
    lease_mw: dict[tuple[str, str], float]  # (offer, site) -> MW leased on a hall started here
    purchases: dict[str, int] = field(default_factory=dict)  # purchase lot key -> racks ordered here


@dataclass(frozen=True)
class TreePlan:
    """A solved multi-stage plan: decisions per node, and each leaf's resulting two-stage plan."""

    nodes: tuple[NodeDecision, ...]  # decision nodes (depth < J) with what they decide; the leaves keep `mine`
    leaf_plans: tuple[Allocation, ...]  # [S] the plan each scenario lives

    @property
    def root(self) -> NodeDecision:
        return self.nodes[0]


def extract_tree_plan(model: pyo.ConcreteModel, fleet: Fleet) -> TreePlan:
    index: TreeIndex = model.tree_index
    tree, grid = index.tree, model.grid_info.grid
    decisions = {}
    for n in range(tree.n_nodes):
        lifecycles: dict[str, dict[str, int]] = {}
        for nn, g, ell in model.NX:
            count = int(round(pyo.value(model.x[nn, g, ell])))
            if nn == n and count:
                lifecycles.setdefault(fleet.rack_groups[g].id, {})[grid.lifecycles[g][ell].key] = count
        starts = {s: k for (nn, s, k) in model.NSTARTS if nn == n and pyo.value(model.convert_at[nn, s, k]) > 0.5}
        lease = {
            (o, s): float(pyo.value(model.lease_mw[nn, o, s, k]))
            for (nn, o, s, k) in model.NLEASES
            if nn == n and starts.get(s) == k and pyo.value(model.lease_mw[nn, o, s, k]) > F.INTEGRALITY_TOL
        }
        ordered = {
            grid.purchase_lots[b].key: count
            for nn, b in model.NBUY
            if nn == n and (count := int(round(pyo.value(model.buy[nn, b]))))
        }
        decisions[n] = NodeDecision(n, tree.depth(n), lifecycles, starts, lease, ordered)
    dr = {s: float(pyo.value(model.dr_mw[s])) for s in model.dr_mw}
    leaf_plans = []
    for leaf in tree.leaves:
        path = [decisions[n] for n in tree.path(leaf)]
        leaf_plans.append(combine_path(fleet, grid, path, dr))
    nodes = tuple(decisions[n] for n in range(tree.n_nodes) if tree.depth(n) < tree.n_stages)
    return TreePlan(nodes, tuple(leaf_plans))


def combine_path(fleet: Fleet, grid: PlanGrid, path: list[NodeDecision], dr: dict[str, float]) -> Allocation:
    """The two-stage plan a leaf lives: every decision on its path, each moving racks from the choice it refines
    (`mine`, or `idle` before a restart) to its lifecycle, the racks left on `mine` mining."""
    lifecycles = {group.id: {MINE_KEY: group.racks} for group in fleet.rack_groups}
    starts: dict[str, int] = {}
    lease: dict[tuple[str, str], float] = {}
    bought: dict[str, int] = {}
    options = {group.id: {life.key: life for life in grid.lifecycles[g]} for g, group in enumerate(fleet.rack_groups)}
    for decision in path:
        for group, counts in decision.lifecycles.items():
            for key in sorted(counts, key=lambda k: len(options[group][k].departures)):
                held = lifecycles[group]
                held[options[group][key].prefix] -= counts[key]
                held[key] = held.get(key, 0) + counts[key]
        starts.update(decision.conversion_start)
        lease.update(decision.lease_mw)
        bought.update(decision.purchases)
    return Allocation.from_lifecycles(
        fleet,
        grid,
        {group: {key: n for key, n in counts.items() if n} for group, counts in lifecycles.items()},
        conversion_start=starts,
        lease_mw=lease,
        dr_mw={s: mw for s, mw in dr.items() if mw > F.INTEGRALITY_TOL},
        purchases=bought,
    )


def decision_keys(fleet: Fleet, grid: PlanGrid, index: TreeIndex, plan: Allocation, depth: int) -> tuple:
    """The part of a leaf plan decided at `depth` or earlier: what leaves sharing that node must share (racks per
    choice made by then, conversions started and leases signed by then, purchases and DR commitments)."""
    counts = plan.lifecycle_counts(fleet)
    parts = []
    for g, group in enumerate(fleet.rack_groups):
        racks = counts.get(group.id, {})
        totals = choice_totals(index.tree, grid, g, depth, lambda ell, life, racks=racks: racks.get(life.key, 0))
        parts += [(group.id, choice, n) for choice, n in sorted(totals.items())]
    for (s, k), j in sorted(index.start_stage.items()):
        if j <= depth:
            on = s in plan.converted_sites and plan.start_option(s) == k
            leased = tuple(sorted((o, round(mw, 9)) for (o, ss), mw in plan.lease_mw.items() if ss == s)) if on else ()
            parts.append((s, k, on, leased))
    lots = grid.purchase_lots
    ordered = [(lots[b].key, plan.purchases.get(lots[b].key, 0)) for b, j in index.buy_stage.items() if j <= depth]
    parts.append(("buy", tuple(sorted(ordered))))
    parts.append(("dr", tuple(sorted((s, round(mw, 9)) for s, mw in plan.dr_mw.items()))))
    return tuple(parts)


def choice_totals(tree: ScenarioTree, grid: PlanGrid, g: int, depth: int, amount) -> dict:
    """Per choice made by the node of `depth` (choice_at_depth), the sum over group g's lifecycles l on it of
    amount(l, lifecycle): rack counts of a plan, or a leaf copy's variables."""
    out: dict = {}
    for ell, life in enumerate(grid.lifecycles[g]):
        choice = choice_at_depth(tree, grid, life, depth)
        out[choice] = out.get(choice, 0) + amount(ell, life)
    return out


def non_anticipativity_violations(
    fleet: Fleet, grid: PlanGrid, tree: ScenarioTree, leaf_plans
) -> list[tuple[int, int]]:
    """(node, leaf) pairs where a leaf's plan differs from its siblings' in what the node had to decide."""
    index = tree_index(fleet, grid, tree)
    out = []
    for n in range(tree.n_nodes):
        depth = tree.depth(n)
        if depth >= tree.n_stages:
            continue
        under = tree.leaves_under(n)
        first = decision_keys(fleet, grid, index, leaf_plans[under[0]], depth)
        out += [(n, w) for w in under[1:] if decision_keys(fleet, grid, index, leaf_plans[w], depth) != first]
    return out


def build_nonanticipative_extensive_model(
    fleet: Fleet, tree: ScenarioTree, scenarios, risk: RiskSettings, enforce: bool = True
) -> pyo.ConcreteModel:
    """Textbook extensive form: one hourly-dispatch extensive model per leaf (optimizer.extensive), every
    decision copied per leaf, and x_w = x_w' for leaves w, w' under the same node of the decision's stage.

    With `enforce=False` the equalities are left out: each leaf sees its whole future (wait-and-see).
    """
    from optimizer.extensive import build_extensive_model
    from optimizer.scenarios import select_rows

    model = pyo.ConcreteModel(name="hashpivot_multistage_extensive")
    n_leaves = tree.n_leaves
    model.S = pyo.RangeSet(0, n_leaves - 1)
    copies = []
    for w in range(n_leaves):
        sub = build_extensive_model(fleet, select_rows(scenarios, range(w, w + 1)), risk)
        sub.objective.deactivate()
        model.add_component(f"leaf_{w}", sub)
        copies.append(sub)
    grid = copies[0].grid_info.grid
    index = tree_index(fleet, grid, tree)
    model.profit = pyo.Expression(model.S, rule=lambda m, w: copies[w].profit[0])
    model.nonanticipative = pyo.ConstraintList()
    if enforce:
        for n in range(tree.n_nodes):
            depth = tree.depth(n)
            if depth >= tree.n_stages:
                continue
            first, *rest = tree.leaves_under(n)
            a = copies[first]
            for w in rest:
                b = copies[w]
                for g in range(len(fleet.rack_groups)):  # racks per choice made by this node's date
                    of_a = choice_totals(tree, grid, g, depth, lambda ell, life, a=a, g=g: a.x[g, ell])
                    of_b = choice_totals(tree, grid, g, depth, lambda ell, life, b=b, g=g: b.x[g, ell])
                    for choice in sorted(of_a):
                        model.nonanticipative.add(of_b[choice] == of_a[choice])
                for (s, k), j in index.start_stage.items():
                    if j == depth:
                        model.nonanticipative.add(b.convert_at[s, k] == a.convert_at[s, k])
                for o, s, k in a.LEASES:
                    if index.start_stage[s, k] == depth:
                        model.nonanticipative.add(b.lease_mw[o, s, k] == a.lease_mw[o, s, k])
                for i, j in index.buy_stage.items():
                    if j == depth:
                        model.nonanticipative.add(b.buy[i] == a.buy[i])
                if depth == 0:
                    for s in a.DR_SITES:
                        model.nonanticipative.add(b.dr_mw[s] == a.dr_mw[s])
    F.add_risk_objective(model, risk, tree.leaf_probability())
    return model


def leaf_plans_of_extensive(model: pyo.ConcreteModel, fleet: Fleet, tree: ScenarioTree) -> list[Allocation]:
    return [F.extract_allocation(getattr(model, f"leaf_{w}"), fleet) for w in range(tree.n_leaves)]


def wait_and_see_usd(fleet: Fleet, tree: ScenarioTree, economics: GroupEconomics, solve_fn) -> tuple[float, np.ndarray]:
    """Sum_w pi_w max_plan profit_w(plan): each scenario's best plan knowing its whole future (expected NPV)."""
    probability = tree.leaf_probability()
    values = np.zeros(tree.n_leaves)
    for w in range(tree.n_leaves):
        model = F.build_compact_model(fleet, economics.columns([w]), RiskSettings(objective="expected"))
        values[w] = solve_fn(model).objective_usd
    return float(probability @ values), values
