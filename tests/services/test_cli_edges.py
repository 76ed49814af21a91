"""Clean edges of the command line: one line per failure, ids in paths, nothing cut, options anywhere."""

import io
import json

import pytest
from rich.console import Console

from optimizer.allocation import Allocation, Mode
from optimizer.fleet import parse_fleet
from optimizer.ties import break_ties
from services.cli import main
from services.messages import id_path, tidy
from services.tables import emit, new_table
from tests.conftest import EXAMPLES, small_fleet_data

TINY = (EXAMPLES / "tiny.yaml").read_text()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("site: texas, machine: s21", "site: nowhere, machine: s21"),
            "rack_groups[texas-s21].site: unknown site 'nowhere'",
        ),
        (("start: 2026-12-01", "start: 2026-13-01"), "horizon.start: "),
        (("step_hours: 1}", "step_hours: 5}"), "horizon.step_hours: must be one of (1, 2, 3, 4, 6, 8, 12, 24), got 5"),
        (
            ("capacity_mw: 5\n", "capacity_mw: -5\n"),
            "sites[hydro].capacity_mw: Input should be greater than 0 (got -5)",
        ),
        (("sites: [texas]", "sites: [texas, hydro]"), "lease_offers[neocloud].sites[1]: site 'hydro' is not AI-ready"),
    ],
)
def test_bad_fleet_is_one_line_naming_the_id(tmp_path, capsys, edit, expected):
    fleet = tmp_path / "bad.yaml"
    fleet.write_text(TINY.replace(*edit))
    assert main(["plan", str(fleet), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert expected in line and str(fleet) in line
    assert "got 5 (got 5)" not in line


def test_missing_directory_and_unwritable_out_fail_before_any_work(tmp_path, capsys, monkeypatch):
    import solvers.ray_pool

    def no_ray(*_a, **_k):  # the checks come first: Ray is never started
        raise AssertionError("work started")

    monkeypatch.setattr(solvers.ray_pool, "ensure_ray", no_ray)
    assert main(["plan", str(tmp_path / "nope.yaml")]) == 2
    assert _one_error_line(capsys) == f"error: {tmp_path / 'nope.yaml'}: no such fleet file"
    assert main(["plan", str(tmp_path)]) == 2
    assert "is a directory, expected a fleet file" in _one_error_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["plan", str(EXAMPLES / "tiny.yaml"), "--out", str(blocker / "out")]) == 2
    assert _one_error_line(capsys).startswith(f"error: --out {blocker / 'out'}: not writable")
    assert main(["plan", str(EXAMPLES / "tiny.yaml"), "--out", str(blocker)]) == 2
    assert "exists and is not a directory" in _one_error_line(capsys)
    assert main(["diff", str(blocker), str(blocker)]) == 2
    assert "not valid JSON" in _one_error_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="no such fleet file"):
        main(["plan", str(tmp_path / "nope.yaml"), "--debug"])
    with pytest.raises(Exception, match="no such fleet file"):
        main(["--debug", "plan", str(tmp_path / "nope.yaml")])


def test_client_options_before_or_after_the_call(capsys):
    from services.cli import _command_parser

    parser = _command_parser()
    after = parser.parse_args(["client", "optimize", "examples/tiny.yaml", "--target", "h:1", "--format", "json"])
    before = parser.parse_args(["client", "--target", "h:1", "--format", "json", "optimize", "examples/tiny.yaml"])
    default = parser.parse_args(["client", "list"])
    assert (after.target, after.format) == (before.target, before.format) == ("h:1", "json")
    assert (default.target, default.format, default.debug) == (None, "table", False)
    for call in (["list"], ["watch", "j"], ["get", "j"], ["cancel", "j"], ["dispatch", "p"], ["health"]):
        assert parser.parse_args(["client", *call, "--format", "csv", "--timeout", "3"]).format == "csv"


