"""Admission: estimate what a plan request will cost before any work starts, and refuse what is too big.

The estimates are counts taken from the request (scenarios x steps x groups, robustness settings,
MIP size), turned into bytes with per-element sizes measured on this code base (see
docs/operations.md, "Sizing"). They are deliberately rough (within a small factor): their job is to
stop the 5-7 GB requests, not to predict the 50 MB ones. A refusal is RESOURCE_EXHAUSTED naming the
limit, the estimate and the request fields that drive it.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.fleet import Fleet
from optimizer.robustness import RobustnessSettings

BYTES_PER_VALUE = 8  # float64
# Arrays per scenario-step in a batch: BTC price, hashrate, fees, subsidy, hashprice, plus per market
# the price, the available power and the DR flag; per group the margin and the run flag.
SERIES_PER_STEP = 5
SERIES_PER_MARKET_STEP = 3
SERIES_PER_GROUP_STEP = 2
GROUP_SCENARIO_ARRAYS = 6  # GroupEconomics [G, S] fields the driver keeps
MODEL_BYTES_PER_NONZERO = 600  # Pyomo expression + HiGHS copy, per nonzero of the scenario rows


@dataclass(frozen=True)
class Limits:
    """Server-configured ceilings (hashpivot serve --max-...)."""

    max_groups: int = 1_000
    max_scenarios: int = 50_000  # plan scenarios, and each robustness sample
    max_scenario_steps: int = 20_000_000  # scenario x step pairs over the whole request, robustness included
    max_work: int = 2_000_000_000  # scenario x step x (groups + markets) element operations
    max_memory_bytes: int = 2 * 1024**3
    max_bootstrap_resamples: int = 100_000
    max_replications: int = 50
    max_queued_jobs_per_caller: int = 20
    max_scenario_upload_bytes: int = 256 * 1024**2  # one UploadScenarios file (it is held in memory to validate)
    max_scenario_sets_per_caller: int = 20  # stored scenario sets per tenant (DeleteScenarioSet frees one)


@dataclass(frozen=True)
class Estimate:
    scenario_steps: int
    work: int
    memory_bytes: int
    mip_nonzeros: int


def _robust_scenarios(fleet: Fleet, robustness: RobustnessSettings | None) -> int:
    """Scenario horizons the robustness assessment simulates on top of the plan's own."""
    if robustness is None:
        return 0
    replication = robustness.replication_scenarios or fleet.scenarios.count
    sensitivity = robustness.sensitivity_scenarios if robustness.sensitivity else 0
    return (
        robustness.oos_scenarios
        + robustness.replications * replication
        + robustness.wait_and_see_scenarios
        + sensitivity
    )


def estimate(
    fleet: Fleet, robustness: RobustnessSettings | None = None, workers: int = 2, scenarios: int | None = None
) -> Estimate:
    """`scenarios`: the plan's scenario count when it is not the fleet's (an uploaded scenario set)."""
    steps, scenarios = fleet.horizon.n_steps, fleet.scenarios.count if scenarios is None else scenarios
    groups, markets = len(fleet.rack_groups), len(fleet.markets)
    horizons = scenarios + _robust_scenarios(fleet, robustness)
    scenario_steps = horizons * steps
    work = scenario_steps * (groups + markets)
    batch = min(fleet.scenarios.batch_size, max(scenarios, 1))
    per_batch = batch * steps * (SERIES_PER_STEP + SERIES_PER_MARKET_STEP * markets + SERIES_PER_GROUP_STEP * groups)
    largest_sample = max(scenarios, robustness.oos_scenarios if robustness else 0)
    driver = largest_sample * (GROUP_SCENARIO_ARRAYS * groups + steps)  # + per-scenario hashprice series
    nonzeros = largest_sample * (groups + 1)
    memory = BYTES_PER_VALUE * (driver + workers * per_batch) + MODEL_BYTES_PER_NONZERO * nonzeros
    return Estimate(scenario_steps, work, memory, nonzeros)


def check(
    fleet: Fleet,
    robustness: RobustnessSettings | None,
    limits: Limits,
    workers: int = 2,
    scenario_set: tuple[str, int] | None = None,
) -> list[tuple[str, str, str]]:
    """(limit, request fields, description) for each limit the request exceeds; empty when admitted.
    `scenario_set`: (request field, scenario count) of an uploaded set the request plans on."""
    count_field, count = ("fleet.scenarios.count", fleet.scenarios.count) if scenario_set is None else scenario_set
    est = estimate(fleet, robustness, workers, count)
    over: list[tuple[str, str, str]] = []

    def exceeds(limit: str, value: int, fields: str, what: str) -> None:
        ceiling = getattr(limits, limit)
        if value > ceiling:
            over.append((limit, fields, f"{what}: estimated {value:,}, limit {ceiling:,}"))

    exceeds("max_groups", len(fleet.rack_groups), "fleet.rack_groups", "rack groups")
    exceeds("max_scenarios", count, count_field, "scenarios")
    sample_fields = f"{count_field}, fleet.horizon, robustness"
    exceeds("max_scenario_steps", est.scenario_steps, sample_fields, "scenario steps")
    exceeds("max_work", est.work, f"{sample_fields}, fleet.rack_groups", "work (scenario steps x groups)")
    exceeds("max_memory_bytes", est.memory_bytes, f"{sample_fields}, fleet.rack_groups", "memory, bytes")
    if robustness is not None:
        exceeds("max_scenarios", robustness.oos_scenarios, "robustness.oos_scenarios", "out-of-sample scenarios")
        exceeds(
            "max_bootstrap_resamples",
            robustness.bootstrap_resamples,
            "robustness.bootstrap_resamples",
            "bootstrap resamples",
        )
        exceeds("max_replications", robustness.replications, "robustness.replications", "SAA replications")
    return over
