"""Why no plan exists: relax one constraint family at a time and name the ones that matter.

A plan is infeasible when the planner's commitments (offers that must be signed, sites that must
convert) cannot be met together with the fleet's constraints. HiGHS only says "infeasible"; to say
which constraint, the model is re-solved as a pure feasibility problem with one constraint family
(a Pyomo Constraint component: site_capacity, ai_min_block, offer_min, capital_budget, ...)
switched off at a time, then one index of each guilty family at a time (which site, which offer).
A family whose removal alone restores feasibility is reported. It works on the MIP itself, not an
LP relaxation, so infeasibility from integrality (no whole number of racks fits an AI block) is
caught too. The compact model is small, so the dozen extra solves take well under a second on
fleets of the size the tests and examples use.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import pyomo.environ as pyo

from solvers.highs import InfeasiblePlanError, NoSolutionInTimeError, solve

# Human names of the constraint families of optimizer.formulation; others show their component name.
CONSTRAINT_LABELS = {
    "rack_count": "rack count",
    "site_capacity": "site capacity",
    "ai_min_block": "AI minimum block",
    "ai_max": "AI maximum",
    "lease_fits_conversion": "leased MW within converted MW",
    "offer_min": "offer minimum",
    "offer_max": "offer maximum",
    "capital_budget": "capital budget",
}
COMMITMENTS = "commitments"  # the pseudo-family of variables the planner fixed

CHECK_TIME_LIMIT_S = 5.0  # per feasibility re-solve; one that times out counts as "not shown feasible"
MAX_INDEX_CHECKS = 50  # per family: beyond this, name the family without its indices


@dataclass(frozen=True)
class Commitments:
    """Decisions the planner fixes before the solve: the what-if "we sign this deal"."""

    accept_offers: tuple[str, ...] = ()
    convert_sites: tuple[str, ...] = ()


def apply_commitments(model: pyo.ConcreteModel, commitments: Commitments) -> None:
    """Fix the acceptance and conversion binaries of the compact model to 1."""
    for offer in commitments.accept_offers:
        model.accept[offer].fix(1)
    for site in commitments.convert_sites:
        model.convert[site].fix(1)


@dataclass(frozen=True)
class ConstraintCulprit:
    """A constraint family whose removal alone makes the plan feasible, and the indices that do."""

    family: str  # Pyomo component name, e.g. "site_capacity"; "commitments" for fixed decisions
    label: str  # in words, e.g. "site capacity"
    indices: tuple[str, ...] = ()  # e.g. ("texas",): relaxing just these entries is enough
    amounts: tuple[str, ...] = ()  # by how much, e.g. ("capital_budget: needs $35.0M, budget $20.0M",)

    @property
    def subjects(self) -> list[str]:
        """What to relax: "site_capacity[texas]", "capital_budget", or a fixed variable "accept[colo]"."""
        if self.family == COMMITMENTS:
            return list(self.indices)
        return [f"{self.family}[{i}]" for i in self.indices] or [self.family]

    def describe(self) -> str:
        return f"{self.label} ({'; '.join(self.amounts or self.subjects)})"


class InfeasibleConstraintError(InfeasiblePlanError):
    """No plan exists; `culprits` name the constraints whose relaxation alone would allow one."""

    def __init__(self, message: str, culprits: tuple[ConstraintCulprit, ...] = ()):
        super().__init__(message)
        self.culprits = tuple(culprits)

    def __reduce__(self):  # keep `culprits` across processes (Ray pickles exceptions)
        return (type(self), (str(self), self.culprits))


def explain_infeasible(model: pyo.ConcreteModel) -> InfeasibleConstraintError:
    """The error to raise for an infeasible model, with the constraints at fault named."""
    culprits = diagnose_infeasible(model)
    if not culprits:
        return InfeasibleConstraintError(
            "no plan meets the constraints, and relaxing no single constraint family would allow one"
        )
    named = "; ".join(c.describe() for c in culprits)
    message = f"no plan meets the constraints; relaxing any one of these allows one: {named}"
    return InfeasibleConstraintError(message, tuple(culprits))


def diagnose_infeasible(model: pyo.ConcreteModel, time_limit_s: float = CHECK_TIME_LIMIT_S) -> list[ConstraintCulprit]:
    """Families (then indices) whose removal alone restores feasibility, in model order."""
    culprits = []
    with _feasibility_objective(model):
        for family in _first_stage_families(model):
            if not _feasible_without(model, [family], time_limit_s):
                continue
            indices: tuple[str, ...] = ()
            if family.is_indexed():
                keys = list(family.keys())
                if len(keys) == 1:
                    indices = (_label(keys[0]),)
                elif len(keys) <= MAX_INDEX_CHECKS:
                    indices = tuple(_label(k) for k in keys if _feasible_without(model, [family[k]], time_limit_s))
            label = CONSTRAINT_LABELS.get(family.local_name, family.local_name)
            members = [family[k] for k in family.keys() if _label(k) in indices] if family.is_indexed() else [family]
            amounts = tuple(a for a in (_amount(model, family.local_name, c, time_limit_s) for c in members) if a)
            culprits.append(ConstraintCulprit(family.local_name, label, indices, amounts))
        fixed = [v for v in model.component_data_objects(pyo.Var, descend_into=True) if v.fixed]
        if fixed and _feasible_unfixed(model, fixed, time_limit_s):
            culprits.append(ConstraintCulprit(COMMITMENTS, "commitments", tuple(v.name for v in fixed)))
    return culprits


# Families that define a variable from others rather than limit the plan: relaxing one only
# unties a definition (e.g. a site "converting" at none of its start options), never a real limit.
DEFINITIONS = frozenset({"one_start"})


def _label(index) -> str:
    """An index as a planner reads it: "spot", "spot,0" (site and start option or period)."""
    return ",".join(str(part) for part in index) if isinstance(index, tuple) else str(index)


# How a constraint family's numbers read: (scale from model units, unit formatter, name of the limit)
AMOUNT_UNITS = {
    "capital_budget": (1.0, lambda v: f"${v / 1e6:,.1f}M", "budget"),
    "site_capacity": (1e-3, lambda v: f"{v:,.2f} MW", "capacity"),  # the model counts kW
}
DEFAULT_UNIT = (1.0, lambda v: f"{v:,.2f} MW", "limit")


def _amount(model: pyo.ConcreteModel, family: str, constraint, time_limit_s: float) -> str:
    """ "capital_budget: needs $35.0M, budget $20.0M": the least the rest of the model needs of this constraint.

    With the constraint switched off, the body is minimised (an upper limit) or maximised (a lower one)
    over every other constraint: that optimum against the limit is by how much it is short.
    """
    if constraint.upper is not None and constraint.lower is not None:
        return ""
    upper = constraint.upper is not None
    limit = pyo.value(constraint.upper if upper else constraint.lower)
    objective = pyo.Objective(expr=constraint.body, sense=pyo.minimize if upper else pyo.maximize)
    model._amount_objective = objective
    model._feasibility_objective.deactivate()
    constraint.deactivate()
    try:
        solve(model, time_limit_s, mip_rel_gap=0.0)
        needed = pyo.value(constraint.body)
    except (NoSolutionInTimeError, InfeasiblePlanError):
        return ""
    finally:
        constraint.activate()
        model.del_component(model._amount_objective)
        model._feasibility_objective.activate()
    scale, fmt, noun = AMOUNT_UNITS.get(family, DEFAULT_UNIT)
    name = constraint.name
    if abs(limit) > 1e-9:
        return f"{name}: needs {fmt(needed * scale)}, {noun} {fmt(limit * scale)}"
    return f"{name}: short by {fmt(abs(needed - limit) * scale)}"


def _first_stage_families(model: pyo.ConcreteModel) -> list[pyo.Constraint]:
    """Active constraint families that are not per scenario: those define free profit variables
    (profit, CVaR shortfall, worst case) and relaxing them can never restore feasibility."""
    scenario_set = getattr(model, "S", None)
    return [
        c
        for c in model.component_objects(pyo.Constraint, active=True, descend_into=True)
        if not (c.is_indexed() and scenario_set is not None and c.index_set() is scenario_set)
        and c.local_name not in DEFINITIONS
    ]


@contextmanager
def _feasibility_objective(model: pyo.ConcreteModel):
    """Swap the objective for zero: any feasible point ends the solve."""
    objectives = list(model.component_data_objects(pyo.Objective, active=True))
    for objective in objectives:
        objective.deactivate()
    model._feasibility_objective = pyo.Objective(expr=0.0)
    try:
        yield
    finally:
        model.del_component(model._feasibility_objective)
        for objective in objectives:
            objective.activate()


def _feasible_without(model: pyo.ConcreteModel, constraints: Iterable, time_limit_s: float) -> bool:
    constraints = list(constraints)
    for c in constraints:
        c.deactivate()
    try:
        return _feasible(model, time_limit_s)
    finally:
        for c in constraints:
            c.activate()


def _feasible_unfixed(model: pyo.ConcreteModel, variables: list, time_limit_s: float) -> bool:
    values = [v.value for v in variables]
    for v in variables:
        v.unfix()
    try:
        return _feasible(model, time_limit_s)
    finally:
        for v, value in zip(variables, values, strict=True):
            v.fix(value)


def _feasible(model: pyo.ConcreteModel, time_limit_s: float) -> bool:
    try:
        solve(model, time_limit_s, mip_rel_gap=0.0)
    except NoSolutionInTimeError:
        return False
    except InfeasiblePlanError:
        return False
    return True
