"""Robustness as numbers: out-of-sample statistics, the SAA optimality-gap interval, VSS, EVPI, baselines.

Pure numpy and pydantic; the Ray fan-out that feeds these functions lives in solvers/robustness.py.

Conventions (maximisation of profit, or of the fleet's risk objective):
- Out-of-sample figures are on scenarios of seed stream 1, never seen by any plan.
- Mak, Morton and Wood (1999), "Monte Carlo bounding techniques for determining solution quality
  in stochastic programs", Oper. Res. Letters 24: with K independent SAA samples of N scenarios,
  the gap estimator of replication k is G_k = z*_k - F_k(candidate), where z*_k is the optimum of
  replication k on its own sample and F_k(candidate) the candidate plan's objective on that same
  sample. E[z*_k] >= v* (optimistic bias of SAA for a maximisation) and E[F_k] = f(candidate), so
  E[G_k] >= v* - f(candidate) and mean(G) + t_{K-1, conf} * s_G / sqrt(K) (s_G with n-1) is a
  one-sided upper confidence bound on the true optimality gap.
- Mean-CVaR is an expectation only in Rockafellar-Uryasev form, jointly in the plan and the VaR
  level eta. The candidate is therefore scored at a fixed eta (its VaR on the independent
  out-of-sample scenarios): F_k(x, eta) is unbiased for f(x, eta) <= f(x), so the bound stays
  valid (slightly conservative) for the plan itself. The worst-case objective is no expectation;
  its interval is indicative only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from optimizer.allocation import MODES, Allocation, Mode, check_feasible, converted_mw
from optimizer.constants import KW_PER_MW
from optimizer.economics import breakeven_power_price_usd_per_mwh
from optimizer.fleet import Fleet, Objective
from optimizer.modes import mode_of_lifecycle
from optimizer.risk import profit_stats, risk_objective_value, weighted_quantile
from optimizer.scenarios import MARKET_AXIS_FIELDS, ScenarioSet
from optimizer.sensitivity import SensitivityReport

DEFAULT_CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_SEED = 20_260_401  # fixed: a report's intervals must not change from run to run
DEFAULT_BOOTSTRAP_RESAMPLES = 1_000


class RobustnessSettings(BaseModel):
    """How much evidence to gather; the defaults keep the example fleet under a minute on 2 cores."""

    oos_scenarios: int = Field(500, ge=2, description="Fresh scenarios (seed stream 1) every plan is scored on.")
    replications: int = Field(5, ge=0, description="SAA replications (streams 2+k) for the gap interval; 0 skips.")
    replication_scenarios: int | None = Field(None, ge=1, description="Scenarios per replication; default: the plan's.")
    wait_and_see_scenarios: int = Field(100, ge=0, description="Out-of-sample scenarios solved with perfect foresight.")
    confidence_level: float = Field(DEFAULT_CONFIDENCE_LEVEL, gt=0.5, lt=1)
    bootstrap_resamples: int = Field(DEFAULT_BOOTSTRAP_RESAMPLES, ge=100)
    sensitivity: bool = True
    sensitivity_scenarios: int = Field(
        50,
        ge=1,
        description="Plan scenarios the sensitivity re-solves use (+1 MW per site, and tens of solves per hashprice "
        "flip search): the first ones of the plan's sample, with the base re-solved on them too.",
    )


# ---------------------------------------------------------------------------------------------
# Report models (plan.json; the gRPC contract mirrors these names)


class ConfidenceInterval(BaseModel):
    estimate_usd: float
    lower_usd: float | None  # None: cannot be estimated (fewer than two values)
    upper_usd: float | None
    confidence_level: float
    method: str  # "t" (Student t on the mean), "paired t", "paired bootstrap", "MMW one-sided"


class SiteRacks(BaseModel):
    site: str
    racks_mine: int
    racks_ai: int
    racks_idle: int
    racks_sell: int = 0
    racks_move: int = 0
    mining_mw: float  # at the meter, PUE included
    ai_mw: float  # converted critical IT capacity
    leased_mw: float
    dr_commitment_mw: float  # committed curtailable mining MW (demand response)


class PlanEvaluation(BaseModel):
    """One plan scored on the out-of-sample scenarios."""

    plan: str  # stochastic | mean_value | calculator | all_mining
    description: str
    feasible: bool
    violations: list[str]
    racks_mine: int
    racks_ai: int
    racks_idle: int
    racks_sell: int = 0
    racks_move: int = 0
    leased_mw: float
    sites: list[SiteRacks]
    mean_profit_usd: ConfidenceInterval
    std_profit_usd: float
    p5_profit_usd: float
    p50_profit_usd: float
    p95_profit_usd: float
    var_usd: float  # the (1 - alpha) profit quantile
    cvar_usd: float  # mean of the worst (1 - alpha) share
    worst_profit_usd: float
    objective_usd: float  # the fleet's risk objective, out of sample


class OptimalityGap(BaseModel):
    """Mak-Morton-Wood multiple-replication interval [0, upper_bound_usd] on the plan's optimality gap."""

    replications: int
    scenarios_per_replication: int
    streams: list[int]
    replication_objective_usd: list[float]  # z*_k: replication k's optimum (MIP dual bound) on its own sample
    candidate_objective_usd: list[float]  # the plan's objective on the same sample
    gap_usd: list[float]  # G_k = z*_k - candidate
    mean_gap_usd: float
    std_gap_usd: float  # sample standard deviation, n - 1
    upper_bound_usd: float  # one-sided upper confidence bound: what a planner reads
    relative_upper_bound: float  # upper bound / |plan's out-of-sample objective|
    confidence_level: float
    candidate_var_usd: float | None  # eta the plan is scored at under mean-CVaR (out-of-sample VaR)
    solver_status: list[str]
    note: str


