"""Exact decomposition of the compact model: a small master MIP, the scenario work in Ray tasks.

The compact model (optimizer.formulation) has one profit row per scenario and, with CVaR, one
shortfall row per scenario; with coupled steps (curtailment events, demand-response calls) one
dispatch column per candidate rack and slot. Its size grows with the scenarios. Here:

- The master holds the first stage (`add_first_stage`, plus the scenario-independent AI shedding
  levels of `_add_shed_levels`: binaries `ai_over_cap` and `shed_kw`, shared by every scenario),
  an epigraph variable `eta` for the risk term and one `theta[w]` per scenario that has coupled
  steps; nothing else grows with the scenarios but the cuts. It also counts the converted racks per
  (site, start, rack kW) in redundant integers (`add_converted_rack_counts`) and runs without presolve,
  which would remove them: branching on a count closes the gap that near-identical groups leave open.
- Scenario profit is Z_w(y) = a_w . y + b_w + Q_w(y): a_w, b_w the linear part of `profit_def`
  (rack, purchase, lease and shedding values; first-stage PV; contract constant) and Q_w the
  coupled-step dispatch, the value of an LP in the run variables given y. Per slot that LP is a
  continuous knapsack (racks at most present[q, p]; mining <= cap - AI + shed; at a call,
  mining <= planned mining - committed DR), solved greedily with its dual (lambda on the binding
  row, mu_i = max(0, m_i - lambda e_i) on the racks bound). Weak duality makes
  Q_w(y') <= sum_j lambda_j rhs_j(y') + sum_i mu_i present_i(y') valid for every first stage y'
  (the dual is feasible whatever y'), tight at the y it came from: a multi-cut L-shaped
  (Benders) optimality cut theta_w <= g_w . y + h_w. Recourse is complete (running nothing is
  feasible), so no feasibility cuts.
- The risk term by cutting planes (Kunzi-Bay and Mayer 2006): CVaR_alpha(Z) = min over pi in
  {0 <= pi_w <= p_w / (1 - alpha), sum pi = 1} of sum_w pi_w Z_w; the vertex that attains it at
  the incumbent puts p_w / (1 - alpha) on the worst scenarios (the boundary atom split), so one
  cut eta <= sum_w pi_w (a_w . y + b_w + theta_w) per iteration. The worst case is the same with
  pi = the worst scenario. Expected value is linear: sum_w p_w a_w . y in the objective, no cut.
- Bounds: the master's bound (HiGHS's dual bound) is an upper bound of the optimum (the cuts
  over-estimate); every master solution is evaluated exactly by the scenario tasks, and the best
  objective found is the lower bound. The loop stops when their relative gap is within the
  tolerance, or at the deadline with the best plan and its certified gap.

Scenario work runs in Ray tasks over batches of `scenarios.batch_size` scenarios, one task per
task slot (a group of one node's batches), so a round costs a few task round trips, not
one per batch: the economics go to the object store once (`ray.put`), each batch's prepared data
(per-scenario coefficients, coupled slots) stays in the object store as one value yielded by its
group's preparation task (a streaming generator, so the batches are stored one by one), and later
tasks take it by reference. Results are combined in batch order, so the plan is the same for any
number of workers or nodes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from optimizer.economics import NO_SITE, GroupEconomics, economics_grid, max_ai_load_kw
from optimizer.fleet import Fleet, Objective, RiskSettings, SolveMethod, SolverSettings
from optimizer.lifecycles import PlanGrid
from solvers.economics_batches import EconomicsBatches, n_items
from solvers.highs import InfeasiblePlanError, MipProgress, NoSolutionInTimeError, SolveOutcome, relative_gap
from solvers.ray_pool import lazy_remote, running_in_process, spread_over_nodes

log = logging.getLogger(__name__)

KW_PER_MW = 1000.0
VIOLATION_TOL = 1e-7  # relative: a cut is added when the master over-estimates by more than this
MAX_ITERATIONS = 500
LP_ITERATIONS = 200  # phase 1: cutting rounds on the master's LP relaxation
# Phase 2 solves the master MIP to a loose relative gap while cuts still move it, then tightens: the
# master's dual bound is a valid upper bound at any gap, and its solutions only feed cuts and the
# lower bound, so early solves need not be proven. A master solved to 1e-6 on 1,000 rack groups took
# ~400 s under load (a knapsack over near-identical groups) and the next cut moved it anyway.
EARLY_MASTER_GAP = 1e-3
MASTER_GAP_SHRINK = 0.1  # the next master's gap: this share of the certified gap still open
# ...and the tolerance itself once the open gap is within this many tolerances: a master proven to an
# intermediate gap there is usually followed by one more full solve at the tolerance (HiGHS keeps no
# tree between solves), which on the 300-group events case cost ~100 s for nothing.
TIGHTEN_WITHIN = 100.0
# HiGHS's presolve substitutes the converted-rack counts (`add_converted_rack_counts`) out again (an integer
# column in one equality row), and with them the branching that closes the master's gap: on the 300-group
# events case (50 scenarios) the last master proved 1e-6 in 56 nodes without presolve, and stalled at 3.6e-6
# for 60 s with it (and without the counts, either way). The master is small, so presolve saves little.
MASTER_PRESOLVE = "off"

# `auto`: decomposition when the compact model's scenario part is large: 500 scenarios or more, or
# more than AUTO_THRESHOLD_NONZEROS nonzeros in its scenario rows (S x (rack lifecycles + purchases +
# lease terms) in the profit rows, plus 3 per coupled candidate rack). The compact model's build and
# solve grow with both (its CVaR adds a shortfall row per scenario, its branching works on all of
# them) while the master's do not. On bench/bench_scale.py (2 shared cores) the example fleet over
# one quarter solves monolithic in ~90 s at 2,000 scenarios and by decomposition in a few seconds;
# at 50 scenarios both take about a second or two. Below the rule, one MIP is the well-trodden path
# and costs no task overhead.
AUTO_MIN_SCENARIOS = 500
AUTO_THRESHOLD_NONZEROS = 200_000


def scenario_nonzeros(fleet: Fleet, economics: GroupEconomics) -> int:
    """Nonzeros of the compact model's scenario rows: S x first-stage columns in a profit row, 3 per coupled rack."""
    from optimizer.lifecycles import plan_grid

    grid = plan_grid(fleet)
    lifecycles = sum(len(options) for options in grid.lifecycles)
    leases = len(fleet.lease_offers) * max(1, len(fleet.sites))
    return economics.n_scenarios * (lifecycles + len(fleet.purchases) + leases) + 3 * n_items(economics)


