"""The robustness report: HTML with its charts, the terminal comparison, and the CLI flags."""

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
    assert sorted(images) == sorted(
        ["profit_distribution.png", "allocation_by_site.png", "heat_map_typical.png", "heat_map_stress.png"]
    )
    for name in images:
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
        assert tmp_path / name in paths
    report = run.report
    for text in ("mean-value plan", "calculator rule", "all mining", "wait-and-see", "Mak-Morton-Wood"):
        assert text in html
    vss = f"${round(report.value_of_stochastic_solution_usd.estimate_usd):,}"
    assert vss in html  # the number the terminal prints is the number the page shows
    assert f"#{report.stress_scenario_index}" in html


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
