"""Solver limits: the default MIP time limit scaled with the model size, and the gap a plan may keep.

docs/formulation.md ("Time limit and accepted gap") documents both rules.
"""

from __future__ import annotations

import math

from optimizer.economics import GroupEconomics
from optimizer.fleet import Fleet, Objective, SolverSettings
from solvers.economics_batches import n_items

# Default time limit = BASE + PER_KROW per 1,000 rows + PER_INTEGER per integer column, at most MAX.
# Rows and columns are counted from the compact model's shape (optimizer/formulation.py) without
# building it: one profit row per scenario (two with a CVaR or worst-case objective), one run limit
# per coupled dispatch item, one cap or call row per coupled slot; integers: group x mode counts,
# conversion and offer binaries.
TIME_LIMIT_BASE_S = 60.0
TIME_LIMIT_PER_KROW_S = 1.0
TIME_LIMIT_PER_INTEGER_S = 0.5
TIME_LIMIT_MAX_S = 3_600.0

# Statuses that mean the solve ran to its gap tolerance, not into a limit.
PROVEN_STATUSES = frozenset({"optimal"})


def model_rows(fleet: Fleet, economics: GroupEconomics) -> int:
    risk_rows = 0 if fleet.risk.objective is Objective.EXPECTED else economics.n_scenarios
    items = n_items(economics)
    slots = economics.n_coupled
    return economics.n_scenarios + risk_rows + items + slots


def model_integers(fleet: Fleet) -> int:
    ai_sites = sum(1 for s in fleet.sites if s.ai is not None)
    return 3 * len(fleet.rack_groups) + ai_sites + len(fleet.lease_offers)


def default_time_limit_s(fleet: Fleet, economics: GroupEconomics) -> float:
    """The time limit of a solve whose fleet sets none: grows with the rows and the integer columns."""
    scaled = (
        TIME_LIMIT_BASE_S
        + TIME_LIMIT_PER_KROW_S * model_rows(fleet, economics) / 1_000
        + TIME_LIMIT_PER_INTEGER_S * model_integers(fleet)
    )
    return min(TIME_LIMIT_MAX_S, scaled)


def resolved_time_limit_s(settings: SolverSettings, fleet: Fleet, economics: GroupEconomics) -> float:
    """The fleet's time limit if it sets one, else the size-scaled default."""
    if settings.time_limit_s is not None:
        return settings.time_limit_s
    return default_time_limit_s(fleet, economics)


def gap_exceeded(status: str, mip_gap: float, max_accepted_gap: float) -> bool:
    """True when the solve stopped at a limit (time, interrupt, other) with a gap above the accepted one.

    An unbounded gap (no bound, NaN) counts as above any threshold.
    """
    if status in PROVEN_STATUSES:
        return False
    return math.isnan(mip_gap) or mip_gap > max_accepted_gap
