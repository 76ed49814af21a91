"""The multi-stage model on a scenario tree against brute force over every non-anticipative policy and
the textbook extensive form (per-leaf copies, explicit equalities, hourly dispatch)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pyomo.environ as pyo
import pytest

from optimizer.allocation import Allocation, check_feasible, scenario_profits_usd
from optimizer.economics import group_economics
from optimizer.fleet import RiskSettings, parse_fleet
from optimizer.formulation import build_compact_model
from optimizer.lifecycles import plan_grid
from optimizer.multistage import (
    build_multistage_model,
    build_nonanticipative_extensive_model,
    choice_at_depth,
    decision_keys,
    extract_tree_plan,
    leaf_plans_of_extensive,
    non_anticipativity_violations,
    tree_index,
    wait_and_see_usd,
)
from optimizer.risk import risk_objective_value
from optimizer.tree import build_tree
from optimizer.tree_scenarios import generate_tree_scenarios
from solvers.highs import solve
from tests.fleets import pivot_fleet_data
from tests.optimizer.test_multiyear import RISKS, every_plan


def waiting_fleet_data(rate_usd_per_kw_month: float = 110.0) -> dict:
    """pivot_fleet_data with efficient machines at the AI site and a volatile BTC price: whether to convert
    at month 6, and what to do with the machines then, depends on the price path so far."""
    data = pivot_fleet_data()
    data["rack_groups"][0]["machine"] = "new"
    data["lease_offers"][0]["rate_usd_per_kw_month"] = rate_usd_per_kw_month
    data["bitcoin"] = {"price_vol_per_year": 0.9, "jump_intensity_per_year": 0}
    return data


@pytest.fixture(scope="module")
def tree_case():
    fleet = parse_fleet(waiting_fleet_data())
    tree = build_tree([0, 6], 2, fleet.horizon.step_hours, fleet.horizon.n_steps)
    paths = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, tree, seed=3)
    economics = group_economics(fleet, paths.scenarios)
    return fleet, tree, paths, economics, plan_grid(fleet)


def solve_exact(model):
    return solve(model, time_limit_s=120, mip_rel_gap=0.0)


def brute_force_policies(fleet, grid, tree, economics, risk) -> float:
    """max over every non-anticipative policy: one root decision, then one decision per depth-1 node among
    the plans that agree with the root on what the root decides; the leaves' profits scored together."""
    index = tree_index(fleet, grid, tree)
    plans = list(every_plan(fleet, grid))
    profits = np.array([scenario_profits_usd(fleet, economics, plan, grid) for plan in plans])  # [plans, leaves]
    by_root: dict[tuple, list[int]] = {}
    for i, plan in enumerate(plans):
        by_root.setdefault(decision_keys(fleet, grid, index, plan, 0), []).append(i)
    nodes = tree.nodes_at_depth(1)
    leaves_of = [tree.leaves_under(n) for n in nodes]
    best = -np.inf
    for members in by_root.values():
        for choice in itertools.product(members, repeat=len(nodes)):  # one plan per depth-1 node
            values = np.empty(tree.n_leaves)
            for plan_index, leaves in zip(choice, leaves_of, strict=True):
                values[leaves] = profits[plan_index, leaves]
            best = max(best, risk_objective_value(values, risk.objective.value, risk.alpha, risk.weight))
    return best


def test_conversions_starting_later_wait_for_their_date(tree_case):
    fleet, tree, _, _, grid = tree_case
    index = tree_index(fleet, grid, tree)
    stages = {grid.lifecycles[0][ell].key: j for (g, ell), j in index.x_stage.items() if g == 0}
    assert stages == {  # by hand: conversions starting in month 6 wait for the month-6 nodes
        "mine": 2,
        "idle": 0,
        "sell": 0,
        "move:b": 0,
        "ai@0:store": 0,
        "ai@0:sell": 0,
        "ai@0:move:b": 0,
        "ai@1:store": 1,
        "ai@1:sell": 1,
        "ai@1:move:b": 1,
    }


