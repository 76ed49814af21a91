"""Solve a Pyomo model with HiGHS (highspy) through a matrix hand-off.

Pyomo stays the modelling layer; the model reaches HiGHS as arrays: Pyomo's linear standard-form
compiler (`pyomo.repn.plugins.standard_form.LinearStandardFormCompiler`, mixed form: every row
keeps its sense, the objective its sense) gives the sparse constraint matrix, right-hand sides and
columns in one pass, and highspy's `passModel` takes the arrays (column-wise CSC) as they are.
(The compiler's scipy matrices are swapped for numpy ones: see `_compile`.)
The best solution found is written back into the Pyomo variables, so callers read the model as
after any Pyomo solve. This replaces the per-variable, per-constraint calls of Pyomo's HiGHS
interface, which cost as much as the solve itself on the bench cases (issue 13).

Imports of Pyomo's compiler, scipy and highspy happen on the first solve, not on import.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyomo.environ as pyo


class SolveError(RuntimeError):
    """Base of the ways a solve ends without a plan; each kind is a sibling, so catching one never catches another."""


class InfeasiblePlanError(SolveError):
    """No plan satisfies the constraints (a proof, not a timeout)."""


class NoSolutionInTimeError(SolveError):
    """The time limit hit before HiGHS found any plan: not a proof that none exists, so not infeasible."""


@dataclass(frozen=True)
class MipProgress:
    """What HiGHS knows mid-solve (callbacks): best objective found, proven bound, their gap."""

    incumbent_usd: float  # -inf (maximizing) until the first plan is found
    bound_usd: float  # +inf until the first bound
    mip_gap: float
    running_s: float


@dataclass(frozen=True)
class SolveOutcome:
    status: str  # optimal | time_limit | interrupted | other
    objective_usd: float
    bound_usd: float
    mip_gap: float  # relative gap between incumbent and bound, as HiGHS defines it
    wall_s: float


@dataclass(frozen=True)
class MatrixModel:
    """A linear (mixed-integer) model as HiGHS takes it: column-wise CSC matrix, bounds, costs."""

    sense: int  # 1 minimize, -1 maximize (Pyomo's and HiGHS's convention)
    offset: float
    cost: np.ndarray  # [n]
    col_lower: np.ndarray  # [n]
    col_upper: np.ndarray  # [n]
    integer: np.ndarray  # [n] bool
    row_lower: np.ndarray  # [m]
    row_upper: np.ndarray  # [m]
    a_start: np.ndarray  # [n + 1] int32
    a_index: np.ndarray  # [nnz] int32
    a_value: np.ndarray  # [nnz]
    columns: list  # [n] Pyomo VarData, in column order

    @property
    def n_cols(self) -> int:
        return len(self.cost)

    @property
    def n_rows(self) -> int:
        return len(self.row_lower)


def to_matrix(model: pyo.ConcreteModel) -> MatrixModel:
    """The active objective and constraints of `model` as arrays; fixed variables folded into the bounds."""
    from pyomo.common.errors import InfeasibleConstraintException

    try:
        form = _compile(model)
    except InfeasibleConstraintException as exc:  # a constraint left constant (all its variables fixed) fails
        raise InfeasiblePlanError(f"the plan is infeasible ({exc})") from None
    if len(form.objectives) != 1:
        raise ValueError(f"expected one active objective, found {len(form.objectives)}")
    columns = form.columns
    n = len(columns)
    lower, upper = np.empty(n), np.empty(n)
    integer = np.zeros(n, dtype=bool)
    for j, var in enumerate(columns):
        lb, ub = var.bounds
        lower[j] = -math.inf if lb is None else lb
        upper[j] = math.inf if ub is None else ub
        integer[j] = var.is_integer()
    kind = np.fromiter((row.bound_type for row in form.rows), dtype=np.int8, count=len(form.rows))
    rhs = np.asarray(form.rhs, dtype=float).reshape(-1)
    # mixed form: bound_type 0 is an equality, 1 an upper bound (<=), -1 a lower bound (>=)
    row_lower = np.where(kind <= 0, rhs, -math.inf)
    row_upper = np.where(kind >= 0, rhs, math.inf)
    a = form.A
    return MatrixModel(
        sense=int(form.objectives[0].sense),
        offset=float(np.asarray(form.c_offset).reshape(-1)[0]),
        cost=np.asarray(form.c.todense(), dtype=float).reshape(-1) if n else np.zeros(0),
        col_lower=lower,
        col_upper=upper,
        integer=integer,
        row_lower=row_lower,
        row_upper=row_upper,
        a_start=a.indptr.astype(np.int32),
        a_index=a.indices.astype(np.int32),
        a_value=a.data.astype(float),
        columns=columns,
    )


def _compile(model: pyo.ConcreteModel):
    """LinearStandardFormCompiler.write(model, mixed_form=True, set_sense=None), with numpy matrices.

    Pyomo's compiler reaches scipy through pyomo.common.dependencies, whose first use imports
    scipy.stats, scipy.integrate and scipy.spatial (~0.5 s, more than a tiny plan's whole solve);
    its matrix constructors are class attributes meant to be replaced ("so that others can change
    the hooks"). This subclass swaps them for `_Csc`, a numpy CSC with the few operations the
    compiler uses, and is otherwise Pyomo's compiler unchanged.
    """
    from pyomo.common.gc_manager import PauseGC
    from pyomo.repn.plugins.standard_form import LinearStandardFormCompiler, _LinearStandardFormCompiler_impl

    class NumpyCompiler(_LinearStandardFormCompiler_impl):
        _to_vector = np.fromiter
        _csc_matrix = _Csc
        _csr_matrix = None

        def __init__(self, config):  # the base would set scipy's constructors on the base class
            self.config = config

        def _create_csc(self, data, index, index_ptr, nnz, n_cols):
            return _Csc.from_rows(data, index, index_ptr, nnz, n_cols)

    config = LinearStandardFormCompiler.CONFIG(dict(mixed_form=True, set_sense=None))
    with PauseGC():
        return NumpyCompiler(config).write(model)


class _Csc:
    """Compressed sparse columns in numpy: what LinearStandardFormCompiler does with its matrices
    (column masks, products with a vector of fixed values, the three arrays), no more."""

    def __init__(self, arrays, shape):
        data, indices, indptr = arrays
        self.data = np.asarray(data, dtype=np.float64)
        self.indices = np.asarray(indices, dtype=np.int32)
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.shape = (int(shape[0]), int(shape[1]))

    @classmethod
    def from_rows(cls, data, index, index_ptr, nnz: int, n_cols: int) -> _Csc:
        """From the compiler's row-wise pieces (one linear representation per row, no repeated column)."""
        import itertools

        values = np.fromiter(itertools.chain.from_iterable(data), np.float64, nnz)
        cols = np.fromiter(itertools.chain.from_iterable(index), np.int32, nnz)
        row_ptr = np.asarray(index_ptr, dtype=np.int64)
        rows = np.repeat(np.arange(len(row_ptr) - 1, dtype=np.int32), np.diff(row_ptr))
        keep = values != 0
        values, cols, rows = values[keep], cols[keep], rows[keep]
        order = np.argsort(cols, kind="stable")  # by column; rows stay ascending within a column
        indptr = np.zeros(n_cols + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=n_cols), out=indptr[1:])
        return cls((values[order], rows[order], indptr), (len(row_ptr) - 1, n_cols))

    def tocsc(self) -> _Csc:
        return self

    def __getitem__(self, key) -> _Csc:
        rows, mask = key
        if rows != slice(None):
            raise IndexError("only column selections A[:, mask] are supported")
        mask = np.asarray(mask, dtype=bool)
        starts, ends = self.indptr[:-1][mask], self.indptr[1:][mask]
        lengths = ends - starts
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        take = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths) + np.repeat(starts, lengths)
        return _Csc((self.data[take], self.indices[take], indptr), (self.shape[0], len(lengths)))

    def __matmul__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        cols = np.repeat(np.arange(self.shape[1]), np.diff(self.indptr))
        out = np.zeros(self.shape[0])
        np.add.at(out, self.indices, self.data * x[cols])
        return out

    def todense(self) -> np.ndarray:
        dense = np.zeros(self.shape)
        cols = np.repeat(np.arange(self.shape[1]), np.diff(self.indptr))
        dense[self.indices, cols] = self.data
        return dense


