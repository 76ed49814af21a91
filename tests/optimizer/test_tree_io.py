"""Scenario trees in the scenario file format: round trip, the plan on a file tree, bad trees named."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.fleet import parse_fleet
from optimizer.scenario_io import ScenarioFileError
from optimizer.tree import build_tree
from optimizer.tree_io import load_tree_scenarios, save_tree_scenarios
from optimizer.tree_scenarios import generate_tree_scenarios
from solvers.tree_plan import plan_tree
from tests.optimizer.test_multistage import waiting_fleet_data
from tests.optimizer.test_tree import events_fleet


def test_round_trip_keeps_the_tree_paths_and_what_nodes_saw(tmp_path):
    fleet = events_fleet()
    tree = build_tree([0, 6, 12], [2, 3, 2], 24, fleet.horizon.n_steps)
    paths = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, tree, 9)
    save_tree_scenarios(tmp_path / "tree.npz", paths)
    back = load_tree_scenarios(tmp_path / "tree.npz", ["m"], fleet.horizon.n_steps, 24)
    assert back.tree == tree
    np.testing.assert_array_equal(back.scenarios.btc_price_usd, paths.scenarios.btc_price_usd)
    np.testing.assert_array_equal(back.scenarios.dr_call, paths.scenarios.dr_call)
    np.testing.assert_array_equal(back.node_btc_price_usd[1:], paths.node_btc_price_usd[1:])
    np.testing.assert_allclose(back.node_hashprice_usd_per_ph_day[1:], paths.node_hashprice_usd_per_ph_day[1:])


def test_a_plan_on_an_exported_tree_is_the_plan_on_the_drawn_one(tmp_path):
    data = waiting_fleet_data(55.0)
    data["scenarios"] = {"seed": 3, "count": 3}
    data["tree"] = {"decision_months": [0, 6], "branching": [3], "replications": 2, "out_of_sample": False}
    fleet = parse_fleet(data)
    drawn = plan_tree(fleet, export_path=tmp_path / "used.npz")
    provided = load_tree_scenarios(tmp_path / "used.npz", ["m"], fleet.horizon.n_steps, 24)
    again = plan_tree(fleet, provided=provided)
    assert again.multistage_usd == pytest.approx(drawn.multistage_usd, rel=1e-12)
    assert again.now_or_never_usd == pytest.approx(drawn.now_or_never_usd, rel=1e-12)
    assert again.value_of_waiting.replications_usd == pytest.approx(drawn.value_of_waiting.replications_usd)
    assert [n.lifecycles for n in again.tree] == [n.lifecycles for n in drawn.tree]


def test_paths_that_share_a_node_but_not_its_history_are_named(tmp_path):
    fleet = events_fleet()
    tree = build_tree([0, 6], [2, 2], 24, fleet.horizon.n_steps)
    paths = generate_tree_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, tree, 9)
    save_tree_scenarios(tmp_path / "tree.npz", paths)
    with np.load(tmp_path / "tree.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["power_price_usd_per_mwh__m"][1, 100] += 1.0  # rows 0 and 1 share node 1 until step 183
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(
        ScenarioFileError, match=r"power_price_usd_per_mwh__m: rows \[0, 1\] share tree node 1.*step 100"
    ):
        load_tree_scenarios(tmp_path / "bad.npz")
    arrays["power_price_usd_per_mwh__m"][1, 100] -= 1.0
    arrays["tree_leaf_node"] = arrays["tree_leaf_node"][:3]
    np.savez(tmp_path / "bad2.npz", **arrays)
    with pytest.raises(ScenarioFileError, match="tree_leaf_node"):
        load_tree_scenarios(tmp_path / "bad2.npz")
