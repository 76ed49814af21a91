"""Quarterly re-planning: what a plan committed carries into the next run, and nothing else."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pytest

from optimizer.allocation import lease_terms
from optimizer.fleet import FleetError, parse_fleet
from optimizer.lifecycles import plan_grid
from optimizer.replan import Conversion, Lease, PlanState, Sale, apply_state, state_from_plan
from solvers.planner import plan_fleet
from tests.fleets import pivot_fleet_data

START = dt.date(2026, 12, 1)


def converted_now(fleet):
    conversion = Conversion(
        site="a",
        date=START,
        ready_date=START + dt.timedelta(days=90),
        it_mw=2 * 10 * 104 * 29.5 / 1e6,
        capex_usd=100_000.0,
        capex_schedule=[0.5, 0.3, 0.2],
        racks={"a-old": {"sell": 2}},
    )
    lease = Lease(
        offer="colo",
        site="a",
        mw=0.05,
        date=START,
        rent_start=START + dt.timedelta(days=90),
        term_months=24,
        rate_usd_per_kw_month=150.0,
        escalator_per_year=0.03,
        sla_penalty_usd_per_mwh=1_000.0,
    )
    return PlanState(fleet=fleet.name, conversions=[conversion], leases=[lease])


def test_a_started_conversion_becomes_a_committed_hall_with_its_signed_lease():
    fleet = parse_fleet(pivot_fleet_data(months=24))
    as_of = START + dt.timedelta(days=60)  # mid-build: two of three capex months paid
    after = apply_state(fleet, converted_now(fleet), as_of)
    groups = {g.id: g for g in after.rack_groups}
    assert after.horizon.start == as_of and groups["a-old"].racks == 0
    assert groups["a-old-hall"].committed_ai and groups["a-old-hall"].racks == 2
    assert after.machine("old-slot").resale_usd_per_th is None  # the machines were sold
    hall = after.site("a").ai
    assert hall.fixed_capex_usd == pytest.approx(0.2 * 100_000) and hall.capex_usd_per_mw == 0
    assert hall.lead_time_days == 30 and hall.start_months == [0.0]
    signed = after.lease_offer("colo-signed")
    assert signed.committed and signed.min_mw == pytest.approx(0.05) and signed.term_months == 24
    assert after.lease_offer("colo").max_mw == pytest.approx(0.1 - 0.05)
    # the plan from as_of takes the signed lease: its rent PV is the remaining lease, by hand
    plan, _ = plan_fleet(after, local=True)
    assert plan.offers[-1].offer == "colo-signed" and plan.offers[-1].mw == pytest.approx(0.05)
    term = lease_terms(after, plan_grid(after))["colo-signed", "a", 0]
    months = np.arange(24)
    ready = 30 / (365.25 / 12)
    by_hand = (0.05 * 150_000 * 1.03 ** (months // 12) * 1.1 ** (-(ready + months) / 12)).sum()
    assert term.rent.pv_usd * 0.05 == pytest.approx(by_hand, rel=1e-9)
    assert sum(g.racks_ai for g in plan.allocation if g.group == "a-old-hall") == 2


def test_decisions_after_as_of_are_not_carried():
    fleet = parse_fleet(pivot_fleet_data(months=24))
    later = converted_now(fleet)
    later = PlanState(
        fleet=fleet.name,
        conversions=[later.conversions[0].model_copy(update={"date": dt.date(2027, 6, 1)})],
        sales=[Sale(group="b-new", racks=1, date=START)],
    )
    after = apply_state(fleet, later, dt.date(2027, 3, 1))
    groups = {g.id: g for g in after.rack_groups}
    assert groups["a-old"].racks == 2 and "a-old-hall" not in groups  # the June conversion is re-decided
    assert groups["b-new"].racks == 0  # the sale at the start is done
    assert after.site("a").ai == fleet.site("a").ai


def test_a_state_that_sells_racks_the_fleet_lacks_names_the_field():
    fleet = parse_fleet(pivot_fleet_data(months=24))
    bad = PlanState(fleet=fleet.name, sales=[Sale(group="b-new", racks=5, date=START)])
    with pytest.raises(FleetError, match="--state sales.*5 racks of 'b-new' committed, the fleet has 1"):
        apply_state(fleet, bad, START)


def test_a_plan_writes_the_state_the_next_quarter_continues():
    fleet = parse_fleet(pivot_fleet_data(months=24, scenarios=3))
    plan, _ = plan_fleet(fleet, local=True)
    state = state_from_plan(fleet, plan)
    converted = {c.site for c in plan.conversions}
    assert {c.site for c in state.conversions} == converted
    assert sum(s.racks for s in state.sales) == sum(g.lifecycles.get("sell", 0) for g in plan.allocation)
    after = apply_state(fleet, state, START + dt.timedelta(days=91))
    again, _ = plan_fleet(after, local=True)
    # the committed lease is carried exactly, and the next state does not repeat what was carried
    for lease in state.leases:
        signed = next(o for o in again.offers if o.offer == f"{lease.offer}-signed")
        assert signed.mw == pytest.approx(lease.mw)
    assert state_from_plan(after, again).conversions == []


def test_dated_recourse_decisions_are_dated_in_the_state_and_carried_once_past():
    """A two-stage plan with recourse at month 6 (fleet.recourse_months) that sells a rack then and orders the
    new one then: the state dates both at month 6's step; a quarter later neither is done yet, and the
    recourse date moves to month 3 of the new horizon; past month 6 both are done."""
    data = pivot_fleet_data(months=24)
    data["recourse_months"] = [6]
    fleet = parse_fleet(data)
    plan = SimpleNamespace(
        allocation=[
            SimpleNamespace(group="a-old", site="a", lifecycles={"mine": 1, "sell@m6": 1}),
            SimpleNamespace(group="b-new", site="b", lifecycles={"move@m6:a": 1}),
        ],
        purchases={"new-a@m6": 1},
        conversions=[],
        offers=[],
    )
    state = state_from_plan(fleet, plan)
    month6 = START + dt.timedelta(days=183)  # 6 x 30.4375 days, rounded up to a daily step
    assert state.sales == [Sale(group="a-old", racks=1, date=month6)]
    assert [(m.group, m.to_site, m.racks, m.date) for m in state.moves] == [("b-new", "a", 1, month6)]
    assert [(p.option, p.racks, p.date, p.delivery_date) for p in state.purchases] == [
        ("new-a", 1, month6, month6 + dt.timedelta(days=60))
    ]
    quarter = apply_state(fleet, state, START + dt.timedelta(days=91))
    assert {g.id: g.racks for g in quarter.rack_groups} == {"a-old": 2, "b-new": 1}
    assert quarter.recourse_months == pytest.approx([6 - 91 / 30.4375])
    later = apply_state(fleet, state, month6)
    # the rack sold at month 6 is gone; the one moved then stands at site a, in a group of its own
    assert {g.id: (g.site, g.racks) for g in later.rack_groups} == {
        "a-old": ("a", 1),
        "b-new": ("b", 0),
        "b-new_at_a": ("a", 1),
    }
    ordered = later.purchase("new-a-ordered")  # ordered and paid at month 6, delivered 60 days later
    assert (ordered.min_racks, ordered.delivery_days, later.purchase("new-a").max_racks) == (1, 60, 0)
    assert later.recourse_months == []