@pytest.mark.parametrize("risk", RISKS, ids=lambda r: r.objective.value)
def test_multistage_equals_brute_force_over_nonanticipative_policies(tree_case, risk):
    fleet, tree, _, economics, grid = tree_case
    model = build_multistage_model(fleet, tree, economics, risk)
    outcome = solve_exact(model)
    assert outcome.objective_usd == pytest.approx(brute_force_policies(fleet, grid, tree, economics, risk), rel=1e-8)
    plan = extract_tree_plan(model, fleet)
    assert non_anticipativity_violations(fleet, grid, tree, list(plan.leaf_plans)) == []
    for w, leaf_plan in enumerate(plan.leaf_plans):  # each leaf's profit, re-scored by the exact evaluator
        assert check_feasible(fleet, leaf_plan) == []
        by_numpy = scenario_profits_usd(fleet, economics.columns([w]), leaf_plan, grid)[0]
        assert pyo.value(model.profit[w]) == pytest.approx(by_numpy, rel=1e-9)


def test_waiting_is_worth_money_on_the_designed_tree(tree_case):
    """now-or-never < multi-stage < wait-and-see, and the two month-6 nodes decide differently."""
    fleet, tree, _, economics, _ = tree_case
    risk = RiskSettings(objective="expected")
    multi = build_multistage_model(fleet, tree, economics, risk)
    multi_usd = solve_exact(multi).objective_usd
    now_usd = solve_exact(build_compact_model(fleet, economics, risk, tree.leaf_probability())).objective_usd
    wait_and_see, _ = wait_and_see_usd(fleet, tree, economics, solve_exact)
    assert now_usd + 1_000 < multi_usd < wait_and_see - 1_000
    plan = extract_tree_plan(multi, fleet)
    assert not plan.root.conversion_start  # nothing converts now
    later = [node for node in plan.nodes if node.depth == 1]
    assert all(node.conversion_start == {"a": 1} for node in later)
    assert later[0].lifecycles != later[1].lifecycles  # what to do with the machines depends on the path


def test_multistage_equals_the_textbook_extensive_form_and_broken_nonanticipativity_is_caught(tree_case):
    fleet, tree, paths, economics, grid = tree_case
    risk = RiskSettings(objective="expected")
    compact_usd = solve_exact(build_multistage_model(fleet, tree, economics, risk)).objective_usd
    textbook = build_nonanticipative_extensive_model(fleet, tree, paths.scenarios, risk)
    assert solve_exact(textbook).objective_usd == pytest.approx(compact_usd, rel=1e-8)
    assert non_anticipativity_violations(fleet, grid, tree, leaf_plans_of_extensive(textbook, fleet, tree)) == []
    # the same model without its equalities lets each leaf see its future: the wait-and-see value, caught
    broken = build_nonanticipative_extensive_model(fleet, tree, paths.scenarios, risk, enforce=False)
    broken_usd = solve_exact(broken).objective_usd
    wait_and_see, _ = wait_and_see_usd(fleet, tree, economics, solve_exact)
    assert broken_usd == pytest.approx(wait_and_see, rel=1e-8)
    assert broken_usd > compact_usd + 1_000
    violations = non_anticipativity_violations(fleet, grid, tree, leaf_plans_of_extensive(broken, fleet, tree))
    assert violations and {node for node, _ in violations} <= set(range(tree.n_nodes))


def test_a_leaf_plan_taken_from_another_branch_is_caught(tree_case):
    fleet, tree, _, economics, grid = tree_case
    model = build_multistage_model(fleet, tree, economics, RiskSettings(objective="expected"))
    solve_exact(model)
    plans = list(extract_tree_plan(model, fleet).leaf_plans)
    tampered = [plans[0], plans[2], plans[2], plans[3]]  # leaf 1 follows the other month-6 node's decision
    assert non_anticipativity_violations(fleet, grid, tree, tampered) == [(1, 1)]
    root_broken = [plans[0], plans[1], sell_everything_plan(fleet, grid), plans[3]]
    assert (0, 2) in non_anticipativity_violations(fleet, grid, tree, root_broken)


