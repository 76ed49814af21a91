"""The robustness report: HTML with its charts, the terminal comparison, and the CLI flags."""

import base64
import json
import re

import numpy as np
import pytest
from rich.console import Console

from optimizer.allocation import Allocation, Mode, all_mining
from optimizer.economics import rack_margin_usd
from optimizer.fleet import parse_fleet
from optimizer.robustness import RobustnessSettings
from optimizer.scenarios import EVALUATION_STREAM, generate_scenarios
from services.cli import main
from services.report import print_robustness, run_matrix, write_report
from solvers.planner import plan_fleet
from solvers.robustness import assess_plan
from tests.fleets import EXAMPLES, small_fleet_data
from tests.solvers.test_robustness import hedge_fleet_data

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def hedge_run(ray_session):
    fleet = parse_fleet(hedge_fleet_data())
    plan, _ = plan_fleet(fleet)
    settings = RobustnessSettings(oos_scenarios=60, replications=2, wait_and_see_scenarios=10)
    run = assess_plan(fleet, plan, settings=settings)
    return fleet, plan.model_copy(update={"robustness": run.report}), run


def test_report_file_embeds_every_chart(hedge_run, tmp_path):
    fleet, plan, run = hedge_run
    paths = write_report(fleet, plan, run, tmp_path)
    html = (tmp_path / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 5  # profit distribution, allocation, two heat maps, scenario fan
    for uri in images:  # self-contained: every chart is a PNG inside the page
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == PNG_SIGNATURE
    for name in ("profit_distribution", "allocation_by_site", "heat_map_typical", "heat_map_stress", "scenario_fan"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
        assert tmp_path / f"{name}.png" in paths
    report = run.report
    for text in ("mean-value plan", "calculator rule", "all mining", "wait-and-see", "Mak-Morton-Wood"):
        assert text in html
    vss = f"${round(report.value_of_stochastic_solution_usd.estimate_usd):,}"
    assert vss in html  # the number the terminal prints is the number the page shows
    assert f"#{report.stress_scenario_index}" in html


def test_board_sections_hold_the_plan_numbers(hedge_run, tmp_path):
    from optimizer.rack_values import rack_values
    from services.board import board_context

    fleet, plan, run = hedge_run
    write_report(fleet, plan, run, tmp_path)
    html = (tmp_path / "report.html").read_text()
    for anchor in ('id="decision"', 'id="allocation"', 'id="pnl"', 'id="offers"', 'id="risk"', "Appendix", "fn-power"):
        assert anchor in html
    for site in plan.sites:
        assert f"${round(site.expected_profit_usd):,}" in html
    assert plan.conversions and 'id="conversions"' in html and 'id="timeline"' in html
    for c in plan.conversions:
        assert f"${round(c.project_npv_usd):,}" in html and c.ready_date in html
    for v in rack_values(fleet, plan):
        assert f"${round(v.mine_usd):,}" in html
        if v.ai_usd is not None:
            assert f"${round(v.ai_usd):,}".replace("$-", "-$") in html
    board = board_context(fleet, plan)
    assert f"Mine with {plan.totals()['mine']:,} of {fleet.total_racks:,} racks" in board["decision"]
    assert {o["offer"] for o in board["offers"]} == {o.id for o in fleet.lease_offers}
    for o in board["offers"]:
        assert o["why"]


def test_xlsx_holds_the_same_numbers_as_the_csvs(hedge_run, tmp_path):
    import csv

    from openpyxl import load_workbook

    from services.tables import write_plan_outputs

    fleet, plan, _ = hedge_run
    write_plan_outputs(plan, tmp_path, fleet)
    book = load_workbook(tmp_path / "plan.xlsx")
    assert book.sheetnames == [
        "summary",
        "allocation",
        "sites",
        "offers",
        "breakeven",
        "conversions",
        "years",
        "site_years",
        "timeline",
    ]
    for name in ("allocation", "sites", "offers", "breakeven"):
        with (tmp_path / f"{name}.csv").open() as handle:
            rows = list(csv.reader(handle))
        sheet = [[("" if c is None else c) for c in row] for row in book[name].iter_rows(values_only=True)]
        assert sheet[0] == rows[0]
        assert len(sheet) == len(rows)
        for csv_row, xl_row in zip(rows[1:], sheet[1:], strict=True):
            for text, cell in zip(csv_row, xl_row, strict=True):
                if isinstance(cell, bool) or not isinstance(cell, int | float):
                    assert str(cell) == text
                else:
                    assert cell == pytest.approx(float(text), rel=1e-14, abs=1e-9)  # Excel keeps 15 digits
    summary = {row[0]: row[1] for row in book["summary"].iter_rows(min_row=2, values_only=True)}
    assert summary["profit mean_usd"] == pytest.approx(plan.profit["mean_usd"], rel=1e-14)
    values = {r["group"]: r for r in csv.DictReader((tmp_path / "allocation.csv").open())}
    assert set(values) == {g.id for g in fleet.rack_groups} and "value_ai_usd_per_rack" in next(iter(values.values()))


def test_terminal_comparison_names_every_plan_and_measure(hedge_run):
    _, _, run = hedge_run
    console = Console(record=True, width=200)
    print_robustness(run.report, console)
    text = console.export_text()
    for label in ("stochastic (this plan)", "mean-value plan", "calculator rule", "all mining", "VSS", "EVPI"):
        assert label in text
    assert "optimality gap (MMW, 2 replications x 60 scenarios)" in text


def test_heat_map_rows_are_the_hourly_run_rule():
    fleet = parse_fleet(small_fleet_data(days=3))
    mining = all_mining(fleet)
    matrix = run_matrix(fleet, mining, 4, seed=9, stream=EVALUATION_STREAM)
    assert matrix.shape == (3, fleet.horizon.n_steps)
    scenario = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, [4], 9, EVALUATION_STREAM)
    for g in range(3):
        revenue, cost = rack_margin_usd(fleet, g, scenario)
        np.testing.assert_array_equal(matrix[g], (revenue[0] > cost[0]).astype(float))
    assert 0 < matrix[1].mean() < 1  # old machines on spot power curtail some hours, not all
    some_idle = Allocation({**mining.racks, "s-new": {Mode.MINE: 0, Mode.AI: 0, Mode.IDLE: 3}})
    assert np.isnan(run_matrix(fleet, some_idle, 4, seed=9, stream=EVALUATION_STREAM)[2]).all()


def test_cli_writes_report_and_plan_json_robustness(ray_session, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["plan", str(EXAMPLES / "tiny.yaml"), "--scenarios", "8", "--out", str(out)]
    assert main([*args, "--oos-scenarios", "30", "--replications", "2", "--wait-and-see", "6"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    robustness = plan["robustness"]
    assert [p["plan"] for p in robustness["plans"]] == ["stochastic", "mean_value", "calculator", "all_mining"]
    assert robustness["out_of_sample_scenarios"] == 30 and robustness["wait_and_see"]["scenarios"] == 6
    assert robustness["optimality_gap"]["replications"] == 2
    assert (out / "report.html").exists() and (out / "heat_map_stress.png").exists()
    assert "VSS" in capsys.readouterr().out

    bare = tmp_path / "bare"
    assert main(["plan", str(EXAMPLES / "tiny.yaml"), "--scenarios", "8", "--out", str(bare), "--no-robustness"]) == 0
    assert json.loads((bare / "plan.json").read_text())["robustness"] is None
    assert not (bare / "report.html").exists()


def test_report_compares_with_a_previous_plan(hedge_run, tmp_path):
    from services.tables import plan_json

    fleet, plan, run = hedge_run
    previous = plan_json(plan, fleet)
    group = previous["allocation"][0]
    moved = min(2, group["racks_mine"]) or 0
    group["racks_mine"] -= moved
    group["racks_idle"] += moved
    previous["profit"]["mean_usd"] -= 1000.0
    write_report(fleet, plan, run, tmp_path, previous=previous)
    html = (tmp_path / "report.html").read_text()
    assert 'id="compare"' in html and "Against the previous plan" in html
    if moved:
        assert f"idle -&gt; mining {moved}" in html
    assert "$1,000" in html  # the mean profit change


def test_offers_taken_and_declined_say_why(ray_session, tiny_fleet_data):
    from optimizer.rack_values import rack_values
    from services.board import board_context

    tiny_fleet_data["scenarios"]["count"] = 6
    taken_fleet = parse_fleet(tiny_fleet_data)
    taken_plan, _ = plan_fleet(taken_fleet)
    [taken] = board_context(taken_fleet, taken_plan)["offers"]
    converted = sum(g.racks_ai for g in taken_plan.allocation)
    assert taken["taken"] and taken["mw"] > 0 and converted > 0
    assert "rent net of per-MW capex" in taken["why"] and f"converts {converted} racks" in taken["why"]

    tiny_fleet_data["lease_offers"][0]["rate_usd_per_kw_month"] = 40  # rent below what the racks mine
    low_fleet = parse_fleet(tiny_fleet_data)
    low_plan, _ = plan_fleet(low_fleet)
    [declined] = board_context(low_fleet, low_plan)["offers"]
    assert not declined["taken"] and declined["why"].startswith("at texas mining earns more per MW than the lease")
    values = {v.group: v for v in rack_values(low_fleet, low_plan)}
    # 40 $/kW-month for the whole 36-month term (rent past the 14 days is terminal value; no discounting), less the
    # $2M/MW of capex; the machines are stored at no cost and cannot be sold (no resale price)
    rack_mw = 10 * 200 * 17.5 / 1e6
    rent = 40 * 1000 * 36
    capex = 2_000_000
    assert values["texas-s21"].ai_usd == pytest.approx(rack_mw * (rent - capex), rel=1e-6)


def test_subhourly_value_in_the_table_plan_json_and_report(ray_session, tmp_path):
    """A 15-minute plan shows what its dispatch is worth over hourly: the table line, plan.json and report.html
    carry the plan's own objective minus the hourly plan's, and its mean NPV minus the hourly plan's."""
    import io

    from services.tables import plan_json, print_plan

    data = small_fleet_data(days=2, scenarios=4)
    data["markets"][0]["intra_hour_vol"] = 0.4  # a spot market that swings within the hour
    data["horizon"] = {"start": data["horizon"]["start"], "days": 2, "step_minutes": 15}
    fleet = parse_fleet(data)
    plan, _ = plan_fleet(fleet)
    sub = plan.subhourly
    assert sub.step_minutes == 15 and sub.objective_usd == plan.solver.objective_usd
    assert sub.mean_profit_usd == pytest.approx(plan.profit["mean_usd"])
    value = plan.solver.objective_usd - sub.hourly_objective_usd
    assert sub.value_usd == pytest.approx(value) and value > 1.0  # intra-hour swings are worth something
    written = plan_json(plan, fleet)["subhourly"]
    assert written["value_usd"] == pytest.approx(value)
    assert written["mean_profit_value_usd"] == pytest.approx(plan.profit["mean_usd"] - sub.hourly_mean_profit_usd)

    out = io.StringIO()
    print_plan(plan, Console(file=out, width=400))
    line = next(x for x in out.getvalue().splitlines() if x.startswith("15-minute dispatch over hourly"))
    share = value / abs(sub.hourly_objective_usd)
    assert f"worth ${value:,.0f} ({share:+.2%})" in line
    assert f"objective ${plan.solver.objective_usd:,.0f} vs ${sub.hourly_objective_usd:,.0f}" in line

    run = assess_plan(fleet, plan, settings=RobustnessSettings(oos_scenarios=8, replications=0, sensitivity=False))
    write_report(fleet, plan.model_copy(update={"robustness": run.report}), run, tmp_path)
    html = (tmp_path / "report.html").read_text()
    table = html[html.index('<table id="subhourly">') :]
    table = table[: table.index("</table>")]
    assert f"${round(value):,.0f} ({100 * share:+.2f}%)" in table
    assert f"${round(plan.profit['mean_usd'] - sub.hourly_mean_profit_usd):,.0f}" in table