def solve(
    model: pyo.ConcreteModel,
    time_limit_s: float,
    mip_rel_gap: float,
    threads: int = 1,
    on_progress: Callable[[MipProgress], None] | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> SolveOutcome:
    """Solve to the gap or the time limit and load the best solution found into the model.

    `on_progress` hears each improving solution and each MIP log line (incumbent and bound).
    `should_stop` is polled at HiGHS's interrupt callbacks: True stops the solve with the best plan
    so far (status "interrupted"), the in-process counterpart of killing a Ray worker (solvers/runs.py).
    """
    start = time.perf_counter()
    matrix = to_matrix(model)
    if matrix.n_cols == 0:  # every variable fixed and every row satisfied (the compiler checked): nothing to solve
        load_values(model, matrix, np.zeros(0))
        return SolveOutcome("optimal", matrix.offset, matrix.offset, 0.0, time.perf_counter() - start)
    highs = _load(matrix, time_limit_s, mip_rel_gap, threads, on_progress)
    if should_stop is not None:
        _subscribe_interrupt(highs, should_stop)
    highs.run()
    wall_s = time.perf_counter() - start
    return _outcome(highs, matrix, model, time_limit_s, wall_s)


def _load(
    matrix: MatrixModel,
    time_limit_s: float,
    mip_rel_gap: float,
    threads: int,
    on_progress: Callable[[MipProgress], None] | None,
):
    import highspy

    highs = _quiet_highs(highspy)
    # With a progress sink, HiGHS must log (its MIP logging callback fires per display line), but
    # to nowhere; without one, it stays silent.
    highs.setOptionValue("output_flag", on_progress is not None)
    highs.setOptionValue("log_to_console", False)
    highs.setOptionValue("time_limit", float(time_limit_s))
    highs.setOptionValue("mip_rel_gap", float(mip_rel_gap))
    highs.setOptionValue("threads", int(threads))
    integrality = np.where(matrix.integer, int(highspy.HighsVarType.kInteger), 0).astype(np.int32)
    status = highs.passModel(
        matrix.n_cols,
        matrix.n_rows,
        len(matrix.a_value),
        int(highspy.MatrixFormat.kColwise),
        matrix.sense,
        matrix.offset,
        matrix.cost,
        matrix.col_lower,
        matrix.col_upper,
        matrix.row_lower,
        matrix.row_upper,
        matrix.a_start,
        matrix.a_index,
        matrix.a_value,
        integrality,
    )
    if status == highspy.HighsStatus.kError:
        raise RuntimeError("HiGHS rejected the model (passModel)")
    if on_progress is not None:
        _subscribe_progress(highs, on_progress)
    return highs


def _quiet_highs(highspy):
    """highspy.Highs() without the banner HiGHS prints to stdout on construction (before any option
    can turn output off): fd 1 points at /dev/null for the constructor only. Pyomo's interface
    captured fd 1 for the whole solve."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        return highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _outcome(highs, matrix: MatrixModel, model: pyo.ConcreteModel, time_limit_s: float, wall_s: float) -> SolveOutcome:
    import highspy

    status = highs.getModelStatus()
    s = highspy.HighsModelStatus
    if status in (s.kInfeasible, s.kUnboundedOrInfeasible):
        name = "provenInfeasible" if status == s.kInfeasible else "infeasibleOrUnbounded"
        raise InfeasiblePlanError(f"the plan is infeasible ({name})")
    info = highs.getInfo()
    has_solution = info.primal_solution_status == 2  # 0 none, 1 infeasible, 2 feasible
    if not has_solution:
        if status == s.kTimeLimit:
            raise NoSolutionInTimeError(f"no plan found within the time limit of {time_limit_s:.3g} s")
        raise InfeasiblePlanError(f"no feasible plan found ({highs.modelStatusToString(status)})")
    load_values(model, matrix, np.asarray(highs.getSolution().col_value, dtype=float))
    objective = float(info.objective_function_value)
    if matrix.integer.any() and info.mip_node_count >= 0:
        bound = float(info.mip_dual_bound)
    elif status == s.kOptimal:
        bound = objective  # an LP solved to optimality: the bound is the optimum
    else:
        bound = math.inf * -matrix.sense  # no bound: +inf maximizing, -inf minimizing
    return SolveOutcome(
        status=_STATUS.get(status.name, "other") if hasattr(status, "name") else "other",
        objective_usd=objective,
        bound_usd=bound,
        mip_gap=relative_gap(objective, bound),
        wall_s=wall_s,
    )


_STATUS = {"kOptimal": "optimal", "kTimeLimit": "time_limit", "kInterrupt": "interrupted"}


def load_values(model: pyo.ConcreteModel, matrix: MatrixModel, values: np.ndarray) -> None:
    """Write the solution into the Pyomo variables; a free variable in no active row or objective
    (the compiler drops it) gets the value nearest zero within its bounds, as any solver would."""
    import pyomo.environ as pyo

    seen = set()
    for var, value in zip(matrix.columns, values.tolist(), strict=True):
        var.set_value(value, skip_validation=True)
        seen.add(id(var))
    for var in model.component_data_objects(pyo.Var, descend_into=True):
        if var.fixed or id(var) in seen:
            continue
        lb, ub = var.bounds
        var.set_value(
            min(max(0.0, -math.inf if lb is None else lb), math.inf if ub is None else ub), skip_validation=True
        )


def finite_or_none(value: float) -> float | None:
    """A solver figure as reported: None when unknown (an infinite bound or gap, NaN)."""
    return value if math.isfinite(value) else None


def relative_gap(objective: float, bound: float) -> float:
    """|bound - objective| / max(|objective|, 1e-9), HiGHS's definition; inf without a bound."""
    if not math.isfinite(bound):
        return math.inf
    return abs(bound - objective) / max(abs(objective), 1e-9)


def _subscribe_progress(highs: Any, on_progress: Callable[[MipProgress], None]) -> None:
    """Relay HiGHS's MIP callbacks (improving solution, log line) as MipProgress."""

    def relay(event) -> None:
        out = event.data_out
        try:
            on_progress(MipProgress(out.mip_primal_bound, out.mip_dual_bound, out.mip_gap, out.running_time))
        except Exception:  # noqa: BLE001 - a progress sink must never break the solve
            pass

    highs.cbMipImprovingSolution += relay
    highs.cbMipLogging += relay


def _subscribe_interrupt(highs: Any, should_stop: Callable[[], bool]) -> None:
    def poll(event) -> None:
        if should_stop():
            event.interrupt()

    highs.cbSimplexInterrupt += poll
    highs.cbIpmInterrupt += poll
    highs.cbMipInterrupt += poll