def choose_method(fleet: Fleet, economics: GroupEconomics, method: SolveMethod | None = None) -> SolveMethod:
    """`monolithic` or `decomposition`; `auto` decomposes from AUTO_MIN_SCENARIOS scenarios or
    AUTO_THRESHOLD_NONZEROS scenario-row nonzeros (`scenario_nonzeros`)."""
    method = method or fleet.solver.method
    if method is not SolveMethod.AUTO:
        return method
    big = economics.n_scenarios >= AUTO_MIN_SCENARIOS or scenario_nonzeros(fleet, economics) > AUTO_THRESHOLD_NONZEROS
    return SolveMethod.DECOMPOSITION if big else SolveMethod.MONOLITHIC


# ---------------------------------------------------------------------------------------------
# Linear maps from master columns


@dataclass(frozen=True)
class Rows:
    """Sparse linear maps of the master columns y: row r = sum data[k] y[index[k]] + const[r]."""

    indptr: np.ndarray
    index: np.ndarray
    data: np.ndarray
    const: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.const)

    def row_of(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_rows), np.diff(self.indptr))

    def apply(self, y: np.ndarray) -> np.ndarray:
        return np.bincount(self.row_of(), self.data * y[self.index], minlength=self.n_rows) + self.const

    def combine(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[k, n] coefficients and [k] constants of sum_r weights[:, r] row_r, for k weight vectors."""
        weights = np.atleast_2d(weights)
        out = np.zeros((weights.shape[0], self.n_cols))
        rows = self.row_of()
        for c in range(weights.shape[0]):  # k is small (the scenarios of a batch)
            out[c] = np.bincount(self.index, self.data * weights[c, rows], minlength=self.n_cols)
        return out, weights @ self.const


def _rows(expressions: list, column_of: dict[int, int], n_cols: int) -> Rows:
    from pyomo.repn import generate_standard_repn

    indptr, index, data, const = [0], [], [], []
    for expr in expressions:
        if isinstance(expr, int | float):
            const.append(float(expr))
            indptr.append(len(index))
            continue
        repn = generate_standard_repn(expr, compute_values=True, quadratic=False)
        constant = float(repn.constant)
        for var, coef in zip(repn.linear_vars, repn.linear_coefs, strict=True):
            if var.fixed:
                constant += float(coef) * float(var.value)
            else:
                index.append(column_of[id(var)])
                data.append(float(coef))
        const.append(constant)
        indptr.append(len(index))
    return Rows(
        np.asarray(indptr, dtype=np.int64),
        np.asarray(index, dtype=np.int64),
        np.asarray(data, dtype=float),
        np.asarray(const, dtype=float),
        n_cols,
    )


@dataclass(frozen=True)
class Layout:
    """Master columns and the maps the scenario tasks need (plain arrays: no Pyomo in the tasks)."""

    n_cols: int
    c0: np.ndarray  # [n] first-stage PV per unit of each column (first_stage_usd)
    offset: float  # constant of first_stage_usd
    x_col: np.ndarray  # [G, L_max] column of x[g, l], -1 padding
    buy_col: np.ndarray  # [B]
    lease_keys: tuple  # (offer, site, option) in LEASES order
    lease_col: np.ndarray  # [len(lease_keys)]
    levels: tuple  # (site, cap kW, period) of the shedding levels
    shed_keys: tuple  # (site, cap, period, offer)
    shed_col: np.ndarray
    present: Rows  # row q * P + p: racks of profile q present in period p
    mining: Rows  # row n * P + p: planned mining kW of site n in p
    ai_load: Rows  # row n * P + p: AI load kW (0 rows for sites without AI)
    shed_total: Rows  # row per level: AI kW shed
    dr_col: np.ndarray  # [N] column of dr_mw, -1 none
    n_periods: int


def coupled_levels(fleet: Fleet, economics: GroupEconomics | EconomicsBatches) -> list[tuple[str, float, int]]:
    """The (site, cap kW, period) levels `add_coupled_dispatch` makes for these economics."""
    if isinstance(economics, EconomicsBatches):
        return economics.levels
    grid = economics_grid(fleet, economics)
    slot_k, slot_s = np.nonzero(economics.coupled_site != NO_SITE)
    if len(slot_k) == 0:
        return []
    site_n = economics.coupled_site[slot_k, slot_s]
    cap = economics.coupled_cap_kw[slot_k, slot_s]
    period = grid.timeline.period_of_step(economics.coupled_step[slot_k, slot_s])
    ai_sites = {s.id for s in fleet.sites if s.ai is not None}
    max_ai = {s.id: max_ai_load_kw(fleet, s) for s in fleet.sites}
    levels = set()
    for n, c, p in zip(site_n.tolist(), cap.tolist(), period.tolist(), strict=True):
        site = fleet.sites[n].id
        if site in ai_sites and math.isfinite(c) and c < max_ai[site]:
            levels.add((site, float(c), int(p)))
    return sorted(levels)


def build_master_model(fleet: Fleet, grid, levels: list):
    """The master's Pyomo model: first stage, shedding levels, objective first_stage_usd (for its coefficients)."""
    import pyomo.environ as pyo

    from optimizer.formulation import _add_shed_levels, add_first_stage

    model = pyo.ConcreteModel(name="hashpivot_master")
    add_first_stage(model, fleet, grid)
    _add_shed_levels(model, fleet, levels, {s.id: max_ai_load_kw(fleet, s) for s in fleet.sites})
    add_converted_rack_counts(model, fleet, grid)
    model.objective = pyo.Objective(expr=model.first_stage_usd, sense=pyo.maximize)
    return model


def converted_rack_classes(fleet: Fleet, grid) -> dict[tuple[str, int, float], list[tuple[int, int]]]:
    """(site, start option, rack kW) -> the (g, l) whose racks convert there at that start: the racks of
    one class weigh the same in the site's converted MW (`ai_mw`)."""
    classes: dict[tuple[str, int, float], list[tuple[int, int]]] = {}
    for g, options in enumerate(grid.lifecycles):
        group = fleet.rack_groups[g]
        for ell, option in enumerate(options):
            if option.conversion is not None:
                key = (group.site, int(option.conversion), float(fleet.rack_power_kw(group)))
                classes.setdefault(key, []).append((g, ell))
    return {key: members for key, members in classes.items() if len(members) > 1}


def add_converted_rack_counts(model, fleet: Fleet, grid) -> None:
    """Integer converted_racks[c] = sum of x over class c (`converted_rack_classes`): redundant (x is integer),
    but a branch on it moves every near-identical group at once. Without it the master's bound stalls: the LP
    converts exactly a lease's MW, a fractional rack, and branching on one group's x only moves that fraction
    to the next group at an unchanged bound (300 groups, events + DR: 3.6e-6 open after 885 s)."""
    import pyomo.environ as pyo

    classes = converted_rack_classes(fleet, grid)
    model.RACK_CLASSES = pyo.Set(initialize=range(len(classes)))
    members = list(classes.values())
    model.converted_racks = pyo.Var(model.RACK_CLASSES, domain=pyo.NonNegativeIntegers)
    model.converted_racks_def = pyo.Constraint(
        model.RACK_CLASSES, rule=lambda m, c: m.converted_racks[c] == sum(m.x[g, ell] for g, ell in members[c])
    )


def master_layout(model, fleet: Fleet, grid, matrix) -> tuple[Layout, list]:
    """Column maps of the compiled master; variables the compiler dropped are appended as columns."""
    import pyomo.environ as pyo

    columns = list(matrix.columns)
    column_of = {id(v): j for j, v in enumerate(columns)}

    def col(var) -> int:
        if id(var) not in column_of:
            column_of[id(var)] = len(columns)
            columns.append(var)
        return column_of[id(var)]

    width = max(len(options) for options in grid.lifecycles)
    x_col = np.full((len(grid.lifecycles), width), -1, dtype=np.int64)
    for g, ell in model.GL:
        x_col[g, ell] = col(model.x[g, ell])
    buy_col = np.array([col(model.buy[b]) for b in model.B], dtype=np.int64)
    lease_keys = tuple(model.LEASES)
    lease_col = np.array([col(model.lease_mw[key]) for key in lease_keys], dtype=np.int64)
    shed_keys = tuple(model.SHED)
    shed_col = np.array([col(model.shed_kw[key]) for key in shed_keys], dtype=np.int64)
    dr_col = np.array([col(model.dr_mw[s.id]) if s.id in model.DR_SITES else -1 for s in fleet.sites], dtype=np.int64)
    for var in model.component_data_objects(pyo.Var, descend_into=True):  # every variable is a column
        if not var.fixed:
            col(var)
    n = len(columns)
    periods = list(model.P)
    present = _rows([model.present[q, p] for q in model.Q for p in periods], column_of, n)
    mining = _rows([model.mining_kw[s.id, p] for s in fleet.sites for p in periods], column_of, n)
    ai = _rows(
        [model.ai_load_kw[s.id, p] if s.id in model.AI_SITES else 0.0 for s in fleet.sites for p in periods],
        column_of,
        n,
    )
    shed = _rows([model.shed_total_kw[level] for level in model.LEVELS], column_of, n)
    c0 = np.zeros(n)
    c0[: matrix.n_cols] = matrix.cost
    layout = Layout(
        n_cols=n,
        c0=c0,
        offset=matrix.offset,
        x_col=x_col,
        buy_col=buy_col,
        lease_keys=lease_keys,
        lease_col=lease_col,
        levels=tuple(model.LEVELS),
        shed_keys=shed_keys,
        shed_col=shed_col,
        present=present,
        mining=mining,
        ai_load=ai,
        shed_total=shed,
        dr_col=dr_col,
        n_periods=len(periods),
    )
    return layout, columns


# ---------------------------------------------------------------------------------------------
# Scenario batches (Ray tasks)


@dataclass
class Batch:
    """One batch of scenarios, prepared: Z_w(y) = a[w] . y + b[w] + Q_w(y)."""

    positions: np.ndarray  # [Sb] scenario positions in the run
    a: np.ndarray  # [Sb, n]
    b: np.ndarray  # [Sb]
    # coupled slots j (sorted by scenario) and their candidate racks i (sorted by slot, best margin per kW)
    slot_scen: np.ndarray  # [J] local scenario
    slot_cap: np.ndarray  # [J] cap kW (inf without an event)
    slot_ai_row: np.ndarray  # [J] ai_load row, -1 no AI at the site
    slot_level: np.ndarray  # [J] shedding level, -1 none
    slot_dr_row: np.ndarray  # [J] mining row if a DR call applies, else -1
    slot_dr_col: np.ndarray  # [J] dr_mw column for that call
    item_slot: np.ndarray  # [I]
    item_row: np.ndarray  # [I] present row q * P + p
    item_margin: np.ndarray  # [I] PV USD per rack running through the step
    item_kw: np.ndarray  # [I] meter kW per rack
    theta_upper: np.ndarray  # [Sb] upper bound of Q_w (every candidate at its most racks)
    coupled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # [Sb] has coupled racks


def prepare_batch(
    fleet: Fleet, economics: GroupEconomics, positions: np.ndarray, layout: Layout, grid: PlanGrid | None = None
) -> Batch:
    """Per-scenario coefficients of `profit_def` for some scenario columns (mirrors build_compact_model).
    `grid`: the economics' plan grid, when the caller has it (it is the same for every batch of a run)."""
    from optimizer.formulation import lease_power_pv_usd_per_mw
    from optimizer.lifecycles import lifecycle_values_usd, purchase_values_usd

    econ = economics.columns(positions)
    grid = grid or economics_grid(fleet, econ)
    n_scen = econ.n_scenarios
    a = np.repeat(layout.c0[None, :], n_scen, axis=0)
    rack_value = lifecycle_values_usd(fleet, grid, econ)
    valid = layout.x_col >= 0
    a[:, layout.x_col[valid]] += rack_value[valid].T
    if len(layout.buy_col):
        a[:, layout.buy_col] += purchase_values_usd(fleet, grid, econ).T
    lease_power = lease_power_pv_usd_per_mw(fleet, grid, econ)
    for key, j in zip(layout.lease_keys, layout.lease_col.tolist(), strict=True):
        if key in lease_power:
            a[:, j] += lease_power[key]
    b = layout.offset + econ.contract_pv_usd.sum(axis=0)
    batch = _coupled_part(fleet, grid, econ, layout, a)
    batch.positions = np.asarray(positions)
    batch.b = b
    return batch


def _coupled_part(fleet: Fleet, grid, econ: GroupEconomics, layout: Layout, a: np.ndarray) -> Batch:
    n_scen = econ.n_scenarios
    P = layout.n_periods
    slot_k, slot_s = np.nonzero(econ.coupled_site != NO_SITE)
    order = np.lexsort((slot_k, slot_s))
    slot_k, slot_s = slot_k[order], slot_s[order]
    slot_of = {(int(k), int(w)): j for j, (k, w) in enumerate(zip(slot_k, slot_s, strict=True))}
    site_n = econ.coupled_site[slot_k, slot_s].astype(np.int64)
    period = grid.timeline.period_of_step(econ.coupled_step[slot_k, slot_s]).astype(np.int64)
    cap = econ.coupled_cap_kw[slot_k, slot_s].astype(float)
    called = econ.coupled_dr_call[slot_k, slot_s].astype(bool)
    resale = econ.coupled_resale_usd_per_mwh[slot_k, slot_s]
    discount = econ.coupled_discount[slot_k, slot_s]
    ai_sites = {s.id for s in fleet.sites if s.ai is not None}
    has_ai = np.array([fleet.sites[n].id in ai_sites for n in site_n.tolist()], dtype=bool)
    level_index = {level: i for i, level in enumerate(layout.levels)}
    slot_level = np.array(
        [
            level_index.get((fleet.sites[n].id, float(c), int(p)), -1) if ai else -1
            for n, c, p, ai in zip(site_n.tolist(), cap.tolist(), period.tolist(), has_ai.tolist(), strict=True)
        ],
        dtype=np.int64,
    )
    # shedding cost per (scenario, shed column), as add_coupled_dispatch sums it
    shed_at = {}
    for i, (s, c, p, o) in enumerate(layout.shed_keys):
        shed_at.setdefault(level_index[(s, c, p)], []).append((o, int(layout.shed_col[i])))
    penalty = {o.id: o.sla_penalty_usd_per_mwh for o in fleet.lease_offers}
    step_mwh_per_kw = fleet.horizon.step_hours / KW_PER_MW
    for j in np.nonzero(slot_level >= 0)[0].tolist():
        site = fleet.sites[int(site_n[j])]
        lost = site.contract.price_usd_per_mwh - resale[j] if site.contract.resells else 0.0
        for o, col in shed_at.get(int(slot_level[j]), ()):
            a[slot_s[j], col] -= step_mwh_per_kw * (penalty[o] / site.pue_ai + lost) * discount[j]

    item_p, item_s = np.nonzero(econ.item_slot != NO_SITE)
    item_j = np.array(
        [slot_of[(int(k), int(w))] for k, w in zip(econ.item_slot[item_p, item_s], item_s, strict=True)],
        dtype=np.int64,
    )
    item_q = econ.item_group[item_p, item_s].astype(np.int64)
    margin = econ.item_hash_revenue_usd[item_p, item_s] - econ.item_power_cost_usd[item_p, item_s]
    item_margin = margin * discount[item_j] if len(item_j) else np.zeros(0)
    meter_kw = np.array([p.meter_kw for p in grid.profiles], dtype=float)
    max_racks = np.array([p.max_racks for p in grid.profiles], dtype=float)
    item_kw = meter_kw[item_q] if len(item_j) else np.zeros(0)
    order = np.lexsort((-item_margin / np.where(item_kw > 0, item_kw, 1.0), item_j)) if len(item_j) else item_j
    item_j, item_q, item_margin, item_kw = item_j[order], item_q[order], item_margin[order], item_kw[order]
    item_row = item_q * P + period[item_j] if len(item_j) else item_j
    # the compact model only has cap / DR rows for slots with candidate racks; others add nothing
    with_items = np.zeros(len(slot_k), dtype=bool)
    with_items[item_j] = True
    theta_upper = np.zeros(n_scen)
    if len(item_j):
        np.add.at(theta_upper, slot_s[item_j], np.maximum(item_margin, 0.0) * max_racks[item_q])
    coupled = np.zeros(n_scen, dtype=bool)
    coupled[slot_s[with_items]] = True
    site_rows = site_n * P + period
    dr_col = layout.dr_col[site_n] if len(site_n) else np.zeros(0, dtype=np.int64)
    return Batch(
        positions=np.zeros(0),
        a=a,
        b=np.zeros(0),
        slot_scen=slot_s.astype(np.int64),
        slot_cap=cap,
        slot_ai_row=np.where(has_ai, site_rows, -1),
        slot_level=slot_level,
        slot_dr_row=np.where(called & (dr_col >= 0), site_rows, -1),
        slot_dr_col=dr_col,
        item_slot=item_j,
        item_row=item_row,
        item_margin=item_margin,
        item_kw=item_kw,
        theta_upper=theta_upper,
        coupled=coupled,
    )


@dataclass(frozen=True)
class Evaluation:
    """A batch at a candidate: exact profits, coupled values, violated Benders cuts, the node it ran on."""

    profit: np.ndarray  # [Sb] Z_w(y)
    coupled_value: np.ndarray  # [Sb] Q_w(y)
    cut_scen: np.ndarray  # [C] local scenarios whose theta the master over-estimates
    cut_coef: np.ndarray  # [C, n]
    cut_const: np.ndarray  # [C]
    node: str


def dispatch_values(batch: Batch, layout: Layout, y: np.ndarray, want_duals: np.ndarray | None = None):
    """Q_w(y) per scenario by the greedy knapsack per slot; with `want_duals` ([Sb] bool), the
    dual cut (coefficients, constant) of those scenarios."""
    n_scen = len(batch.b)
    q_value = np.zeros(n_scen)
    if len(batch.item_slot) == 0:
        return q_value, None
    present = layout.present.apply(y)
    racks = np.maximum(present[batch.item_row], 0.0)
    load = racks * batch.item_kw
    n_slots = len(batch.slot_scen)
    cap_rhs = batch.slot_cap.copy()
    if np.isfinite(cap_rhs).any():
        ai = layout.ai_load.apply(y)
        shed = layout.shed_total.apply(y) if layout.shed_total.n_rows else np.zeros(0)
        ai_part = np.where(batch.slot_ai_row >= 0, ai[np.maximum(batch.slot_ai_row, 0)], 0.0)
        shed_part = np.where(batch.slot_level >= 0, shed[np.maximum(batch.slot_level, 0)] if len(shed) else 0.0, 0.0)
        cap_rhs = np.where(np.isfinite(cap_rhs), cap_rhs - ai_part + shed_part, np.inf)
    dr_rhs = np.full(n_slots, np.inf)
    has_dr = batch.slot_dr_row >= 0
    if has_dr.any():
        mining = layout.mining.apply(y)
        dr_rhs[has_dr] = mining[batch.slot_dr_row[has_dr]] - KW_PER_MW * y[batch.slot_dr_col[has_dr]]
    capacity = np.maximum(np.minimum(cap_rhs, dr_rhs), 0.0)

    slot = batch.item_slot
    total = np.cumsum(load)
    first = np.concatenate(([True], slot[1:] != slot[:-1]))
    start_of = (total - load)[first][np.cumsum(first) - 1]
    before = total - load - start_of
    run_kw = np.clip(capacity[slot] - before, 0.0, load)
    value = run_kw / np.where(batch.item_kw > 0, batch.item_kw, 1.0) * batch.item_margin
    np.add.at(q_value, batch.slot_scen[slot], value)
    if want_duals is None or not want_duals.any():
        return q_value, None

    ratio = batch.item_margin / np.where(batch.item_kw > 0, batch.item_kw, 1.0)
    short = (load > 0) & (run_kw < load - 1e-9 * np.maximum(load, 1.0))  # not fully run: the critical item
    lam = np.zeros(n_slots)
    critical = np.nonzero(short)[0]
    if len(critical):
        firsts = critical[np.concatenate(([True], slot[critical][1:] != slot[critical][:-1]))]
        lam[slot[firsts]] = np.maximum(ratio[firsts], 0.0)
    mu = np.maximum(batch.item_margin - lam[slot] * batch.item_kw, 0.0)
    on_cap = cap_rhs <= dr_rhs  # the dual goes to the binding row
    wanted = np.nonzero(want_duals)[0]
    local = {int(w): c for c, w in enumerate(wanted)}
    k = len(wanted)
    P = layout.n_periods
    w_present = np.zeros((k, layout.present.n_rows))
    w_mining = np.zeros((k, layout.mining.n_rows))
    w_ai = np.zeros((k, layout.ai_load.n_rows))
    w_shed = np.zeros((k, max(layout.shed_total.n_rows, 0)))
    const = np.zeros(k)
    coef = np.zeros((k, layout.n_cols))
    item_c = np.array([local.get(int(w), -1) for w in batch.slot_scen[slot].tolist()], dtype=np.int64)
    keep = item_c >= 0
    np.add.at(w_present, (item_c[keep], batch.item_row[keep]), mu[keep])
    slot_c = np.array([local.get(int(w), -1) for w in batch.slot_scen.tolist()], dtype=np.int64)
    for j in np.nonzero((slot_c >= 0) & (lam > 0))[0].tolist():
        c = slot_c[j]
        if on_cap[j]:
            const[c] += lam[j] * batch.slot_cap[j]
            if batch.slot_ai_row[j] >= 0:
                w_ai[c, batch.slot_ai_row[j]] -= lam[j]
            if batch.slot_level[j] >= 0:
                w_shed[c, batch.slot_level[j]] += lam[j]
        else:
            w_mining[c, batch.slot_dr_row[j]] += lam[j]
            coef[c, batch.slot_dr_col[j]] -= KW_PER_MW * lam[j]
    del P
    for rows, weights in (
        (layout.present, w_present),
        (layout.mining, w_mining),
        (layout.ai_load, w_ai),
        (layout.shed_total, w_shed),
    ):
        if rows.n_rows and weights.any():
            part, part_const = rows.combine(weights)
            coef += part
            const += part_const
    return q_value, (wanted, coef, const)


def _node_id() -> str:
    if running_in_process():
        return "in-process"
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        return "in-process"


@lazy_remote(num_cpus=1)
def _prepare_group(fleet: Fleet, layout: Layout, economics_refs: list, starts: list[int]):
    """The batches of a group prepared one after the other, each yielded as soon as it is done (a
    streaming generator task: each goes to the object store on its own). One task per group, not per
    batch: no round trip between batches, and the plan grid, the same for every batch of a run, is built
    once. The economics arrive as references inside a list, so they are fetched one batch at a time."""
    from solvers.ray_pool import get

    grid = None
    for ref, start in zip(economics_refs, starts, strict=True):
        economics = get(ref)
        grid = grid or economics_grid(fleet, economics)
        batch = prepare_batch(fleet, economics, np.arange(economics.n_scenarios), layout, grid)
        batch.positions = batch.positions + start  # scenarios start, start + 1, ... of the run
        yield batch


def evaluate_batch(batch: Batch, theta: np.ndarray | None, layout: Layout, y: np.ndarray) -> Evaluation:
    """Exact profits at y; Benders cuts for the scenarios whose master theta exceeds Q_w(y)."""
    q_value, _ = dispatch_values(batch, layout, y)
    profit = batch.a @ y + batch.b + q_value
    want = None
    if theta is not None:
        scale = np.maximum(np.abs(profit), 1.0)
        want = batch.coupled & (theta > q_value + VIOLATION_TOL * scale)
    cuts = dispatch_values(batch, layout, y, want)[1] if want is not None and want.any() else None
    if cuts is None:
        empty = np.zeros(0, dtype=np.int64)
        return Evaluation(profit, q_value, empty, np.zeros((0, len(y))), np.zeros(0), _node_id())
    wanted, coef, const = cuts
    return Evaluation(profit, q_value, wanted, coef, const, _node_id())


def aggregate_batch(batch: Batch, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """sum_w weights[w] a_w and sum_w weights[w] b_w over the batch."""
    return weights @ batch.a, float(weights @ batch.b)


def coupled_info(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Which scenarios of the batch have coupled racks, and their theta upper bounds."""
    return batch.coupled, batch.theta_upper


@lazy_remote(num_cpus=1)
def _over_batches(fn: Callable, batch_refs: list, per_batch: list[tuple], *shared) -> list:
    """fn(batch, *per_batch[i], *shared) for each batch of a group, in order: one task, one round trip,
    for many batches. The batches are read from the object store without a copy (numpy buffers)."""
    import ray

    return [fn(batch, *args, *shared) for batch, args in zip(ray.get(batch_refs), per_batch, strict=True)]


class _Pool:
    """Runs a task over the batches, in-process or on Ray with at most `workers` in flight; keeps refs."""

    def __init__(self, workers: int | None):
        self.local = running_in_process()
        self.workers = workers
        self.nodes: set[str] = set()
        self.placements: list | None = None  # per batch, once `prepare` has placed the batches
        self.batches: list = []  # the prepared batches: refs (Ray) or values (in-process)

    def put(self, value):
        if self.local:
            return value
        import ray

        return ray.put(value)

    def prepare(self, fleet, layout, economics_refs: list, starts: list[int]) -> None:
        """Prepare every batch (`_prepare_group`, one task per group of batches: `groups`) and keep each
        where it is: refs (Ray) or values (in-process), in batch order. Group g runs on its batches' node."""
        if self.local:
            self.batches = list(_prepare_group.fn(fleet, layout, economics_refs, starts))
            return
        self.placements = spread_over_nodes(len(economics_refs))
        groups = self.groups()
        generators = [
            _prepare_group.options(scheduling_strategy=placement).remote(
                fleet, layout, [economics_refs[i] for i in idx], [starts[i] for i in idx]
            )
            for placement, idx in groups
        ]
        # iterating a generator waits for each batch in turn: every batch is in the object store after this
        self.batches = _in_batch_order(groups, generators, len(economics_refs))

    def run(self, fn: Callable, per_batch: list[tuple], shared: tuple = ()) -> list:
        """fn(batch, *per_batch[i], *shared) for every prepared batch, results in batch order. On Ray, one
        task per group of batches (`groups`): a round costs a few task round trips, not one per batch."""
        if self.local:
            return [fn(batch, *args, *shared) for batch, args in zip(self.batches, per_batch, strict=True)]
        from solvers.ray_pool import fan_out

        groups = self.groups()
        results = fan_out(
            _over_batches,
            [(fn, [self.batches[i] for i in idx], [per_batch[i] for i in idx], *shared) for _, idx in groups],
            self.workers,
            placements=[placement for placement, _ in groups],
        )
        return _in_batch_order(groups, results, len(self.batches))

    def groups(self) -> list[tuple[object, list[int]]]:
        """(placement, batch indices): each node's batches in as many contiguous groups as it gets task slots
        (`workers`, or the cluster's CPUs, shared evenly over the nodes). Grouping changes no result."""
        import ray

        placements = self.placements or ["DEFAULT"] * len(self.batches)
        by_node: dict[object, tuple[object, list[int]]] = {}
        for i, placement in enumerate(placements):
            by_node.setdefault(getattr(placement, "node_id", placement), (placement, []))[1].append(i)
        slots = self.workers or int(ray.cluster_resources().get("CPU", 1))
        per_node = max(1, slots // len(by_node))
        return [
            (placement, chunk.tolist())
            for placement, indices in by_node.values()
            for chunk in np.array_split(np.asarray(indices), min(per_node, len(indices)))
        ]


def _in_batch_order(groups: list[tuple[object, list[int]]], per_group: list, n_batches: int) -> list:
    """Per-group results (each in its group's batch order) back in batch order: a node's batches need not be
    contiguous (spread_over_nodes alternates the nodes)."""
    out: list = [None] * n_batches
    for (_, idx), part in zip(groups, per_group, strict=True):
        for i, value in zip(idx, part, strict=True):
            out[i] = value
    return out


# ---------------------------------------------------------------------------------------------
# The master and the loop


@dataclass(frozen=True)
class DecompositionReport:
    iterations: int
    cuts_risk: int
    cuts_benders: int
    master_s: float
    scenario_s: float
    setup_s: float
    nodes: tuple[str, ...]
    history: tuple[tuple[float, float], ...]  # (lower, upper) per iteration


@dataclass(frozen=True)
class DecompositionResult:
    y: np.ndarray
    columns: list
    model: object  # the master's Pyomo model, solution loaded
    outcome: SolveOutcome
    report: DecompositionReport
    variables: int
    constraints: int


def _risk_weights(profit: np.ndarray, risk: RiskSettings, p: np.ndarray) -> np.ndarray:
    """The pi vertex of the risk term at these profits (CVaR tail weights, or the worst scenario)."""
    order = np.argsort(profit, kind="stable")
    pi = np.zeros(len(profit))
    if risk.objective is Objective.WORST:
        pi[order[0]] = 1.0
        return pi
    tail = 1.0 - risk.alpha
    w = p[order]
    taken = np.clip(tail - (np.cumsum(w) - w), 0.0, w)
    pi[order] = taken / tail
    return pi


def risk_value(profit: np.ndarray, risk: RiskSettings, p: np.ndarray) -> float:
    """The objective of the compact model at these scenario profits."""
    expected = float(p @ profit)
    if risk.objective is Objective.EXPECTED:
        return expected
    tail = float(_risk_weights(profit, risk, p) @ profit)
    if risk.objective is Objective.WORST:
        return tail
    return (1 - risk.weight) * expected + risk.weight * tail


def solve_decomposition(
    fleet: Fleet,
    economics: GroupEconomics | EconomicsBatches,
    risk: RiskSettings,
    solver: SolverSettings,
    time_limit_s: float,
    on_progress: Callable[[MipProgress], None] | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    commitments=None,
    should_stop: Callable[[], bool] | None = None,
) -> DecompositionResult:
    """Solve the compact model's problem exactly by decomposition; the plan is loaded into `result.model`."""
    import highspy

    from solvers.highs import _load, load_values, to_matrix

    start = time.perf_counter()
    deadline = start + time_limit_s
    if not isinstance(economics, EconomicsBatches):  # each batch put in the object store once
        economics = EconomicsBatches.split(fleet, economics, batch_size or fleet.scenarios.batch_size)
    grid = economics_grid(fleet, economics)
    levels = coupled_levels(fleet, economics)
    model = build_master_model(fleet, grid, levels)
    if commitments is not None:
        from solvers.diagnose import apply_commitments

        apply_commitments(model, commitments)
    matrix = to_matrix(model)
    layout, columns = master_layout(model, fleet, grid, matrix)
    n = layout.n_cols
    n_scen = economics.n_scenarios
    p = np.full(n_scen, 1.0 / n_scen)
    tol = max(float(solver.mip_rel_gap), 1e-9)

    pool = _Pool(workers)
    parts = [range(a, a + s.n_scenarios) for a, s in zip(economics.starts(), economics.summaries, strict=True)]
    layout_ref, fleet_ref = pool.put(layout), pool.put(fleet)
    scen_start = time.perf_counter()
    pool.prepare(fleet_ref, layout_ref, list(economics.refs), [r.start for r in parts])
    mean = pool.run(aggregate_batch, [(p[r.start : r.stop],) for r in parts])
    expected_coef = np.sum([m[0] for m in mean], axis=0)
    expected_const = float(sum(m[1] for m in mean))
    scenario_s = time.perf_counter() - scen_start
    # which scenarios have coupled racks, and their theta bounds (small arrays)
    info = pool.run(coupled_info, [() for _ in parts])
    coupled = np.concatenate([c for c, _ in info]) if info else np.zeros(0, dtype=bool)
    theta_upper = np.concatenate([u for _, u in info]) if info else np.zeros(0)
    theta_of = {int(w): i for i, w in enumerate(np.nonzero(coupled)[0])}

    # master: y, then eta (risk), then theta per coupled scenario
    highs = _load(matrix, max(deadline - time.perf_counter(), 1e-3), tol, solver.threads, None)
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("presolve", MASTER_PRESOLVE)
    inf = highspy.kHighsInf
    for var in columns[matrix.n_cols :]:  # columns the compiler dropped (in no row)
        lb, ub = (var.value, var.value) if var.fixed else var.bounds
        highs.addVar(-inf if lb is None else lb, inf if ub is None else ub)
        if var.is_integer():
            highs.changeColIntegrality(highs.getNumCol() - 1, highspy.HighsVarType.kInteger)
    weight_expected = (
        1.0
        if risk.objective is Objective.EXPECTED
        else (1.0 - risk.weight if risk.objective is Objective.CVAR else 0.0)
    )
    weight_risk = 1.0 - weight_expected
    highs.changeObjectiveSense(highspy.ObjSense.kMaximize)
    costs = weight_expected * expected_coef
    highs.changeColsCost(n, np.arange(n, dtype=np.int32), costs)
    highs.changeObjectiveOffset(weight_expected * expected_const)
    eta = None
    if weight_risk > 0:
        eta = highs.getNumCol()
        highs.addVar(-inf, inf)
        highs.changeColCost(eta, weight_risk)
    theta0 = highs.getNumCol()
    coupled_ids = np.nonzero(coupled)[0]
    for i, w in enumerate(coupled_ids.tolist()):
        highs.addVar(0.0, float(theta_upper[w]))
        highs.changeColCost(theta0 + i, weight_expected * p[w])
    if eta is not None:  # the mean is a vertex of the CVaR polytope: a first, valid cut
        _add_risk_cut(highs, eta, n, expected_coef, expected_const, p, theta_of, theta0)

    lower, upper = -math.inf, math.inf
    best_y = None
    history = []
    counts = {"risk": 1 if eta is not None else 0, "benders": 0}
    times = {"master": 0.0, "scenario": scenario_s}

    def run_master() -> tuple[np.ndarray, float]:
        highs.setOptionValue("time_limit", float(max(deadline - time.perf_counter(), 1e-3)))
        t0 = time.perf_counter()
        highs.run()
        times["master"] += time.perf_counter() - t0
        model_status = highs.getModelStatus()
        if model_status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
            raise InfeasiblePlanError("the plan is infeasible (decomposition master)")
        info = highs.getInfo()
        if info.primal_solution_status != 2:
            return None, math.inf
        solution = np.asarray(highs.getSolution().col_value, dtype=float)
        mip = info.mip_node_count >= 0
        bound = float(info.mip_dual_bound) if mip else float(info.objective_function_value)
        log.debug("master %.2f s, bound %.8g, %d rows", time.perf_counter() - t0, bound, highs.getNumRow())
        return solution, bound

    def evaluate_and_cut(solution: np.ndarray) -> tuple[np.ndarray, float, int]:
        """Exact profits at the master's y; add the violated Benders and risk cuts; (profit, value, cuts added)."""
        y = solution[:n]
        theta_full = np.zeros(n_scen)
        theta_full[coupled_ids] = solution[theta0 : theta0 + len(coupled_ids)]
        t0 = time.perf_counter()
        y_ref = pool.put(y)
        evaluations = pool.run(
            evaluate_batch,
            [(theta_full[r.start : r.stop] if len(coupled_ids) else None,) for r in parts],
            (layout_ref, y_ref),
        )
        times["scenario"] += time.perf_counter() - t0
        profit = np.concatenate([e.profit for e in evaluations])
        pool.nodes.update(e.node for e in evaluations)
        added = 0
        for e, r in zip(evaluations, parts, strict=True):  # batch order: the same cuts for any workers
            for c, w_local in enumerate(e.cut_scen.tolist()):
                w = r.start + int(w_local)
                _add_benders_cut(highs, theta0 + theta_of[w], n, e.cut_coef[c], float(e.cut_const[c]))
                added += 1
        counts["benders"] += added
        if eta is not None:
            pi = _risk_weights(profit, risk, p)
            master_cut = float(pi @ (profit - np.concatenate([e.coupled_value for e in evaluations]) + theta_full))
            if solution[eta] > master_cut + VIOLATION_TOL * max(abs(master_cut), 1.0):
                t0 = time.perf_counter()
                sums = pool.run(aggregate_batch, [(pi[r.start : r.stop],) for r in parts])
                times["scenario"] += time.perf_counter() - t0
                coef = np.sum([s[0] for s in sums], axis=0)
                const = float(sum(s[1] for s in sums))
                _add_risk_cut(highs, eta, n, coef, const, pi, theta_of, theta0)
                counts["risk"] += 1
                added += 1
        return profit, risk_value(profit, risk, p), added

    # Phase 1: cuts on the LP relaxation (cheap solves; the cuts stay valid for the MIP).
    integer_cols = np.nonzero(matrix.integer)[0].astype(np.int32)
    if len(integer_cols) and (len(coupled_ids) or eta is not None):
        highs.changeColsIntegrality(len(integer_cols), integer_cols, np.zeros(len(integer_cols), dtype=np.int32))
        for _ in range(LP_ITERATIONS):
            if deadline - time.perf_counter() <= 0:
                break
            solution, bound = run_master()
            if solution is None:
                break
            _, value, added = evaluate_and_cut(solution)
            if added == 0 or relative_gap(value, bound) <= tol:
                break
        highs.changeColsIntegrality(
            len(integer_cols),
            integer_cols,
            np.full(len(integer_cols), int(highspy.HighsVarType.kInteger), dtype=np.int32),
        )

    # Phase 2: the master MIP; every solution evaluated exactly (lower bound), its bound the upper.
    status = "optimal"
    iterations = 0
    master_gap = max(tol, EARLY_MASTER_GAP)
    for _ in range(MAX_ITERATIONS):
        iterations += 1
        remaining = deadline - time.perf_counter()
        if remaining <= 0 or (should_stop is not None and should_stop()):
            status = "time_limit" if remaining <= 0 else "interrupted"
            break
        if best_y is not None:
            _warm_start(highs, best_y, matrix.integer, n)
        highs.setOptionValue("mip_rel_gap", master_gap)
        solution, bound = run_master()
        if solution is None:
            status = "time_limit"
            break
        upper = min(upper, bound)
        profit, value, added = evaluate_and_cut(solution)
        if value > lower:
            lower, best_y = value, solution[:n]
        upper = max(upper, lower)
        history.append((lower, upper))
        gap = relative_gap(lower, upper)
        if on_progress is not None:
            try:
                on_progress(MipProgress(lower, upper, gap, time.perf_counter() - start))
            except Exception:  # noqa: BLE001 - a progress sink must never break the solve
                pass
        if gap <= tol or (added == 0 and master_gap <= tol):  # no cut: the master is exact at its solution
            break
        master_gap = next_master_gap(master_gap, gap, tol)
    else:
        status = "other"  # iteration limit: the plan carries its certified gap
    master_s, scenario_s = times["master"], times["scenario"]
    cuts_risk, cuts_benders = counts["risk"], counts["benders"]

    if best_y is None:
        raise NoSolutionInTimeError(f"no plan found within the time limit of {time_limit_s:.3g} s")
    gap = relative_gap(lower, upper)
    if status == "optimal" and gap > tol:  # the master stopped at the deadline with its own gap
        status = "time_limit" if time.perf_counter() >= deadline - 1e-3 else "other"
    y_all = np.zeros(len(columns))
    y_all[:n] = best_y
    load_values(model, _Columns(columns), y_all)
    wall_s = time.perf_counter() - start
    report = DecompositionReport(
        iterations=iterations,
        cuts_risk=cuts_risk,
        cuts_benders=cuts_benders,
        master_s=master_s,
        scenario_s=scenario_s,
        setup_s=scen_start - start,
        nodes=tuple(sorted(pool.nodes)),
        history=tuple(history),
    )
    return DecompositionResult(
        y=best_y,
        columns=columns,
        model=model,
        outcome=SolveOutcome(status=status, objective_usd=lower, bound_usd=upper, mip_gap=gap, wall_s=wall_s),
        report=report,
        variables=highs.getNumCol(),
        constraints=highs.getNumRow(),
    )


@dataclass(frozen=True)
class _Columns:
    """What load_values reads of a MatrixModel: the columns."""

    columns: list


def next_master_gap(master_gap: float, open_gap: float, tol: float) -> float:
    """The master's relative gap for the next iteration: a share of the certified gap still open, never
    looser than now nor tighter than the tolerance (so the last solves are proven to it); the tolerance
    once the open gap is within TIGHTEN_WITHIN of it."""
    if open_gap <= TIGHTEN_WITHIN * tol:
        return tol
    return max(tol, min(master_gap, MASTER_GAP_SHRINK * open_gap))


def _add_risk_cut(highs, eta: int, n: int, coef: np.ndarray, const: float, pi, theta_of: dict, theta0: int) -> None:
    """eta - coef . y - sum_w pi_w theta_w <= const."""
    nz = np.nonzero(coef)[0]
    index = [eta, *nz.tolist()]
    value = [1.0, *(-coef[nz]).tolist()]
    for w, i in theta_of.items():
        if pi[w] > 0:
            index.append(theta0 + i)
            value.append(-float(pi[w]))
    highs.addRow(-np.inf, const, len(index), np.asarray(index, dtype=np.int32), np.asarray(value))


def _add_benders_cut(highs, theta: int, n: int, coef: np.ndarray, const: float) -> None:
    """theta_w - coef . y <= const."""
    nz = np.nonzero(coef)[0]
    index = np.asarray([theta, *nz.tolist()], dtype=np.int32)
    value = np.asarray([1.0, *(-coef[nz]).tolist()])
    highs.addRow(-np.inf, const, len(index), index, value)


def _warm_start(highs, y: np.ndarray, integer: np.ndarray, n: int) -> None:
    """Offer the best plan so far to HiGHS (integer columns; it completes the continuous ones)."""
    try:
        cols = np.nonzero(integer)[0]
        cols = cols[cols < n]
        if len(cols):
            highs.setSolution(len(cols), cols.astype(np.int32), np.round(y[cols]))
    except Exception:  # noqa: BLE001 - a warm start is a hint only
        pass


def default_workers() -> int:
    return os.cpu_count() or 1