def sell_everything_plan(fleet, grid):
    return Allocation.from_lifecycles(fleet, grid, {g.id: {"sell": g.racks} for g in fleet.rack_groups})


# --- dated recourse: sell, move, idle and restart at a later decision date -------------------------------


def recourse_fleet_data() -> dict:
    """waiting_fleet_data with recourse at month 6, the tree's second decision date: besides converting then,
    the month-6 nodes may sell, move or idle racks that mined so far, and restart racks idled today."""
    data = waiting_fleet_data()
    data["recourse_months"] = [6]
    return data


@pytest.fixture(scope="module")
def recourse_case():
    fleet = parse_fleet(recourse_fleet_data())
    tree = build_tree([0, 6], 2, fleet.horizon.step_hours, fleet.horizon.n_steps)
    paths = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, tree, seed=3)
    economics = group_economics(fleet, paths.scenarios)
    return fleet, tree, paths, economics, plan_grid(fleet)


def test_recourse_lifecycles_are_decided_at_their_date_and_refine_the_root_choice(recourse_case):
    fleet, tree, _, _, grid = recourse_case
    index = tree_index(fleet, grid, tree)
    stage = {grid.lifecycles[0][ell].key: j for (g, ell), j in index.x_stage.items() if g == 0}
    recourse = {k: j for k, j in stage.items() if "@m" in k}
    # by hand: 1 date, 1 other site, sellable: R (2 + T) + R (R + 1) / 2 = 3 + 1 options, all taken at month 6
    assert recourse == {"sell@m6": 1, "move@m6:b": 1, "idle@m6": 1, "idle:restart@m6": 1}
    by_key = {life.key: life for life in grid.lifecycles[0]}
    # today a rack idled until month 6 is one of the racks idled today; at month 6 it is its own choice
    assert choice_at_depth(tree, grid, by_key["idle:restart@m6"], 0) == "idle"
    assert choice_at_depth(tree, grid, by_key["idle:restart@m6"], 1) == "idle:restart@m6"
    assert choice_at_depth(tree, grid, by_key["sell@m6"], 0) == "mine"
    assert by_key["idle:restart@m6"].prefix == "idle" and by_key["sell@m6"].prefix == "mine"
    # the restart mines from month 6 exactly where idling stops; selling at month 6 mines until then
    six = grid.timeline.period_starting_at(grid.timeline.step_at_months(6))
    end = grid.n_periods
    assert by_key["idle:restart@m6"].idle == (0, six) and by_key["idle:restart@m6"].mining == ((0, six, end),)
    assert by_key["sell@m6"].mining == ((0, 0, six),) and by_key["sell@m6"].sold_at == six
    assert len(grid.lifecycles[0]) == 10 + 4 and len(grid.lifecycles[1]) == 4 + 4
    # the new machines can be ordered today or at month 6 (delivered 60 days later), one rack in all
    lots = {lot.key: (lot.ordered_at, lot.delivery) for lot in grid.purchase_lots}
    arrives = grid.timeline.period_starting_at(grid.timeline.step_at_days(6 * 30.4375 + 60))
    assert lots == {"new-a": (0, grid.delivery[0]), "new-a@m6": (six, arrives)}
    assert index.buy_stage == {0: 0, 1: 1}


@pytest.mark.parametrize("risk", RISKS, ids=lambda r: r.objective.value)
def test_recourse_multistage_equals_brute_force_and_the_textbook_extensive_form(recourse_case, risk):
    fleet, tree, paths, economics, grid = recourse_case
    model = build_multistage_model(fleet, tree, economics, risk)
    compact_usd = solve_exact(model).objective_usd
    assert compact_usd == pytest.approx(brute_force_policies(fleet, grid, tree, economics, risk), rel=1e-8)
    plan = extract_tree_plan(model, fleet)
    assert non_anticipativity_violations(fleet, grid, tree, list(plan.leaf_plans)) == []
    for w, leaf_plan in enumerate(plan.leaf_plans):
        assert check_feasible(fleet, leaf_plan) == []
        by_numpy = scenario_profits_usd(fleet, economics.columns([w]), leaf_plan, grid)[0]
        assert pyo.value(model.profit[w]) == pytest.approx(by_numpy, rel=1e-9)
    if risk.objective.value == "expected":
        # the instance is not trivial: month-6 nodes use the new recourse (b-new sold on one path, idled on the other)
        later = {key for node in plan.nodes if node.depth == 1 for key in node.lifecycles.get("b-new", {})}
        assert {"sell@m6", "idle@m6"} <= later, plan.nodes
        textbook = build_nonanticipative_extensive_model(fleet, tree, paths.scenarios, risk)
        assert solve_exact(textbook).objective_usd == pytest.approx(compact_usd, rel=1e-8)
        assert non_anticipativity_violations(fleet, grid, tree, leaf_plans_of_extensive(textbook, fleet, tree)) == []


