"""The scenario tree and its paths: structure, seeding by position, exact continuation of the parent's state."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.fleet import parse_fleet
from optimizer.scenarios import generate_scenarios
from optimizer.tree import build_tree
from optimizer.tree_scenarios import generate_tree_scenarios
from tests.fleets import pivot_fleet_data


def events_fleet(months: int = 18, deterministic: bool = False):
    data = pivot_fleet_data(months=months)
    data["markets"][0]["curtailment_events"] = [
        {"name": "storm", "events_per_year": 20, "mean_duration_hours": 400, "available_fraction": 0.3}
    ]
    data["markets"][0]["demand_response_calls"] = {"calls_per_year": 10, "call_hours": 4}
    if deterministic:
        data["bitcoin"] = {
            "price_vol_per_year": 0.0,
            "jump_intensity_per_year": 0.0,
            "hashrate_vol_per_year": 0.0,
            "fees_vol": 0.0,
            "price_drift_per_year": 0.3,
            "hashrate_growth_per_year": 0.6,
            "start_block_height": 1_049_000,  # a halving 1,000 blocks in, retargets across every date
        }
        data["markets"][0].update({"vol_per_sqrt_day": 0.0, "spike_prob_per_hour": 0.0})
        data["markets"][0].pop("curtailment_events")
        data["markets"][0].pop("demand_response_calls")
    return parse_fleet(data)


def test_tree_structure_by_hand():
    tree = build_tree([0, 6, 12], 2, 24, 548)
    assert tree.n_nodes == 1 + 2 + 4 + 8 and tree.n_leaves == 8
    assert tree.decision_steps == (0, 183, 366)  # 6 x 30.4375 = 182.6 days, rounded up to a daily step
    np.testing.assert_allclose(tree.leaf_probability(), np.full(8, 1 / 8))
    leaf = tree.leaves[5]  # position (1, 0, 1)
    assert tree.position[leaf] == (1, 0, 1)
    assert [tree.segment(n) for n in tree.path(leaf)] == [(0, 0), (0, 183), (183, 366), (366, 548)]
    assert tree.leaves_under(tree.path(leaf)[1]) == [4, 5, 6, 7]
    assert tree.stage_of_step(182) == 0 and tree.stage_of_step(183) == 1 and tree.stage_of_step(400) == 2
    uneven = build_tree([0, 6], [3, 2], 24, 548)
    assert uneven.n_leaves == 6 and uneven.n_nodes == 1 + 3 + 6
    with pytest.raises(ValueError, match="inside the horizon"):
        build_tree([0, 24], 2, 24, 548)


def test_a_node_path_depends_only_on_seed_and_position():
    """Leaf (1, 1) of a 2 x 3 tree and of a 3 x 2 tree is the same path; other seeds give other paths."""
    fleet = events_fleet()
    a = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, build_tree([0, 6], [2, 3], 24, 548), 7)
    b = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, build_tree([0, 6], [3, 2], 24, 548), 7)
    leaf_a = [tree_leaf for tree_leaf in a.tree.leaves if a.tree.position[tree_leaf] == (1, 1)][0]
    leaf_b = [tree_leaf for tree_leaf in b.tree.leaves if b.tree.position[tree_leaf] == (1, 1)][0]
    row_a, row_b = a.tree.leaves.index(leaf_a), b.tree.leaves.index(leaf_b)
    for name in ("btc_price_usd", "network_hashrate_ehs", "fees_btc_per_block", "hashprice_usd_per_ph_day"):
        np.testing.assert_array_equal(getattr(a.scenarios, name)[row_a], getattr(b.scenarios, name)[row_b])
    np.testing.assert_array_equal(
        a.scenarios.power_price_usd_per_mwh[:, row_a], b.scenarios.power_price_usd_per_mwh[:, row_b]
    )
    np.testing.assert_array_equal(
        a.scenarios.available_power_fraction[:, row_a], b.scenarios.available_power_fraction[:, row_b]
    )
    np.testing.assert_array_equal(a.scenarios.dr_call[:, row_a], b.scenarios.dr_call[:, row_b])
    assert (a.scenarios.available_power_fraction < 1).any() and a.scenarios.dr_call.any()  # events are live
    c = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, build_tree([0, 6], [2, 3], 24, 548), 8)
    assert not np.array_equal(a.scenarios.btc_price_usd, c.scenarios.btc_price_usd)


def test_siblings_share_their_history_and_differ_after_the_date():
    fleet = events_fleet()
    ts = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, build_tree([0, 6, 12], 2, 24, 548), 3)
    d1, d2 = ts.tree.decision_steps[1:]
    paths = ts.scenarios.btc_price_usd
    for first in range(0, 8, 4):  # leaves under one depth-1 node share [0, d1)
        for other in range(first, first + 4):
            np.testing.assert_array_equal(paths[other, :d1], paths[first, :d1])
            np.testing.assert_array_equal(
                ts.scenarios.power_price_usd_per_mwh[0, other, :d1], ts.scenarios.power_price_usd_per_mwh[0, first, :d1]
            )
    np.testing.assert_array_equal(paths[0, :d2], paths[1, :d2])
    assert not np.array_equal(paths[0, d2:], paths[1, d2:])
    assert not np.array_equal(paths[0, d1:d2], paths[2, d1:d2])
    assert not np.array_equal(paths[0, :d1], paths[4, :d1])
    # what a node saw at its date: the last BTC price of its history
    node = ts.tree.path(ts.tree.leaves[3])[2]
    assert ts.node_btc_price_usd[node] == paths[3, d2 - 1]
    np.testing.assert_allclose(
        ts.node_hashprice_usd_per_ph_day[node], ts.scenarios.hashprice_usd_per_ph_day[3, d2 - 30 : d2].mean()
    )


def test_segments_continue_the_parents_exact_state():
    """Without noise every leaf of the tree is the one path generate_scenarios draws: BTC drift, fees,
    hashrate growth with its margin response, every difficulty retarget (epochs span the decision dates),
    the halving, and the power price's shape all carry across segments to rounding."""
    fleet = events_fleet(deterministic=True)
    full = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, [0], seed=1)
    ts = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, build_tree([0, 5, 11], 2, 24, 548), 1)
    assert len(np.unique(full.subsidy_btc)) == 2  # the halving falls inside the horizon
    for name in (
        "btc_price_usd",
        "network_hashrate_ehs",
        "fees_btc_per_block",
        "subsidy_btc",
        "hashprice_usd_per_ph_day",
    ):
        for row in range(ts.scenarios.n_scenarios):
            np.testing.assert_allclose(
                getattr(ts.scenarios, name)[row], getattr(full, name)[0], rtol=1e-12, err_msg=name
            )
    np.testing.assert_allclose(
        ts.scenarios.power_price_usd_per_mwh[:, 3], full.power_price_usd_per_mwh[:, 0], rtol=1e-12
    )