class WaitAndSee(BaseModel):
    """The perfect-information bound on a subsample of the out-of-sample scenarios."""

    scenarios: int
    objective_usd: float  # risk objective of the per-scenario optima
    mean_profit_usd: float
    stochastic_objective_usd: float  # the stochastic plan on the same subsample
    stochastic_mean_profit_usd: float


class RobustnessReport(BaseModel):
    objective: str
    alpha: float
    weight: float
    confidence_level: float
    out_of_sample_scenarios: int
    out_of_sample_seed: int
    out_of_sample_stream: int
    plans: list[PlanEvaluation]  # the stochastic plan first, then the baselines
    wait_and_see: WaitAndSee | None
    value_of_stochastic_solution_usd: ConfidenceInterval  # objective(stochastic) - objective(mean-value plan)
    value_of_stochastic_solution_mean_profit_usd: ConfidenceInterval
    expected_value_of_perfect_information_usd: ConfidenceInterval | None  # wait-and-see - objective(stochastic)
    expected_value_of_perfect_information_mean_profit_usd: ConfidenceInterval | None
    optimality_gap: OptimalityGap | None
    sensitivity: SensitivityReport | None
    typical_scenario_index: int  # out-of-sample index of the stochastic plan's median-profit scenario
    stress_scenario_index: int  # its worst scenario (the bottom of the CVaR tail)
    notes: list[str]
    timings_s: dict[str, float]

    def plan(self, name: str) -> PlanEvaluation:
        return next(p for p in self.plans if p.plan == name)


# ---------------------------------------------------------------------------------------------
# Statistics


