"""The test fleets, in one place (as Pyomo's tests/solvers/instances.py): small enough for brute force
and the extensive form, each with the figures its tests work by hand written next to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optimizer.fleet import Fleet, RiskSettings
from optimizer.scenarios import ScenarioSet, generate_scenarios

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# The three objectives every exactness test runs (CVaR at a level a handful of scenarios can resolve).
RISKS = [
    RiskSettings(objective="expected"),
    RiskSettings(objective="cvar", alpha=0.8, weight=0.6),
    RiskSettings(objective="worst"),
]


def scenarios_for(fleet: Fleet) -> ScenarioSet:
    """The fleet's own optimisation scenarios, drawn in one process."""
    return generate_scenarios(
        fleet.bitcoin, fleet.markets, fleet.horizon, range(fleet.scenarios.count), fleet.scenarios.seed
    )


def small_fleet_data(days: int = 3, scenarios: int = 6) -> dict:
    """A fleet small enough for brute force: a few racks per group, AI blocks of a few racks."""
    return {
        "name": "small",
        "horizon": {"start": "2026-12-01", "days": days, "step_hours": 1},
        "markets": [
            {"id": "ercot", "mean_price_usd_per_mwh": 40, "vol_per_sqrt_day": 0.6, "spike_prob_per_hour": 0.02}
        ],
        "machines": [
            {"id": "old", "hashrate_ths": 104, "efficiency_j_per_th": 29.5},
            {"id": "new", "hashrate_ths": 200, "efficiency_j_per_th": 17.5},
        ],
        "sites": [
            {
                "id": "fixed",
                "market": "ercot",
                "capacity_mw": 0.2,
                "contract": {"type": "fixed", "price_usd_per_mwh": 44},
            },
            {
                "id": "spot",
                "market": "ercot",
                "capacity_mw": 0.25,
                "contract": {"type": "index", "adder_usd_per_mwh": 2},
                "ai": {
                    "capex_usd_per_mw": 2_000_000,
                    "fixed_capex_usd": 20_000,
                    "lead_time_days": 1,
                    "min_mw": 0.05,
                    "max_mw": 0.15,
                },
            },
        ],
        "rack_groups": [
            {
                "id": "f-old",
                "site": "fixed",
                "machine": "old",
                "racks": 4,
                "machines_per_rack": 10,
                "opex_usd_per_rack_day": 3,
            },
            {
                "id": "s-old",
                "site": "spot",
                "machine": "old",
                "racks": 3,
                "machines_per_rack": 10,
                "opex_usd_per_rack_day": 3,
            },
            {
                "id": "s-new",
                "site": "spot",
                "machine": "new",
                "racks": 3,
                "machines_per_rack": 10,
                "opex_usd_per_rack_day": 4,
                "idle_cost_usd_per_rack_day": 1,
            },
        ],
        "lease_offers": [
            {
                "id": "colo",
                "rate_usd_per_kw_month": 140,
                "term_months": 36,
                "min_mw": 0.04,
                "max_mw": 0.1,
                "sites": ["spot"],
            }
        ],
        "capital_budget_usd": 300_000,
        "scenarios": {"count": scenarios, "seed": 11, "batch_size": 4},
        "solver": {"time_limit_s": 60, "mip_rel_gap": 0.0},
    }


def million_rack_fleet_data() -> dict:
    """One site, one group of 1,000,000 single-machine racks; the grid takes about half of them mining."""
    data = small_fleet_data(days=2, scenarios=4)
    group = dict(data["rack_groups"][0], racks=1_000_000, machine="new", machines_per_rack=1)
    data.update(rack_groups=[dict(group, opex_usd_per_rack_day=0.3)], lease_offers=[], sites=data["sites"][:1])
    data["sites"][0]["capacity_mw"] = 2_000
    del data["capital_budget_usd"]  # nothing to spend it on
    return data


def medium_fleet_data(days: int = 2, scenarios: int = 5) -> dict:
    """small_fleet_data with twenty times the racks and room for AI blocks: for compact vs extensive form."""
    data = small_fleet_data(days=days, scenarios=scenarios)
    for group in data["rack_groups"]:
        group["racks"] *= 20
    data["sites"][0]["capacity_mw"] = 2.0
    data["sites"][1]["capacity_mw"] = 3.0
    data["sites"][1]["ai"].update(min_mw=0.5, max_mw=1.5)
    data["lease_offers"][0].update(min_mw=0.4, max_mw=1.2)
    data["capital_budget_usd"] = 3_000_000
    return data


