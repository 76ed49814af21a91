"""plan.xlsx: one sheet per table of the plan, the same rows and numbers as the CSVs (openpyxl).

Numbers are written as numbers (full precision, a display format on top), so a sum in Excel matches
a sum over the CSV. A first "summary" sheet holds the profit figures and the solver's status.
"""

from __future__ import annotations

import math
from pathlib import Path

from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from optimizer.plan_result import PlanResult

MAX_COLUMN_WIDTH = 48


def _value(value):
    if isinstance(value, dict | list | tuple):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # Excel has no inf/nan
    return value


def _sheet(workbook: Workbook, title: str, rows: list[dict]) -> None:
    sheet = workbook.create_sheet(title=title[:31])
    header = list(rows[0]) if rows else []
    sheet.append(header)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in rows:
        sheet.append([_value(row[c]) for c in header])
    for j, name in enumerate(header, start=1):
        width = max([len(str(name)), *(len(f"{_value(r[name])}") for r in rows)]) + 2
        sheet.column_dimensions[get_column_letter(j)].width = min(width, MAX_COLUMN_WIDTH)
        for (cell,) in sheet.iter_rows(min_row=2, min_col=j, max_col=j):
            if isinstance(cell.value, float):
                cell.number_format = "#,##0.00"
    sheet.freeze_panes = "B2"


def summary_rows(plan: PlanResult) -> list[dict]:
    rows = [{"figure": f"profit {k}", "value": v} for k, v in plan.profit.items()]
    rows += [
        {"figure": "expected hashprice usd/PH/day", "value": plan.expected_hashprice_usd_per_ph_day},
        {"figure": "objective", "value": plan.objective},
        {"figure": "horizon days", "value": plan.horizon_days},
        {"figure": "solver status", "value": plan.solver.status},
        {"figure": "solver objective usd", "value": plan.solver.objective_usd},
        {"figure": "mip gap", "value": plan.solver.mip_gap},
    ]
    return rows


def write_workbook(path: Path, tables: dict[str, list[dict]], plan: PlanResult | None = None) -> Path:
    workbook = Workbook()
    workbook.remove(workbook.active)
    if plan is not None:
        _sheet(workbook, "summary", summary_rows(plan))
    for name, rows in tables.items():
        _sheet(workbook, name, rows)
    workbook.save(path)
    return path
