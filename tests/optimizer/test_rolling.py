"""The rolling (re-solve at each node) out-of-sample score of the multi-stage policy."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.allocation import check_feasible
from optimizer.fleet import parse_fleet
from optimizer.lifecycles import plan_grid
from optimizer.multistage import combine_path, non_anticipativity_violations
from optimizer.option_value import value_of_waiting
from optimizer.rolling import evaluate_rolling
from optimizer.tree import build_tree_from_branching
from optimizer.tree_scenarios import generate_tree_scenarios
from tests.optimizer.test_multistage import waiting_fleet_data
from tests.optimizer.test_tree import events_fleet


def test_rolling_policy_is_nonanticipative_feasible_and_scored_exactly():
    data = waiting_fleet_data(55.0)
    data["scenarios"] = {"seed": 3, "count": 3}
    fleet = parse_fleet(data)
    solution = value_of_waiting(fleet, [0, 6], 3, replications=0, wait_and_see=False).in_sample
    evaluation = evaluate_rolling(fleet, solution, seed=3)
    tree = evaluation.tree
    assert evaluation.solves == 3  # one re-solve per month-6 node; the root takes the in-sample root decision
    assert evaluation.decisions[0] == solution.plan.root
    grid = plan_grid(fleet)
    leaf0 = solution.plan.leaf_plans[0]
    plans = [
        combine_path(fleet, grid, [evaluation.decisions[n] for n in tree.path(leaf)[:-1]], leaf0.dr_mw)
        for leaf in tree.leaves
    ]
    assert non_anticipativity_violations(fleet, grid, tree, plans) == []
    assert all(check_feasible(fleet, p) == [] for p in plans)
    rolling = evaluation.score("multi-stage (rolling)")
    now = evaluation.score("now-or-never")
    assert rolling.mean_usd == pytest.approx(rolling.profits_usd.mean()) and len(now.profits_usd) == 9
    assert evaluation.value_of_waiting_usd == pytest.approx(rolling.objective_usd - now.objective_usd)
    assert len(evaluation.score("calculator").profits_usd) == 9


def test_without_uncertainty_rolling_equals_the_in_sample_plan():
    fleet = events_fleet(deterministic=True)
    solution = value_of_waiting(fleet, [0, 6], 2, replications=0).in_sample
    assert solution.value_of_waiting_usd == pytest.approx(0.0, abs=1e-3)
    assert solution.wait_and_see_usd == pytest.approx(solution.multistage_usd, rel=1e-9)
    evaluation = evaluate_rolling(fleet, solution, seed=11)
    assert evaluation.score("multi-stage (rolling)").objective_usd == pytest.approx(solution.multistage_usd, rel=1e-9)
    assert evaluation.value_of_waiting_usd == pytest.approx(0.0, abs=1e-3)


def test_a_lookahead_tree_shares_the_history_it_is_given():
    fleet = events_fleet()
    tree = build_tree_from_branching((0, 183), (2, 2), 548)
    paths = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, tree, 5)
    node = tree.nodes_at_depth(1)[1]
    look = build_tree_from_branching((0, 183), (1, 3), 548)
    given = {1: (paths.segments[node], paths.states[node])}
    ahead = generate_tree_scenarios(
        fleet.bitcoin, fleet.markets, fleet.horizon, look, 5, 1_000, given=given, key_prefix=(1,)
    )
    history = paths.scenarios.btc_price_usd[tree.leaves_under(node)[0], :183]
    for row in range(3):
        np.testing.assert_array_equal(ahead.scenarios.btc_price_usd[row, :183], history)
    assert len({ahead.scenarios.btc_price_usd[row, 200] for row in range(3)}) == 3


def test_fresh_trees_give_an_interval_on_each_policy_and_the_paired_differences():
    from scipy import stats

    from optimizer.rolling import POLICIES, evaluate_rolling_trees

    data = waiting_fleet_data(55.0)
    data["scenarios"] = {"seed": 3, "count": 3}
    fleet = parse_fleet(data)
    solution = value_of_waiting(fleet, [0, 6], 3, replications=0, wait_and_see=False).in_sample
    study = evaluate_rolling_trees(fleet, solution, 3, 3)
    assert len(study.evaluations) == 3 and study.solves == 9  # three month-6 nodes per fresh tree
    first = evaluate_rolling(fleet, solution, seed=3)  # fresh tree 0 alone: the same tree and decisions
    np.testing.assert_array_equal(
        first.score("calculator").profits_usd, study.evaluations[0].score("calculator").profits_usd
    )
    assert first.decisions == study.evaluations[0].decisions
    profits = [e.score("now-or-never").profits_usd for e in study.evaluations]
    assert not np.allclose(profits[0], profits[1])  # independent fresh trees
    differences = np.array([e.value_of_waiting_usd for e in study.evaluations])
    half = stats.t.ppf(0.975, 2) * differences.std(ddof=1) / np.sqrt(3)
    vw = study.value_of_waiting
    assert vw.values_usd == pytest.approx(tuple(differences))
    assert (vw.lower_usd, vw.upper_usd) == pytest.approx((differences.mean() - half, differences.mean() + half))
    gains = [e.score(POLICIES[0]).objective_usd - e.score("calculator").objective_usd for e in study.evaluations]
    assert study.gain_over_calculator.estimate_usd == pytest.approx(np.mean(gains))
    for policy in POLICIES:
        values = [e.score(policy).objective_usd for e in study.evaluations]
        assert study.objectives[policy].estimate_usd == pytest.approx(np.mean(values))


def test_lookahead_keys_of_different_nodes_never_coincide():
    """Under the old key (prefix and position run together) the depth-1 node (1,)'s look-ahead node (0, 0, 0, 1)
    and the depth-2 node (1, 0)'s look-ahead node (0, 0, 1) both drew from (1000, 5, 1, 0, 0, 0, 1)."""
    from optimizer.tree_scenarios import node_rng

    a = node_rng(5, 1_000, (0, 0, 0, 1), (1,)).random(4)
    b = node_rng(5, 1_000, (0, 0, 1), (1, 0)).random(4)
    assert not np.allclose(a, b)
    unprefixed = np.random.default_rng(np.random.SeedSequence(5, spawn_key=(0, 2, 1, 2))).random(4)
    np.testing.assert_array_equal(node_rng(5, 0, (1, 2)).random(4), unprefixed)  # in-sample trees: keys unchanged
