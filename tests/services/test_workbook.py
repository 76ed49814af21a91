"""plan.xlsx is written as SpreadsheetML directly (services/workbook.py): openpyxl, as Excel, reads back the
same values, types and layout."""

from __future__ import annotations

from openpyxl import load_workbook

from services.workbook import column_letter, write_workbook


def test_column_letters_follow_excel():
    assert [column_letter(j) for j in (1, 2, 26, 27, 52, 53, 702, 703)] == [
        "A", "B", "Z", "AA", "AZ", "BA", "ZZ", "AAA"
    ]


def test_cells_keep_their_types_values_and_layout(tmp_path):
    rows = [
        {"group": "g-1", "racks": 12, "value_usd": 1234.5678, "convertible": True, "note": None, "terms": {"a": 1}},
        {"group": " <b>&\x01", "racks": -3, "value_usd": float("inf"), "convertible": False, "note": "x", "terms": []},
    ]
    long_name = "a_table_name_longer_than_31_characters"
    path = write_workbook(tmp_path / "plan.xlsx", {"allocation": rows, "empty": [], long_name: rows[:1]})
    book = load_workbook(path)
    assert book.sheetnames == ["allocation", "empty", long_name[:31]]
    sheet = book["allocation"]
    values = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert values[0] == ["group", "racks", "value_usd", "convertible", "note", "terms"]
    assert values[1] == ["g-1", 12, 1234.5678, True, None, "{'a': 1}"]
    # non-finite floats are text (Excel has no inf); XML's illegal control characters are dropped
    assert values[2] == [" <b>&", -3, "inf", False, "x", "[]"]
    assert all(cell.font.b for cell in sheet[1])
    assert sheet["C2"].number_format == "#,##0.00" and sheet["B2"].number_format == "General"
    assert sheet.freeze_panes == "B2"
    assert sheet.column_dimensions["A"].width == len(" <b>&\x01") + 2  # the widest text, header included
    assert sheet.column_dimensions["C"].width == len("1234.5678") + 2
    assert list(book["empty"].iter_rows(values_only=True)) in ([], [()])