def test_unreachable_server_is_one_line(capsys):
    assert main(["client", "list", "--target", "127.0.0.1:1", "--timeout", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("UNAVAILABLE")


def test_tables_never_cut_ids():
    long_ids = ["nd-s19-hall-a-row-17-very-long-id", "nd-s19-hall-b-row-18-very-long-id"]
    narrow = Console(file=io.StringIO(), width=40)
    table = new_table("t", ("group", "value"), ("group",))
    for gid in long_ids:
        table.add_row(gid, "6,693,123")
    narrow.print(table)
    text = narrow.file.getvalue()
    assert "…" not in text
    assert "6,693,123" in text
    piped = io.StringIO()
    from services.tables import output_console

    emit([{"group": g, "value": 6693123.0} for g in long_ids], "table", "t", output_console(piped))
    assert all(g in piped.getvalue() for g in long_ids) and "6,693,123.00" in piped.getvalue()


def test_emit_json_and_csv(capsys):
    rows = [{"job_id": "a" * 40, "state": "queued"}]
    emit(rows, "json")
    assert json.loads(capsys.readouterr().out) == rows
    emit(rows, "csv")
    assert capsys.readouterr().out == f"job_id,state\n{'a' * 40},queued\n"


def test_id_paths_and_tidy():
    data = {"rack_groups": [{"id": "a"}, {"id": "tx-s21"}], "lease_offers": [{"id": "o", "sites": ["x", "y"]}]}
    assert id_path("rack_groups.1.site", data) == "rack_groups[tx-s21].site"
    assert id_path("lease_offers.0.sites.1", data) == "lease_offers[o].sites[1]"
    assert id_path("rack_groups.7.site", data) == "rack_groups[7].site"
    assert tidy("must be 1-12, got 5 (got 5)") == "must be 1-12, got 5"
    assert tidy("relaxing the the commitments") == "relaxing the commitments"


def test_ties_between_identical_groups_are_dealt_in_fleet_order():
    data = small_fleet_data()
    twin = dict(data["rack_groups"][0], id="f-old-2")
    data["rack_groups"].insert(1, twin)
    fleet = parse_fleet(data)
    racks = {g.id: {Mode.MINE: g.racks, Mode.AI: 0, Mode.IDLE: 0} for g in fleet.rack_groups}
    racks["f-old"] = {Mode.MINE: 1, Mode.AI: 0, Mode.IDLE: 3}  # the solver's arbitrary split of 5 mining racks
    racks["f-old-2"] = {Mode.MINE: 4, Mode.AI: 0, Mode.IDLE: 0}
    canonical = break_ties(fleet, Allocation(racks))
    assert canonical.lifecycles["f-old"] == {"mine": 4}
    assert canonical.lifecycles["f-old-2"] == {"mine": 1, "idle": 3}
    assert canonical.racks["s-old"] == Allocation(racks).racks["s-old"]  # a different site: never pooled


def test_infeasible_plan_says_by_how_much(tiny_fleet_data):
    from optimizer.economics import group_economics
    from optimizer.scenarios import generate_scenarios
    from solvers.diagnose import Commitments, InfeasibleConstraintError
    from solvers.planner import solve_allocation

    tiny_fleet_data["capital_budget_usd"] = 1_000_000
    fleet = parse_fleet(tiny_fleet_data)
    economics = group_economics(fleet, generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(2), 7))
    with pytest.raises(InfeasibleConstraintError) as err:
        solve_allocation(
            fleet, economics, fleet.risk, fleet.solver, commitments=Commitments(accept_offers=("neocloud",))
        )
    message = str(err.value)
    # signing neocloud needs its 1 MW minimum: $0.5M fixed + $2M/MW x 1 MW = $2.5M of capex against a $1M budget
    assert "capital_budget: needs $2.5M, budget $1.0M" in message
    assert "offer_min[neocloud]: short by 1.00 MW" in message
    from services.errors import infeasible

    assert not any("the the" in v.description for v in infeasible(err.value).constraint_violations)
