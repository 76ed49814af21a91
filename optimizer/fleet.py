"""The fleet file: sites, machines, rack groups, lease offers, markets, risk and solver settings.

Everything a planner writes is validated here, and every error names the field path
and the bad value (pydantic's `loc`), so a fleet file never fails silently.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from optimizer.constants import DAYS_PER_MONTH, KW_PER_MW
from optimizer.market import BitcoinMarket, Horizon, PowerMarket, StrictModel

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]

# ASIC efficiency range: the S21 XP class is ~13.5 J/TH, S19j Pro ~30 J/TH (DESIGN.md section 1);
# the bounds leave room for next-generation and legacy machines, and catch unit mistakes (W/TH vs J/GH).
MIN_EFFICIENCY_J_PER_TH = 5.0
MAX_EFFICIENCY_J_PER_TH = 150.0


class Machine(StrictModel):
    id: Id
    hashrate_ths: float = Field(gt=0, le=10_000)
    efficiency_j_per_th: float = Field(ge=MIN_EFFICIENCY_J_PER_TH, le=MAX_EFFICIENCY_J_PER_TH)
    resale_usd_per_th: float | None = Field(
        None,
        ge=0,
        le=1_000,
        description="Second-hand price per TH/s today; it moves with hashprice in each scenario. "
        "Absent: the machines cannot be sold and keep no value at the horizon's end.",
    )

    @property
    def power_kw(self) -> float:
        return self.hashrate_ths * self.efficiency_j_per_th / 1_000


# Default SLA penalty for AI/HPC load a site fails to serve, per MWh of critical IT load lost. An
# assumption, to be replaced by the lease's SLA schedule: about five times the pro-rata rent of a
# $140/kW-month lease (~$190/MWh), i.e. the rent of the lost hours refunded plus service credits.
DEFAULT_SLA_PENALTY_USD_PER_MWH = 1_000.0


class ContractType(enum.StrEnum):
    FIXED = "fixed"  # fixed price per MWh drawn
    INDEX = "index"  # spot price of the site's market plus an adder
    # Fixed price for the site's whole capacity_mw block, paid whether used or not (take-or-pay);
    # every MWh the site does not draw is sold back at spot minus resale_fee_usd_per_mwh.
    TAKE_OR_PAY = "take_or_pay"


class PowerContract(StrictModel):
    """How a site buys power.

    - `fixed`: `price_usd_per_mwh` for every MWh drawn.
    - `index`: the spot price of the site's market plus `adder_usd_per_mwh`.
    - `take_or_pay`: the site buys its whole `capacity_mw` at `price_usd_per_mwh` every hour, used or
      not, and every MWh it does not draw is resold at spot minus `resale_fee_usd_per_mwh`. Drawing a
      MWh therefore costs the resale it forgoes (spot - fee): a mining rack runs when its hash revenue
      beats that, and the contract adds a scenario-dependent constant (resale of the whole block minus
      the fixed payment).

    AI/HPC tenants are billed their power at the contract's price (spot + adder for `index`, the fixed
    price otherwise), so under `fixed` and `index` lease power nets to zero; under `take_or_pay` each
    MWh a tenant draws earns the fixed price but forgoes its resale at spot.
    """

    type: ContractType
    price_usd_per_mwh: float | None = Field(
        None, ge=0, le=5_000, description="Fixed price per MWh; required for fixed and take_or_pay."
    )
    adder_usd_per_mwh: float = Field(0.0, ge=-100, le=1_000, description="index: added to spot.")
    resale_fee_usd_per_mwh: float = Field(
        0.0, ge=0, le=1_000, description="take_or_pay: deducted from spot on every MWh sold back."
    )

    @model_validator(mode="after")
    def _fields_fit_type(self) -> PowerContract:
        if self.type in (ContractType.FIXED, ContractType.TAKE_OR_PAY) and self.price_usd_per_mwh is None:
            raise ValueError(f"price_usd_per_mwh is required for a {self.type.value} contract")
        if self.type is not ContractType.TAKE_OR_PAY and self.resale_fee_usd_per_mwh:
            raise ValueError("resale_fee_usd_per_mwh applies only to a take_or_pay contract")
        return self

    @property
    def resells(self) -> bool:
        return self.type is ContractType.TAKE_OR_PAY


class DemandResponse(StrictModel):
    """A demand-response programme the site may enrol mining load in.

    The committed MW (a first-stage decision, continuous, at most `max_mw` and at most the site's planned
    mining load at the meter) earns `credit_usd_per_mw_month` for the horizon. Whenever the site's market
    calls demand response (`markets[].demand_response_calls`), the site's mining load must sit at least the
    committed MW below its planned mining load. AI/HPC load is firm and never counts.
    """

    credit_usd_per_mw_month: float = Field(gt=0, le=1_000_000, description="Paid per committed MW per month.")
    max_mw: float = Field(gt=0, le=5_000, description="Most curtailable MW the programme takes, at the meter.")


class AiConversion(StrictModel):
    """Converting rack slots of a site to AI/HPC colocation: a project with a start, a build and capex.

    The MIP picks at most one start from `start_months` (months after the plan's start). From that date
    the converted slots stop mining; the build lasts `lead_time_days` (or `build_months`), during which
    the slots neither mine nor earn and the capex is paid month by month along `capex_schedule`
    (even spending when absent); rent runs from the ready date for the lease's term.
    """

    fixed_capex_usd: float = Field(0.0, ge=0, le=1e11)
    capex_usd_per_mw: float = Field(ge=0, le=1e9, description="Per MW of critical IT load; ~$8-11M for AI-grade halls.")
    lead_time_days: int = Field(ge=0, le=3_650, description="Build: from the start of construction to first rent.")
    start_months: list[float] = Field(
        default_factory=lambda: [0.0],
        min_length=1,
        max_length=24,
        description="When construction may start, in months after the plan's start; the MIP picks one or none.",
    )
    capex_schedule: list[float] | None = Field(
        None,
        min_length=1,
        max_length=120,
        description="Share of the capex paid in each month of the build from its start; sums to 1. Even if absent.",
    )
    min_mw: float = Field(0.0, ge=0)
    max_mw: float = Field(gt=0, le=5_000)

    @model_validator(mode="before")
    @classmethod
    def _build_months(cls, data: Any) -> Any:
        if isinstance(data, dict) and "build_months" in data:
            data = dict(data)
            months = data.pop("build_months")
            if "lead_time_days" in data:
                raise ValueError("give lead_time_days or build_months, not both")
            if not isinstance(months, int | float) or not 0 <= months <= 120:
                raise ValueError(f"build_months: must be a number of months in [0, 120], got {months!r}")
            data["lead_time_days"] = round(months * DAYS_PER_MONTH)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> AiConversion:
        if self.min_mw > self.max_mw:
            raise ValueError(f"min_mw ({self.min_mw}) exceeds max_mw ({self.max_mw})")
        if any(not 0 <= m <= 600 for m in self.start_months) or len(set(self.start_months)) != len(self.start_months):
            raise ValueError(f"start_months: distinct month offsets in [0, 600], got {self.start_months}")
        if self.capex_schedule is not None:
            if any(f < 0 for f in self.capex_schedule) or abs(sum(self.capex_schedule) - 1.0) > 1e-6:
                raise ValueError(f"capex_schedule: non-negative shares summing to 1, got {self.capex_schedule}")
        return self

    @property
    def build_days(self) -> int:
        return self.lead_time_days

    def capex_shares(self) -> list[float]:
        """Share of the capex paid at the start of each month from the start of construction."""
        if self.capex_schedule is not None:
            return list(self.capex_schedule)
        months = max(1, math.ceil(self.lead_time_days / DAYS_PER_MONTH - 1e-9))
        return [1.0 / months] * months


class Site(StrictModel):
    id: Id
    market: Id = Field(description="Power market whose spot price the site sees.")
    capacity_mw: float = Field(gt=0, le=5_000, description="Grid import capacity at the meter.")
    pue_mining: float = Field(1.05, ge=1, le=3)
    pue_ai: float = Field(1.3, ge=1, le=3)
    contract: PowerContract
    ai: AiConversion | None = Field(None, description="AI/HPC conversion terms; absent when the site is not AI-ready.")
    demand_response: DemandResponse | None = Field(
        None, description="Demand-response programme; its market must define demand_response_calls."
    )


class RackGroup(StrictModel):
    """Identical racks at one site: counted, never one binary per rack."""

    id: Id
    site: Id
    machine: Id
    racks: int = Field(ge=0, le=1_000_000)
    machines_per_rack: int = Field(ge=1, le=1_000)
    opex_usd_per_rack_day: float = Field(0.0, ge=0, description="Mining-mode opex: maintenance, staff, pool.")
    idle_cost_usd_per_rack_day: float = Field(0.0, ge=0)
    convertible: bool = Field(True, description="Whether the rack slot can host AI/HPC load after conversion.")
    committed_ai: bool = Field(
        False,
        description="The racks are slots already converted in a committed hall (quarterly re-planning): their "
        "machines are gone, so they can only be AI capacity of the site's conversion starting now.",
    )


class LeaseOffer(StrictModel):
    """An AI/HPC colocation offer: per kW of critical IT load per month, firm, power passed through."""

    id: Id
    rate_usd_per_kw_month: float = Field(gt=0, le=10_000)
    term_months: int = Field(ge=1, le=360)
    min_mw: float = Field(0.0, ge=0)
    max_mw: float = Field(gt=0)
    sites: list[Id] = Field(min_length=1)
    escalator_per_year: float = Field(0.0, ge=-0.5, le=1, description="Rent rises by this share every lease year.")
    start_by: dt.date | None = Field(None, description="Rent must start by this date, or the offer lapses.")
    tenant_capex_share: float = Field(
        0.0, ge=0, le=1, description="Share of the per-MW conversion capex the tenant funds for the MW it leases."
    )
    committed: bool = Field(False, description="Already signed (quarterly re-planning): the plan must take it.")
    sla_penalty_usd_per_mwh: float = Field(
        DEFAULT_SLA_PENALTY_USD_PER_MWH,
        ge=0,
        le=1_000_000,
        description="Paid per MWh of critical IT load not served when a curtailment event cuts the site below it.",
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> LeaseOffer:
        if self.min_mw > self.max_mw:
            raise ValueError(f"min_mw ({self.min_mw}) exceeds max_mw ({self.max_mw})")
        return self


class PurchaseOption(StrictModel):
    """New machines the fleet may buy: racks of one machine class for one site, delivered after a lead time."""

    id: Id
    machine: Id
    site: Id
    price_usd_per_th: float = Field(ge=0, le=1_000, description="Paid on order, at the plan's start.")
    delivery_days: int = Field(0, ge=0, le=3_650)
    machines_per_rack: int = Field(ge=1, le=1_000)
    max_racks: int = Field(ge=0, le=1_000_000)
    min_racks: int = Field(0, ge=0, le=1_000_000, description="Racks already ordered (a committed purchase).")
    opex_usd_per_rack_day: float = Field(0.0, ge=0, le=1e6)

    @model_validator(mode="after")
    def _min_below_max(self) -> PurchaseOption:
        if self.min_racks > self.max_racks:
            raise ValueError(f"min_racks ({self.min_racks}) exceeds max_racks ({self.max_racks})")
        return self


class FleetMoves(StrictModel):
    """Moving racks to another site with free capacity: a cost per rack and days without mining in transit."""

    cost_usd_per_rack: float = Field(ge=0, le=1e7)
    downtime_days: int = Field(ge=0, le=365)


class Finance(StrictModel):
    """How cash flows are valued: discounted to the plan's start at an annual rate (a WACC)."""

    discount_rate_per_year: float = Field(
        0.0, ge=0, le=1, description="Annual discount rate; 0 values every figure at nominal (the default)."
    )


class Objective(enum.StrEnum):
    EXPECTED = "expected"
    CVAR = "cvar"
    WORST = "worst"


class RiskSettings(StrictModel):
    objective: Objective = Objective.EXPECTED
    alpha: float = Field(0.95, gt=0, lt=1, description="CVaR level: the mean of the worst (1-alpha) share.")
    weight: float = Field(0.5, ge=0, le=1, description="Weight of CVaR against expected profit.")


class SolveMethod(enum.StrEnum):
    MONOLITHIC = "monolithic"  # the compact MIP in one HiGHS solve (optimizer.formulation)
    DECOMPOSITION = "decomposition"  # cutting planes and Benders cuts, scenario work on Ray (solvers.decomposition)
    AUTO = "auto"  # chosen from the model size (solvers.decomposition.choose_method)


class SolverSettings(StrictModel):
    time_limit_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="MIP time limit, seconds; unset: scaled with the model size (docs/formulation.md).",
    )
    mip_rel_gap: float = Field(1e-6, ge=0, le=1)
    threads: int = Field(1, ge=1, le=256)
    max_accepted_gap: float = Field(
        0.01,
        ge=0,
        description="A solve that stops at a limit with a larger relative gap flags the plan (CLI exits non-zero).",
    )
    method: SolveMethod = Field(
        SolveMethod.AUTO,
        description="monolithic MIP, exact decomposition (scenario work on Ray), or auto by model size.",
    )