def t_interval(values: np.ndarray, confidence_level: float, method: str = "t") -> ConfidenceInterval:
    """Two-sided Student-t interval on the mean of i.i.d. values (sample std with n - 1)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return ConfidenceInterval(
            estimate_usd=mean, lower_usd=None, upper_usd=None, confidence_level=confidence_level, method=method
        )
    from scipy import stats  # ~0.5 s to import: only when an interval is computed (CLI start-up)

    half = float(stats.t.ppf(0.5 + confidence_level / 2, n - 1) * values.std(ddof=1) / np.sqrt(n))
    return ConfidenceInterval(
        estimate_usd=mean,
        lower_usd=mean - half,
        upper_usd=mean + half,
        confidence_level=confidence_level,
        method=method,
    )


def paired_bootstrap_interval(
    a: np.ndarray,
    b: np.ndarray,
    statistic,
    confidence_level: float,
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> ConfidenceInterval:
    """Percentile interval of statistic(a) - statistic(b), resampling scenarios jointly (a, b share them)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    estimate = statistic(a) - statistic(b)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(a), size=(resamples, len(a)))
    diffs = np.array([statistic(a[rows]) - statistic(b[rows]) for rows in draws])
    tail = (1 - confidence_level) / 2
    lower, upper = np.quantile(diffs, [tail, 1 - tail])
    return ConfidenceInterval(
        estimate_usd=float(estimate),
        lower_usd=float(lower),
        upper_usd=float(upper),
        confidence_level=confidence_level,
        method="paired bootstrap",
    )


@dataclass(frozen=True)
class RiskObjective:
    """The fleet's risk objective as a function of a profit vector."""

    objective: str
    alpha: float
    weight: float

    def __call__(self, profits: np.ndarray) -> float:
        return risk_objective_value(profits, self.objective, self.alpha, self.weight)


def plan_difference(
    a: np.ndarray, b: np.ndarray, risk: RiskObjective, confidence_level: float, resamples: int
) -> tuple[ConfidenceInterval, ConfidenceInterval]:
    """risk(a) - risk(b) (paired bootstrap; a mean is bootstrapped too, as one rule for every objective)
    and mean(a) - mean(b) (paired t), for two plans scored on the same scenarios."""
    objective = paired_bootstrap_interval(a, b, risk, confidence_level, resamples)
    mean = t_interval(np.asarray(a) - np.asarray(b), confidence_level, method="paired t")
    return objective, mean


def mmw_upper_bound(gaps: Sequence[float], confidence_level: float) -> tuple[float, float, float]:
    """(mean, sample std with n-1, one-sided upper bound mean + t_{K-1,conf} s / sqrt(K)) of the gap estimates."""
    gaps = np.asarray(gaps, dtype=float)
    k = len(gaps)
    if k < 2:
        raise ValueError(f"the MMW interval needs at least 2 replications, got {k}")
    mean, std = float(gaps.mean()), float(gaps.std(ddof=1))
    from scipy import stats  # lazy, as in mean_interval

    return mean, std, mean + float(stats.t.ppf(confidence_level, k - 1)) * std / np.sqrt(k)


def rockafellar_uryasev_value(profits: np.ndarray, var_usd: float, alpha: float, weight: float) -> float:
    """(1 - w) mean + w (eta - E[(eta - profit)^+] / (1 - alpha)) at a fixed eta: an expectation, hence unbiased."""
    profits = np.asarray(profits, dtype=float)
    shortfall = np.maximum(var_usd - profits, 0.0).mean()
    return float((1 - weight) * profits.mean() + weight * (var_usd - shortfall / (1 - alpha)))


def candidate_sample_objective(profits: np.ndarray, risk: RiskObjective, var_usd: float | None) -> float:
    """The candidate's F_k in the MMW estimator: fixed-eta RU value for mean-CVaR, else the objective."""
    if risk.objective == Objective.CVAR.value and var_usd is not None:
        return rockafellar_uryasev_value(profits, var_usd, risk.alpha, risk.weight)
    return risk(profits)