def events_fleet_data(days: int = 2, scenarios: int = 5, events_per_year: float = 200) -> dict:
    """medium_fleet_data plus a take-or-pay AI site, DR at both sites, frequent events and calls."""
    data = medium_fleet_data(days=days, scenarios=scenarios)
    data["lease_offers"][0]["sla_penalty_usd_per_mwh"] = 400
    data["markets"][0]["curtailment_events"] = [
        {"name": "storm", "events_per_year": events_per_year, "mean_duration_hours": 6, "available_fraction": 0.2},
        {
            "name": "emergency",
            "events_per_year": 1.25 * events_per_year,
            "mean_duration_hours": 3,
            "available_fraction": 0.7,
            "price_floor_usd_per_mwh": 300,
        },
    ]
    data["markets"][0]["demand_response_calls"] = {"calls_per_year": 1.5 * events_per_year, "call_hours": 3}
    data["sites"][1]["contract"] = {"type": "take_or_pay", "price_usd_per_mwh": 38, "resale_fee_usd_per_mwh": 2}
    data["sites"][1]["demand_response"] = {"credit_usd_per_mw_month": 8_000, "max_mw": 1.0}
    data["sites"][0]["demand_response"] = {"credit_usd_per_mw_month": 6_000, "max_mw": 1.0}
    return data


def hand_scenarios(hashprice, spot, available=None, dr_call=None, indices=None) -> ScenarioSet:
    """[S, T] hashprice and spot of the one market 'ercot'; optional [S, T] event fraction and calls."""
    hashprice, spot = np.atleast_2d(hashprice), np.atleast_2d(spot)
    ones = np.ones(hashprice.shape)
    return ScenarioSet(
        indices=np.arange(hashprice.shape[0]) if indices is None else np.asarray(indices),
        step_hours=1,
        btc_price_usd=ones * 67_800,
        network_hashrate_ehs=ones * 900,
        fees_btc_per_block=ones * 0.025,
        subsidy_btc=ones * 3.125,
        hashprice_usd_per_ph_day=hashprice,
        markets=("ercot",),
        power_price_usd_per_mwh=spot[None],
        available_power_fraction=None if available is None else np.atleast_2d(available)[None],
        dr_call=None if dr_call is None else np.atleast_2d(dr_call)[None],
    )


def pivot_fleet_data(months: int = 18, scenarios: int = 3) -> dict:
    """A multi-year fleet small enough for brute force: every lifecycle is live.

    Site "a" (fixed $40/MWh, AI-ready) may start converting now or in month 6; the build takes 90 days,
    capex is paid over three months (50/30/20), the lease runs 24 months with a 3% escalator and its
    tenant funds 20% of the per-MW capex. Site "b" (fixed $30/MWh) has room for racks moved in. Old
    machines resell at $4/TH, new ones at $9/TH; one rack of new machines can be bought for site "a".
    Daily steps, cash discounted at 10% a year.
    """
    return {
        "name": "pivot-small",
        "horizon": {"start": "2026-12-01", "months": months, "step_hours": 24},
        "finance": {"discount_rate_per_year": 0.10},
        "markets": [{"id": "m", "mean_price_usd_per_mwh": 40, "vol_per_sqrt_day": 0.5, "spike_prob_per_hour": 0.01}],
        "machines": [
            {"id": "old", "hashrate_ths": 104, "efficiency_j_per_th": 29.5, "resale_usd_per_th": 4},
            {"id": "new", "hashrate_ths": 200, "efficiency_j_per_th": 17.5, "resale_usd_per_th": 9},
        ],
        "sites": [
            {
                "id": "a",
                "market": "m",
                "capacity_mw": 0.12,
                "contract": {"type": "fixed", "price_usd_per_mwh": 40},
                "ai": {
                    "capex_usd_per_mw": 1_500_000,
                    "fixed_capex_usd": 5_000,
                    "lead_time_days": 90,
                    "start_months": [0, 6],
                    "capex_schedule": [0.5, 0.3, 0.2],
                    "min_mw": 0.02,
                    "max_mw": 0.1,
                },
            },
            {"id": "b", "market": "m", "capacity_mw": 0.1, "contract": {"type": "fixed", "price_usd_per_mwh": 30}},
        ],
        "rack_groups": [
            {
                "id": "a-old",
                "site": "a",
                "machine": "old",
                "racks": 2,
                "machines_per_rack": 10,
                "opex_usd_per_rack_day": 3,
                "idle_cost_usd_per_rack_day": 1,
            },
            {
                "id": "b-new",
                "site": "b",
                "machine": "new",
                "racks": 1,
                "machines_per_rack": 10,
                "opex_usd_per_rack_day": 4,
            },
        ],
        "lease_offers": [
            {
                "id": "colo",
                "rate_usd_per_kw_month": 150,
                "term_months": 24,
                "escalator_per_year": 0.03,
                "tenant_capex_share": 0.2,
                "min_mw": 0.01,
                "max_mw": 0.1,
                "sites": ["a"],
            },
        ],
        "purchases": [
            {
                "id": "new-a",
                "machine": "new",
                "site": "a",
                "price_usd_per_th": 14,
                "delivery_days": 60,
                "machines_per_rack": 10,
                "max_racks": 1,
                "opex_usd_per_rack_day": 4,
            },
        ],
        "moves": {"cost_usd_per_rack": 500, "downtime_days": 20},
        "capital_budget_usd": 200_000,
        "scenarios": {"count": scenarios, "seed": 7, "batch_size": 2},
        "solver": {"time_limit_s": 60, "mip_rel_gap": 0.0},
    }


