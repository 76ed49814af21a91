"""The value of the option to wait: positive where waiting pays, zero where converting now dominates; the rule."""

from __future__ import annotations

import pytest

from optimizer.fleet import parse_fleet
from optimizer.multistage import with_recourse_at
from optimizer.option_value import ConversionAction, decision_rules, value_of_waiting
from optimizer.tree_report import tree_report, tree_tables
from tests.fleets import pivot_fleet_data, selling_fleet_data
from tests.optimizer.test_multistage import waiting_fleet_data


def with_seed(data: dict, seed: int = 3) -> dict:
    data["scenarios"] = {"seed": seed, "count": 3}
    return data


def test_waiting_is_worth_money_with_an_interval_above_zero():
    """A thin lease (70 $/kW-month) on efficient machines: convert in month 6 only on some paths."""
    fleet = parse_fleet(with_seed(waiting_fleet_data(70.0)))
    result = value_of_waiting(fleet, [0, 6], 4, replications=10, wait_and_see=True)
    inside = result.in_sample
    assert inside.now_or_never_usd < inside.multistage_usd < inside.wait_and_see_usd
    assert result.value_of_waiting.lower_usd > 0
    assert result.value_of_waiting.estimate_usd == pytest.approx(
        sum(r.multistage_usd - r.now_or_never_usd for r in result.replications) / 10
    )
    assert all(r.multistage_usd >= r.now_or_never_usd - 1e-6 for r in result.replications)


def test_the_decision_rule_reproduces_every_node_decision():
    """At 55 $/kW-month, one month-6 path converts (and sells machines into a high hashprice), two wait."""
    fleet = parse_fleet(with_seed(waiting_fleet_data(55.0)))
    inside = value_of_waiting(fleet, [0, 6], 3, replications=0).in_sample
    assert inside.value_of_waiting_usd > 1_000
    now_rule, later_rule = decision_rules(fleet, inside, [0, 6])
    assert [p.action for p in now_rule.points] == [ConversionAction.WAIT]
    actions = {p.action for p in later_rule.points}
    assert actions == {ConversionAction.CONVERT, ConversionAction.WAIT}  # the paths disagree: that is the option
    fit = later_rule.regions
    assert fit.nodes == 3 and fit.accuracy == 1.0
    for p in later_rule.points:  # the regions reproduce every node's decision
        assert fit.converts(p.hashprice_usd_per_ph_day, p.btc_price_usd) == (p.action is ConversionAction.CONVERT)
    assert len(fit.regions) == 2  # one threshold separates three nodes: no bigger rule than that
    assert "convert if" in later_rule.text() and "reproduces 3 of 3 nodes" in later_rule.text()


def test_converting_now_dominates_and_waiting_is_worth_zero():
    """The pivot fleet's 150 $/kW-month lease beats mining old machines on every path: convert today."""
    fleet = parse_fleet(with_seed(pivot_fleet_data()))
    result = value_of_waiting(fleet, [0, 6], 3, replications=4, wait_and_see=False)
    interval = result.value_of_waiting
    assert abs(result.in_sample.value_of_waiting_usd) < 1e-3
    assert interval.lower_usd <= 0 <= interval.upper_usd
    assert max(abs(v) for v in interval.values_usd) < 1e-3
    assert result.in_sample.plan.root.conversion_start == {"a": 0}
    now_rule, later_rule = decision_rules(fleet, result.in_sample, [0, 6])
    assert [p.action for p in now_rule.points] == [ConversionAction.CONVERT]
    assert {p.action for p in later_rule.points} == {ConversionAction.CONVERTED}


def test_waiting_to_sell_is_worth_money():
    """Old machines that pay only if BTC rises: the month-6 nodes sell where it fell and keep mining where it rose,
    while the now-or-never plan must commit today (it sells at month 6 on every path)."""
    fleet = parse_fleet(selling_fleet_data())
    dated = with_recourse_at(fleet, [0, 6])
    inside = value_of_waiting(dated, [0, 6], 4, replications=0, wait_and_see=True).in_sample
    assert inside.now_or_never_usd + 500 < inside.multistage_usd < inside.wait_and_see_usd
    later = [node.lifecycles.get("a-old", {}) for node in inside.plan.nodes if node.depth == 1]
    assert {"sell@m6": 3} in later and {} in later  # sell on some paths, keep mining on the others
    assert inside.now_plan.lifecycle_counts(dated)["a-old"] == {"sell@m6": 3}
    # without the dated sale nothing can wait: every decision is today's, and the two plans coincide
    undated = value_of_waiting(fleet, [0, 6], 4, replications=0, wait_and_see=False).in_sample
    assert abs(undated.value_of_waiting_usd) < 1e-3
    assert inside.multistage_usd > undated.multistage_usd + 500


def test_the_tree_report_lists_recourse_decisions_per_node():
    """plan.json's tree nodes and tree_nodes.csv carry the dated sale where it is decided, and nowhere else."""
    fleet = with_recourse_at(parse_fleet(selling_fleet_data()), [0, 6])
    result = value_of_waiting(fleet, [0, 6], 4, replications=0, wait_and_see=False)
    report = tree_report(fleet, [0, 6], [4], result)
    selling = [n.node for n in report.tree if {c.lifecycle for c in n.lifecycles} == {"sell@m6"}]
    assert selling and all(report.tree[n].depth == 1 for n in selling)
    rows = tree_tables(report)["tree_nodes"]
    assert [r["node"] for r in rows if r["lifecycles"] == "a-old:sell@m6=3"] == selling
    assert all(r["purchases"] == "" for r in rows)  # the fleet has no purchase option