def optimality_gap(
    replication_objective_usd: Sequence[float],
    candidate_objective_usd: Sequence[float],
    scenarios_per_replication: int,
    streams: Sequence[int],
    confidence_level: float,
    plan_objective_usd: float,
    objective: str,
    candidate_var_usd: float | None,
    solver_status: Sequence[str],
) -> OptimalityGap:
    gaps = np.asarray(replication_objective_usd, dtype=float) - np.asarray(candidate_objective_usd, dtype=float)
    mean, std, upper = mmw_upper_bound(gaps, confidence_level)
    note = "valid one-sided bound (Mak, Morton and Wood 1999)"
    if objective == Objective.CVAR.value:
        note += "; mean-CVaR scored in Rockafellar-Uryasev form at the plan's out-of-sample VaR (conservative)"
    if objective == Objective.WORST.value:
        note = "indicative only: the worst-case objective is not an expectation, so MMW does not apply"
    if any(s != "optimal" for s in solver_status):
        note += "; some replications stopped before optimality (their dual bound is used, still valid)"
    return OptimalityGap(
        replications=len(gaps),
        scenarios_per_replication=scenarios_per_replication,
        streams=list(streams),
        replication_objective_usd=[float(v) for v in replication_objective_usd],
        candidate_objective_usd=[float(v) for v in candidate_objective_usd],
        gap_usd=gaps.tolist(),
        mean_gap_usd=mean,
        std_gap_usd=std,
        upper_bound_usd=upper,
        relative_upper_bound=upper / max(abs(plan_objective_usd), 1e-9),
        confidence_level=confidence_level,
        candidate_var_usd=candidate_var_usd,
        solver_status=list(solver_status),
        note=note,
    )


# ---------------------------------------------------------------------------------------------
# Scoring a plan


def site_racks(fleet: Fleet, allocation: Allocation) -> list[SiteRacks]:
    out = []
    for site in fleet.sites:
        members = [g for g in fleet.rack_groups if g.site == site.id]
        out.append(
            SiteRacks(
                site=site.id,
                **{f"racks_{m.value}": sum(allocation.count(g.id, m) for g in members) for m in MODES},
                mining_mw=sum(allocation.count(g.id, Mode.MINE) * fleet.rack_power_kw(g) for g in members)
                * site.pue_mining
                / KW_PER_MW,
                ai_mw=converted_mw(fleet, allocation, site.id),
                leased_mw=allocation.site_lease_mw(site.id),
                dr_commitment_mw=allocation.site_dr_mw(site.id),
            )
        )
    return out


def evaluate_plan(
    name: str,
    description: str,
    fleet: Fleet,
    allocation: Allocation,
    profits_usd: np.ndarray,
    risk: RiskObjective,
    confidence_level: float,
) -> PlanEvaluation:
    """Summarise a plan's out-of-sample profits (from optimizer.allocation.scenario_profits_usd)."""
    stats_ = profit_stats(profits_usd, risk.alpha)
    violations = check_feasible(fleet, allocation)
    sites = site_racks(fleet, allocation)
    return PlanEvaluation(
        plan=name,
        description=description,
        feasible=not violations,
        violations=[str(v) for v in violations],
        **{f"racks_{m.value}": sum(getattr(s, f"racks_{m.value}") for s in sites) for m in MODES},
        leased_mw=sum(allocation.lease_mw.values()),
        sites=sites,
        mean_profit_usd=t_interval(profits_usd, confidence_level),
        std_profit_usd=stats_.std_usd,
        p5_profit_usd=stats_.p5_usd,
        p50_profit_usd=stats_.p50_usd,
        p95_profit_usd=stats_.p95_usd,
        var_usd=stats_.var_usd,
        cvar_usd=stats_.cvar_usd,
        worst_profit_usd=stats_.worst_usd,
        objective_usd=risk(profits_usd),
    )