def long_lease_fleet_data(rate_usd_per_kw_month: float, days: int = 1826, scenarios: int = 4) -> dict:
    """Five years (daily steps) of S21s at $45/MWh against a 10-year lease whose hall takes 180 days.

    No resale and no idle cost, so converting a rack trades its mining value for rent minus capex alone
    (the test works out the breakeven rate by hand from that).
    """
    return {
        "name": "long-lease",
        "horizon": {"start": "2026-12-01", "days": days, "step_hours": 24},
        "finance": {"discount_rate_per_year": 0.08},
        "markets": [{"id": "m", "mean_price_usd_per_mwh": 45, "vol_per_sqrt_day": 0.3, "spike_prob_per_hour": 0.0}],
        "machines": [{"id": "s21", "hashrate_ths": 200, "efficiency_j_per_th": 17.5}],
        "sites": [
            {
                "id": "dc",
                "market": "m",
                "capacity_mw": 1.0,
                "pue_mining": 1.0,
                "pue_ai": 1.0,
                "contract": {"type": "fixed", "price_usd_per_mwh": 45},
                "ai": {"capex_usd_per_mw": 1_000_000, "lead_time_days": 180, "min_mw": 0, "max_mw": 1.0},
            }
        ],
        "rack_groups": [
            {
                "id": "g",
                "site": "dc",
                "machine": "s21",
                "racks": 10,
                "machines_per_rack": 10,
                "opex_usd_per_rack_day": 2,
            }
        ],
        "lease_offers": [
            {
                "id": "hyperscaler",
                "rate_usd_per_kw_month": rate_usd_per_kw_month,
                "term_months": 120,
                "min_mw": 0,
                "max_mw": 1.0,
                "sites": ["dc"],
            }
        ],
        "risk": {"objective": "expected"},
        "scenarios": {"count": scenarios, "seed": 3, "batch_size": 4},
        "solver": {"time_limit_s": 60, "mip_rel_gap": 0.0},
    }