def test_a_sub_hourly_tree_draws_intra_hour_noise_that_averages_one_over_every_hour():
    """At 15 minutes a tree's power prices carry the intra-hour factor of optimizer.scenarios: with no spikes,
    the price at v = 0.1 over the price at v = 0 (same seed: the factor is drawn last) is the factor, which
    varies within the hour and averages one over every hour, the hour cut by the one-month date included."""
    data = pivot_fleet_data(months=3)
    data["horizon"] = {"start": data["horizon"]["start"], "days": 40, "step_minutes": 15}
    data["markets"] = [dict(m, spike_prob_per_hour=0.0) for m in data["markets"]]
    prices = []
    for vol in (0.0, 0.1):  # small enough that the factor never reaches its floor of zero
        data["markets"] = [dict(m, intra_hour_vol=vol) for m in data["markets"]]
        fleet = parse_fleet(data)
        tree = build_tree([0, 1], 2, fleet.horizon.step_hours, fleet.horizon.n_steps)
        assert tree.decision_steps[1] % 4 == 2  # 730.5 hours: the date cuts an hour in two
        drawn = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, tree, 5)
        prices.append(drawn.scenarios.power_price_usd_per_mwh)
    factor = prices[1] / prices[0]  # [market, leaf, step]
    hourly = factor.reshape(*factor.shape[:2], -1, 4).mean(axis=3)
    np.testing.assert_allclose(hourly, 1.0, rtol=1e-12)
    assert factor.std() > 0.08