class ScenarioSettings(StrictModel):
    count: int = Field(200, ge=1, le=1_000_000)
    seed: int = Field(2026, ge=0)
    batch_size: int = Field(50, ge=1, le=100_000)


class TreeSettings(StrictModel):
    """Plan on a scenario tree too (optimizer.option_value): decide each date's decisions when it comes."""

    decision_months: list[float] = Field(
        min_length=1, max_length=12, description="Months after the start decisions are taken at; the first is 0."
    )
    branching: list[int] = Field(
        default_factory=lambda: [3],
        min_length=1,
        max_length=12,
        description="Children per node after each decision date (one value: the same at every date).",
    )
    replications: int = Field(5, ge=0, le=1_000, description="Independent trees for the value-of-waiting interval.")
    out_of_sample: bool = Field(True, description="Score the policy by re-solving at each node of fresh trees.")
    out_of_sample_trees: int = Field(
        3, ge=1, le=100, description="Fresh trees the policy is scored on; two or more give an interval."
    )

    @model_validator(mode="after")
    def _check(self) -> TreeSettings:
        months = self.decision_months
        if months[0] != 0 or any(b <= a for a, b in zip(months, months[1:], strict=False)):
            raise ValueError(f"decision_months: increasing, starting at 0, got {months}")
        if len(self.branching) not in (1, len(months)) or any(k < 1 for k in self.branching):
            raise ValueError(f"branching: one factor >= 1, or one per decision date, got {self.branching}")
        leaves = 1
        for k in self.per_date():
            leaves *= k
        if leaves > 100_000:
            raise ValueError(f"the tree would have {leaves} scenarios; at most 100,000")
        return self

    def per_date(self) -> list[int]:
        return self.branching * len(self.decision_months) if len(self.branching) == 1 else list(self.branching)


