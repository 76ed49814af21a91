"""plan.xlsx: one sheet per table of the plan, the same rows and numbers as the CSVs.

Numbers are written as numbers (full precision, a display format on top), so a sum in Excel matches
a sum over the CSV. A first "summary" sheet holds the profit figures and the solver's status. Each
sheet has a bold header row, columns sized to their text and the header row and first column frozen.

Written directly as SpreadsheetML (ECMA-376: a zip of a few XML parts, strings inline in the cells)
rather than through openpyxl: importing openpyxl (its charts, drawings and mimetypes tables) and
writing nine small tables through it took ~0.12 s of a ~1 s `hashpivot plan` of a tiny fleet
(docs/pipeline.md, start-up). openpyxl and Excel read the file.
"""

from __future__ import annotations

import math
import numbers
import re
import zipfile
from enum import Enum
from pathlib import Path

from optimizer.plan_result import PlanResult

MAX_COLUMN_WIDTH = 48
MAX_SHEET_TITLE = 31  # Excel's limit on a sheet name

# cellXfs of styles.xml, by position: plain, bold (header row), numFmtId 4 = built-in "#,##0.00" (floats)
_PLAIN, _BOLD, _AMOUNT = range(3)
# characters XML 1.0 cannot hold at all (control characters but tab, newline, carriage return): dropped
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PACKAGE_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'

_STYLES = (
    f'{_HEAD}<styleSheet xmlns="{_MAIN}">'
    '<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>'
    '<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>'
    '<fills count="2"><fill><patternFill patternType="none"/></fill>'
    '<fill><patternFill patternType="gray125"/></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="3"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
    '<xf numFmtId="4" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/></cellXfs>'
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>"
)


def _escape(text: str) -> str:
    """Text as XML character data or attribute value (xml.sax.saxutils.escape imports urllib: 10 ms)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _value(value):
    """The cell's value: a number or bool as such, anything else (and a non-finite float) as text."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, dict | list | tuple):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # Excel has no inf/nan
    return value


def column_letter(index: int) -> str:
    """Excel's name of the 1-based column `index`: 1 -> A, 26 -> Z, 27 -> AA."""
    letters = ""
    while index > 0:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _cell(ref: str, value, style: int = _PLAIN) -> str:
    value = _value(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return f'<c r="{ref}" t="b"><v>{int(value)}</v></c>'
    if isinstance(value, numbers.Integral):
        return f'<c r="{ref}"><v>{int(value)}</v></c>'
    if isinstance(value, numbers.Real):
        return f'<c r="{ref}" s="{_AMOUNT}"><v>{float(value)!r}</v></c>'
    text = _escape(_ILLEGAL_XML.sub("", str(value)))
    space = ' xml:space="preserve"' if text != text.strip() else ""
    styled = f' s="{style}"' if style != _PLAIN else ""
    return f'<c r="{ref}" t="inlineStr"{styled}><is><t{space}>{text}</t></is></c>'


def _sheet_xml(rows: list[dict]) -> str:
    header = list(rows[0]) if rows else []
    letters = [column_letter(j) for j in range(1, len(header) + 1)]
    cols = "".join(
        f'<col min="{j}" max="{j}" width="{_width(name, rows)}" customWidth="1"/>'
        for j, name in enumerate(header, start=1)
    )
    head = "".join(_cell(f"{c}1", name, _BOLD) for c, name in zip(letters, header, strict=True))
    lines = [f'<row r="1">{head}</row>']
    for i, row in enumerate(rows, start=2):
        cells = "".join(_cell(f"{c}{i}", row[name]) for c, name in zip(letters, header, strict=True))
        lines.append(f'<row r="{i}">{cells}</row>')
    frozen = (
        '<sheetViews><sheetView workbookViewId="0"><pane xSplit="1" ySplit="1" topLeftCell="B2" '
        'activePane="bottomRight" state="frozen"/><selection pane="bottomRight" activeCell="B2" sqref="B2"/>'
        "</sheetView></sheetViews>"
    )
    return (
        f'{_HEAD}<worksheet xmlns="{_MAIN}">{frozen}{f"<cols>{cols}</cols>" if cols else ""}'
        f"<sheetData>{''.join(lines)}</sheetData></worksheet>"
    )


def _width(name: str, rows: list[dict]) -> int:
    return min(max([len(str(name)), *(len(f"{_value(r[name])}") for r in rows)]) + 2, MAX_COLUMN_WIDTH)


def _package_parts(titles: list[str]) -> dict[str, str]:
    """Every part but the sheets: content types, relationships, the workbook listing the sheets, styles."""
    n = len(titles)
    sheets_types = "".join(
        f'<Override PartName="/xl/worksheets/sheet{k}.xml" ContentType="{_TYPE}.worksheet+xml"/>'
        for k in range(1, n + 1)
    )
    sheet_rels = "".join(
        f'<Relationship Id="rId{k}" Type="{_REL}/worksheet" Target="worksheets/sheet{k}.xml"/>'
        for k in range(1, n + 1)
    )
    sheets = "".join(
        f'<sheet name="{_escape(title)}" sheetId="{k}" r:id="rId{k}"/>'
        for k, title in enumerate(titles, start=1)
    )
    return {
        "[Content_Types].xml": (
            f'{_HEAD}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{_TYPE}.sheet.main+xml"/>'
            f'<Override PartName="/xl/styles.xml" ContentType="{_TYPE}.styles+xml"/>{sheets_types}</Types>'
        ),
        "_rels/.rels": (
            f'{_HEAD}<Relationships xmlns="{_PACKAGE_REL}">'
            f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'{_HEAD}<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets>{sheets}</sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            f'{_HEAD}<Relationships xmlns="{_PACKAGE_REL}">{sheet_rels}'
            f'<Relationship Id="rId{n + 1}" Type="{_REL}/styles" Target="styles.xml"/></Relationships>'
        ),
        "xl/styles.xml": _STYLES,
    }


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
    sheets = ({"summary": summary_rows(plan)} if plan is not None else {}) | tables
    titles = [name[:MAX_SHEET_TITLE] for name in sheets]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        for name, text in _package_parts(titles).items():
            book.writestr(name, text)
        for k, rows in enumerate(sheets.values(), start=1):
            book.writestr(f"xl/worksheets/sheet{k}.xml", _sheet_xml(rows))
    return path