def recourse_plan(fleet, grid, a_old: dict[str, int]):
    return Allocation.from_lifecycles(fleet, grid, {"a-old": a_old, "b-new": {"mine": 1}})


def test_a_recourse_decision_that_differs_between_siblings_is_caught(recourse_case):
    """Leaves 0 and 1 share the month-6 node 1; leaves 2 and 3 share node 2. Selling at month 6 or restarting
    may differ between the two month-6 nodes, never between siblings; how many racks idle today never differs."""
    fleet, tree, _, economics, grid = recourse_case
    mine = recourse_plan(fleet, grid, {"mine": 2})
    sell_later = recourse_plan(fleet, grid, {"mine": 1, "sell@m6": 1})
    idle = recourse_plan(fleet, grid, {"idle": 2})
    restart = recourse_plan(fleet, grid, {"idle": 1, "idle:restart@m6": 1})
    assert non_anticipativity_violations(fleet, grid, tree, [mine, mine, sell_later, sell_later]) == []
    assert non_anticipativity_violations(fleet, grid, tree, [mine, sell_later, mine, mine]) == [(1, 1)]
    assert non_anticipativity_violations(fleet, grid, tree, [idle, idle, restart, restart]) == []
    assert non_anticipativity_violations(fleet, grid, tree, [idle, idle, restart, idle]) == [(2, 3)]
    # idling today is a root decision: a leaf that mines where its cousins idle breaks it at the root
    assert (0, 2) in non_anticipativity_violations(fleet, grid, tree, [idle, idle, mine, mine])
    # ordering the new rack at month 6 is the month-6 node's decision; today's order is the root's
    buy_later = dataclasses.replace(mine, purchases={"new-a@m6": 1})
    buy_now = dataclasses.replace(mine, purchases={"new-a": 1})
    assert non_anticipativity_violations(fleet, grid, tree, [buy_later, buy_later, mine, mine]) == []
    assert non_anticipativity_violations(fleet, grid, tree, [buy_later, mine, mine, mine]) == [(1, 1)]
    assert (0, 2) in non_anticipativity_violations(fleet, grid, tree, [buy_now, buy_now, mine, mine])
    both = check_feasible(fleet, dataclasses.replace(mine, purchases={"new-a": 1, "new-a@m6": 1}))
    assert [(v.field, v.needed, v.limit) for v in both] == [("purchases.new-a.max_racks", 2, 1)]  # one in all
    # the same anticipation on the model's own leaf plans: swap one sibling's month-6 decision
    model = build_multistage_model(fleet, tree, economics, RiskSettings(objective="expected"))
    solve_exact(model)
    plans = list(extract_tree_plan(model, fleet).leaf_plans)
    counts = plans[1].lifecycle_counts(fleet)["a-old"]
    if counts.get("mine", 0):  # leaf 1 sells one of the racks its sibling keeps mining
        counts = {**counts, "mine": counts["mine"] - 1, "sell@m6": counts.get("sell@m6", 0) + 1}
    else:
        counts = {"mine": 2}
    tampered = Allocation.from_lifecycles(fleet, grid, {**plans[1].lifecycle_counts(fleet), "a-old": counts})
    assert (1, 1) in non_anticipativity_violations(fleet, grid, tree, [plans[0], tampered, plans[2], plans[3]])