def typical_and_stress(indices: np.ndarray, profits_usd: np.ndarray) -> tuple[int, int]:
    """Global indices of the median-profit scenario and of the worst one."""
    order = np.argsort(profits_usd, kind="stable")
    return int(indices[order[(len(order) - 1) // 2]]), int(indices[order[0]])


def value_at_risk(profits_usd: np.ndarray, alpha: float) -> float:
    return weighted_quantile(np.asarray(profits_usd, dtype=float), 1.0 - alpha)


# ---------------------------------------------------------------------------------------------
# Plans and scenarios the baselines need


def allocation_from_plan(plan) -> Allocation:
    """Rebuild the first-stage Allocation from a PlanResult (or its plan.json), so any saved plan can be scored."""
    racks = {g.group: {mode: getattr(g, f"racks_{mode.value}") for mode in MODES} for g in plan.allocation}
    # a what-if that edits the counts per mode (racks_mine, ...) overrides the lifecycles it contradicts
    lifecycles = {g.group: dict(g.lifecycles) for g in plan.allocation if g.lifecycles and _agrees(g)}
    starts = {s.site: s.start_option for s in plan.ai_sites if s.converted}
    lease = {(o.offer, site): mw for o in plan.offers for site, mw in o.mw_by_site.items() if mw > 0}
    dr = {s.site: s.dr_commitment_mw for s in plan.sites if s.dr_commitment_mw > 0}
    return Allocation(
        racks=racks,
        converted_sites=frozenset(starts),
        lease_mw=lease,
        dr_mw=dr,
        lifecycles=lifecycles,
        conversion_start=starts,
        purchases=dict(getattr(plan, "purchases", {}) or {}),
    )


def _agrees(group) -> bool:
    by_mode = dict.fromkeys(MODES, 0)
    for key, n in group.lifecycles.items():
        by_mode[mode_of_lifecycle(key)] += n
    return all(by_mode[mode] == getattr(group, f"racks_{mode.value}") for mode in MODES)


def calculator_allocation(
    fleet: Fleet, hashprice_usd_per_ph_day: float, site_power_price_usd_per_mwh: Mapping[str, float]
) -> Allocation:
    """The profitability-calculator rule: run every rack whose breakeven power price (expected hashprice,
    site PUE, pool fee) is above its site's expected power price; idle the rest; no AI."""
    racks = {}
    for group in fleet.rack_groups:
        site = fleet.site(group.site)
        breakeven = breakeven_power_price_usd_per_mwh(
            hashprice_usd_per_ph_day,
            fleet.machine(group.machine).efficiency_j_per_th,
            site.pue_mining,
            fleet.pool_fee_fraction,
        )
        mine = breakeven > site_power_price_usd_per_mwh[site.id]
        racks[group.id] = {**dict.fromkeys(MODES, 0), Mode.MINE: group.racks if mine else 0}
        racks[group.id][Mode.IDLE] = 0 if mine else group.racks
    return Allocation(racks=racks)


@dataclass(frozen=True)
class ScenarioSums:
    """Per-step sums of every price path over a batch of scenarios: batches add up, then divide once."""

    count: int
    step_hours: float  # step length in hours (0.25 for 15 minutes)
    markets: tuple[str, ...]
    sums: dict[str, np.ndarray]


def _path_fields(scenarios: ScenarioSet) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(scenarios)
        if isinstance(getattr(scenarios, f.name), np.ndarray) and f.name != "indices"
    ]


def scenario_sums(scenarios: ScenarioSet) -> ScenarioSums:
    sums = {
        name: getattr(scenarios, name).sum(axis=1 if name in MARKET_AXIS_FIELDS else 0, keepdims=True)
        for name in _path_fields(scenarios)
    }
    return ScenarioSums(scenarios.n_scenarios, scenarios.step_hours, scenarios.markets, sums)


def add_sums(parts: Sequence[ScenarioSums]) -> ScenarioSums:
    first = parts[0]
    total = {name: sum(p.sums[name] for p in parts) for name in first.sums}
    return ScenarioSums(sum(p.count for p in parts), first.step_hours, first.markets, total)


def mean_scenario_from_sums(sums: ScenarioSums) -> ScenarioSet:
    """One scenario whose every path (BTC price, hashprice, power prices, ...) is the per-step mean.

    Event paths average too: the available power fraction becomes its mean, and a demand-response call
    stands where most scenarios call (optimizer.scenarios.ScenarioSet reads a numeric dr_call >= 0.5).
    """
    return ScenarioSet(
        indices=np.array([0], dtype=np.int64),
        step_hours=sums.step_hours,
        markets=sums.markets,
        **{name: value / sums.count for name, value in sums.sums.items()},
    )


def mean_scenario(scenarios: ScenarioSet) -> ScenarioSet:
    return mean_scenario_from_sums(scenario_sums(scenarios))