class Fleet(StrictModel):
    name: str = "fleet"
    horizon: Horizon = Horizon()
    bitcoin: BitcoinMarket = BitcoinMarket()
    pool_fee_fraction: float = Field(0.02, ge=0, le=0.2, description="Pool fee; typically 0-4%.")
    markets: list[PowerMarket] = Field(min_length=1)
    machines: list[Machine] = Field(min_length=1)
    sites: list[Site] = Field(min_length=1)
    rack_groups: list[RackGroup] = Field(min_length=1)
    lease_offers: list[LeaseOffer] = Field(default_factory=list)
    purchases: list[PurchaseOption] = Field(default_factory=list, max_length=1_000)
    moves: FleetMoves | None = Field(None, description="Absent: racks stay at their site.")
    finance: Finance = Finance()
    capital_budget_usd: float | None = Field(None, ge=0, le=1e12)
    risk: RiskSettings = RiskSettings()
    solver: SolverSettings = SolverSettings()
    scenarios: ScenarioSettings = ScenarioSettings()
    tree: TreeSettings | None = Field(None, description="Absent: a two-stage plan only (no scenario tree).")
    recourse_months: list[float] = Field(
        default_factory=list,
        max_length=12,
        description="Months after the start at which a rack may change course later: be sold, moved, idled or "
        "restarted (dated lifecycles, docs/tree.md). The tree analysis sets them to its decision dates; in a "
        "two-stage plan they are commitments made today.",
    )

    @field_validator("markets", "machines", "sites", "rack_groups", "lease_offers", "purchases")
    @classmethod
    def _unique_ids(cls, items: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise ValueError(f"duplicate id {item.id!r}")
            seen.add(item.id)
        return items

    @field_validator("recourse_months")
    @classmethod
    def _recourse_increasing(cls, months: list[float]) -> list[float]:
        if any(m <= 0 for m in months) or any(b <= a for a, b in zip(months, months[1:], strict=False)):
            raise ValueError(f"increasing months after the start (> 0), got {months}")
        return months

    @model_validator(mode="after")
    def _references_resolve(self) -> Fleet:
        _check_references(self)
        _check_firm_capacity(self)
        return self

    def site(self, site_id: str) -> Site:
        return next(s for s in self.sites if s.id == site_id)

    def machine(self, machine_id: str) -> Machine:
        return next(m for m in self.machines if m.id == machine_id)

    def rack_power_kw(self, group: RackGroup) -> float:
        return group.machines_per_rack * self.machine(group.machine).power_kw

    def lease_offer(self, offer_id: str) -> LeaseOffer:
        return next(o for o in self.lease_offers if o.id == offer_id)

    def purchase(self, purchase_id: str) -> PurchaseOption:
        return next(p for p in self.purchases if p.id == purchase_id)

    def rack_hashrate_ths(self, group: RackGroup) -> float:
        return group.machines_per_rack * self.machine(group.machine).hashrate_ths

    def can_convert(self, group: RackGroup) -> bool:
        return (group.convertible or group.committed_ai) and self.site(group.site).ai is not None

    @property
    def total_racks(self) -> int:
        return sum(g.racks for g in self.rack_groups)


class FleetError(ValueError):
    """A fleet that does not validate; `violations` holds (field path, message) pairs."""

    def __init__(self, violations: list[tuple[str, str]]):
        self.violations = violations
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in violations))


