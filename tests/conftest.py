"""Shared fixtures: one Ray for the whole session (num_cpus=2), small fleets built in code."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


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