def random_fleet_data(seed: int, scenarios: int = 3) -> dict:
    """A random fleet for property tests of the economics: every contract type, random machines, PUEs, rack
    sizes (so many groups share a run threshold), events, demand response, AI, 15-minute or hourly steps."""
    rng = np.random.default_rng(seed)
    step = [{"step_minutes": 15}, {"step_hours": 1}, {"step_minutes": 30}, {"step_hours": 3}][seed % 4]
    markets = [
        {
            "id": f"m{i}",
            "mean_price_usd_per_mwh": float(rng.uniform(25, 60)),
            "vol_per_sqrt_day": float(rng.uniform(0.1, 1.2)),
            "spike_prob_per_hour": float(rng.uniform(0, 0.03)),
            "spike_decay_hours": float(rng.choice([0.25, 1.0, 3.0])),
            "intra_hour_vol": float(rng.uniform(0, 0.4)),
            "curtailment_events": [
                {
                    "name": "storm",
                    "events_per_year": float(rng.uniform(20, 80)),
                    "mean_duration_hours": float(rng.uniform(1, 12)),
                    "available_fraction": float(rng.uniform(0, 0.8)),
                    "price_floor_usd_per_mwh": float(rng.uniform(100, 900)),
                }
            ]
            if i == 0
            else [],
            "demand_response_calls": {"calls_per_year": float(rng.uniform(20, 60)), "call_hours": 2}
            if i == 0
            else None,
        }
        for i in range(2)
    ]
    machines = [
        {"id": f"k{i}", "hashrate_ths": float(rng.uniform(90, 300)), "efficiency_j_per_th": float(rng.uniform(12, 32))}
        for i in range(3)
    ]
    contracts = [
        {"type": "fixed", "price_usd_per_mwh": float(rng.uniform(25, 55))},
        {"type": "index", "adder_usd_per_mwh": float(rng.uniform(-5, 8))},
        {"type": "take_or_pay", "price_usd_per_mwh": float(rng.uniform(25, 45)), "resale_fee_usd_per_mwh": 2.0},
    ]
    sites = []
    for n, contract in enumerate(contracts):
        site = {
            "id": f"s{n}",
            "market": f"m{n % 2}",
            "capacity_mw": 3.0,
            "pue_mining": float(rng.uniform(1.0, 1.2)),
            "contract": contract,
        }
        if n != 1:
            site["demand_response"] = {"credit_usd_per_mw_month": 5000, "max_mw": 1.0}
        if n == 2:
            site["pue_ai"] = 1.3
            site["ai"] = {"capex_usd_per_mw": 2_000_000, "lead_time_days": 2, "min_mw": 0.1, "max_mw": 1.0}
        sites.append(site)
    groups = [
        {
            "id": f"g{i}",
            "site": f"s{i % 3}",
            "machine": f"k{int(rng.integers(3))}",
            "racks": int(rng.integers(1, 6)),
            "machines_per_rack": int(rng.integers(3, 13)),
            "opex_usd_per_rack_day": float(rng.uniform(0, 6)),
        }
        for i in range(12)
    ]
    return {
        "name": f"random-{seed}",
        "horizon": {"start": "2026-12-01", "days": int(rng.integers(20, 50)), **step},
        "finance": {"discount_rate_per_year": float(rng.uniform(0, 0.15))},
        "markets": markets,
        "machines": machines,
        "sites": sites,
        "rack_groups": groups,
        "lease_offers": [
            {
                "id": "colo",
                "rate_usd_per_kw_month": 130,
                "term_months": 12,
                "min_mw": 0.1,
                "max_mw": 1.0,
                "sites": ["s2"],
            }
        ],
        "scenarios": {"count": scenarios, "seed": seed, "batch_size": 2},
    }


def selling_fleet_data(months: int = 24) -> dict:
    """One site of old machines on a fixed $35/MWh with a volatile BTC price: mining pays on the paths where the
    price rises and not where it falls, and the machines resell at $4/TH (tracking hashprice). Whether to sell
    at month 6 is worth deciding at month 6. Daily steps, cash discounted at 10% a year."""
    return {
        "name": "sell-or-keep",
        "horizon": {"start": "2026-12-01", "months": months, "step_hours": 24},
        "finance": {"discount_rate_per_year": 0.10},
        "markets": [{"id": "m", "mean_price_usd_per_mwh": 35, "vol_per_sqrt_day": 0.3}],
        "bitcoin": {"price_vol_per_year": 1.2, "jump_intensity_per_year": 0},
        "machines": [{"id": "old", "hashrate_ths": 104, "efficiency_j_per_th": 29.5, "resale_usd_per_th": 4}],
        "sites": [
            {"id": "a", "market": "m", "capacity_mw": 0.1, "contract": {"type": "fixed", "price_usd_per_mwh": 35}}
        ],
        "rack_groups": [
            {
                "id": "a-old",
                "site": "a",
                "machine": "old",
                "racks": 3,
                "machines_per_rack": 10,
                "opex_usd_per_rack_day": 3,
                "idle_cost_usd_per_rack_day": 1,
            }
        ],
        "scenarios": {"count": 3, "seed": 3},
    }