def _fail(path: str, message: str) -> None:
    # Raised inside a model validator: pydantic reports it at the model's root, so the path goes in the text.
    raise ValueError(f"{path}: {message}")


def _check_references(fleet: Fleet) -> None:
    market_ids = {m.id for m in fleet.markets}
    site_ids = {s.id for s in fleet.sites}
    machine_ids = {m.id for m in fleet.machines}
    for i, site in enumerate(fleet.sites):
        if site.market not in market_ids:
            _fail(f"sites.{i}.market", f"unknown market {site.market!r} (known: {sorted(market_ids)})")
    for i, group in enumerate(fleet.rack_groups):
        if group.site not in site_ids:
            _fail(f"rack_groups.{i}.site", f"unknown site {group.site!r} (known: {sorted(site_ids)})")
        if group.machine not in machine_ids:
            _fail(f"rack_groups.{i}.machine", f"unknown machine {group.machine!r} (known: {sorted(machine_ids)})")
    markets = {m.id: m for m in fleet.markets}
    for i, site in enumerate(fleet.sites):
        if site.demand_response is not None and site.market in markets:
            calls = markets[site.market].demand_response_calls
            if calls is None or calls.calls_per_year == 0:
                _fail(
                    f"sites.{i}.demand_response",
                    f"market {site.market!r} has no demand_response_calls, so the programme would never be called",
                )
    for i, option in enumerate(fleet.purchases):
        if option.site not in site_ids:
            _fail(f"purchases.{i}.site", f"unknown site {option.site!r} (known: {sorted(site_ids)})")
        if option.machine not in machine_ids:
            _fail(f"purchases.{i}.machine", f"unknown machine {option.machine!r} (known: {sorted(machine_ids)})")
    for i, offer in enumerate(fleet.lease_offers):
        if offer.start_by is not None and offer.start_by < fleet.horizon.start:
            _fail(f"lease_offers.{i}.start_by", f"{offer.start_by} is before the horizon's start {fleet.horizon.start}")
        for j, site_id in enumerate(offer.sites):
            if site_id not in site_ids:
                _fail(f"lease_offers.{i}.sites.{j}", f"unknown site {site_id!r}")
            elif fleet.site(site_id).ai is None:
                _fail(f"lease_offers.{i}.sites.{j}", f"site {site_id!r} is not AI-ready (it has no `ai` section)")


def _check_firm_capacity(fleet: Fleet) -> None:
    """AI load is firm, so the smallest AI block a site commits to must fit its grid capacity."""
    for i, site in enumerate(fleet.sites):
        if site.ai is None:
            continue
        firm_kw = site.ai.min_mw * KW_PER_MW * site.pue_ai
        if firm_kw > site.capacity_mw * KW_PER_MW + 1e-9:
            _fail(
                f"sites.{i}.ai.min_mw",
                f"firm AI load {site.ai.min_mw} MW x PUE {site.pue_ai} exceeds capacity_mw {site.capacity_mw}",
            )


def lease_months(days: float) -> float:
    return days / DAYS_PER_MONTH


def parse_fleet(data: dict[str, Any]) -> Fleet:
    try:
        return Fleet.model_validate(data)
    except ValidationError as exc:
        raise FleetError(_violations(exc)) from None


def with_overrides(fleet: Fleet, patch: dict[str, dict[str, Any]]) -> Fleet:
    """A copy of the fleet with some settings sections patched, validated like the file itself."""
    data = fleet.model_dump(mode="json")
    for section, values in patch.items():
        data[section] = {**(data.get(section) or {}), **values}
    return parse_fleet(data)


class _FleetLoader(yaml.SafeLoader):
    """YAML without implicit dates: `start: 2026-13-01` reaches pydantic as text, which names the field."""


_FleetLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_fleet(path: str | Path) -> Fleet:
    """Read a fleet from YAML or JSON; errors name the file, the field path and the bad value."""
    path = Path(path)
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_FleetLoader)  # noqa: S506
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise FleetError([("<file>", f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}")]) from None
    if not isinstance(data, dict):
        raise FleetError([("<root>", f"{path}: expected a mapping at the top level")])
    return parse_fleet(data)


def _violations(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        if ": " in msg and not err["loc"]:
            path, msg = msg.split(": ", 1)  # root validators carry their path in the message
        if "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict | list):
            if f"got {err['input']}" not in msg and f"got {err['input']!r}" not in msg:  # never "got 5 (got 5)"
                msg = f"{msg} (got {err['input']!r})"
        out.append((path, msg))
    return out


def fleet_json_schema() -> dict[str, Any]:
    return Fleet.model_json_schema()
