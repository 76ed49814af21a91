"""No silent time-limit plans: the gap flag in the plan, its contract, the table and the CLI exit code."""

import dataclasses
import io
import json
import math

import pytest
import yaml
from rich.console import Console

from optimizer.fleet import load_fleet, parse_fleet, with_overrides
from protos.hashpivot.v1 import plan_pb2
from services import cli, convert
from services.tables import print_plan
from solvers import planner, ray_pool
from solvers.highs import NoSolutionInTimeError
from solvers.limits import (
    TIME_LIMIT_MAX_S,
    default_time_limit_s,
    gap_exceeded,
    model_integers,
    model_rows,
    resolved_time_limit_s,
)
from solvers.planner import ScenarioSpec, compute_economics, plan_fleet
from tests.conftest import EXAMPLES, events_fleet_data, small_fleet_data
from tests.services.grpc_harness import hard_fleet_data


@pytest.mark.parametrize(
    ("status", "gap", "threshold", "flagged"),
    [
        ("optimal", 0.05, 0.01, False),  # ran to the gap asked for (mip_rel_gap), not into a limit
        ("time_limit", 0.0101, 0.01, True),
        ("time_limit", 0.0099, 0.01, False),
        ("time_limit", 0.01, 0.01, False),  # at the threshold is accepted
        ("interrupted", math.inf, 0.5, True),  # no bound at all
        ("other", math.nan, 0.5, True),
        ("time_limit", 0.94, 1.0, False),  # a threshold of 100% accepts the 94% of issue 13
    ],
)
def test_gap_exceeded(status, gap, threshold, flagged):
    assert gap_exceeded(status, gap, threshold) is flagged


def test_default_time_limit_scales_with_the_model():
    fleet = parse_fleet(events_fleet_data(days=2, scenarios=6))
    with ray_pool.in_process():
        small, _ = compute_economics(fleet, ScenarioSpec(count=6, seed=1), batch_size=6)
        large, _ = compute_economics(fleet, ScenarioSpec(count=60, seed=1), batch_size=30)
    rows_small, rows_large = model_rows(fleet, small), model_rows(fleet, large)
    assert rows_small >= 6 and rows_large > 9 * rows_small  # coupled items grow with the scenarios too
    expected = 60 + 1.0 * rows_large / 1000 + 0.5 * model_integers(fleet)
    assert default_time_limit_s(fleet, large) == pytest.approx(expected)
    assert default_time_limit_s(fleet, large) > default_time_limit_s(fleet, small)
    # mean-CVaR adds one shortfall row per scenario
    cvar = with_overrides(fleet, {"risk": {"objective": "cvar"}})
    assert model_rows(cvar, large) == model_rows(fleet, large) + 60
    # a fleet's own limit wins; unset, the scaled one applies
    assert fleet.solver.time_limit_s is not None  # the test fleets set 60 s
    assert resolved_time_limit_s(fleet.solver, fleet, large) == 60
    unset = fleet.solver.model_copy(update={"time_limit_s": None})
    assert resolved_time_limit_s(unset, fleet, large) == default_time_limit_s(fleet, large)
    assert default_time_limit_s(fleet, large) <= TIME_LIMIT_MAX_S


def test_a_fleet_without_solver_settings_gets_the_scaled_limit():
    fleet = load_fleet(EXAMPLES / "tiny.yaml")
    assert fleet.solver.time_limit_s is None and fleet.solver.max_accepted_gap == 0.01


def test_tiny_time_limit_on_a_hard_model_flags_the_plan():
    """A real solve stopped by its time limit: the plan carries the gap flag; a loose threshold clears it."""
    data = hard_fleet_data(time_limit_s=0.3)
    data["solver"]["max_accepted_gap"] = 0.0
    strict = parse_fleet(data)
    plan, _ = plan_fleet(strict, local=True)
    assert plan.solver.status == "time_limit"
    assert plan.solver.time_limit_s == pytest.approx(0.3)
    assert 0 < plan.solver.mip_gap < 1
    assert plan.solver.gap_exceeded and plan.solver.max_accepted_gap == 0.0
    loose = with_overrides(strict, {"solver": {"max_accepted_gap": 1.0}})
    plan, _ = plan_fleet(loose, local=True)
    assert plan.solver.status == "time_limit" and not plan.solver.gap_exceeded


def _time_limited(real_solve, gap: float):
    """solvers.highs.solve that solves, then reports the ending of a solve stopped at its time limit."""

    def solve(model, time_limit_s, mip_rel_gap, threads=1, on_progress=None):
        outcome = real_solve(model, time_limit_s, mip_rel_gap, threads, on_progress)
        bound = outcome.objective_usd + gap * abs(outcome.objective_usd)
        return dataclasses.replace(outcome, status="time_limit", bound_usd=bound, mip_gap=gap)

    return solve


def test_flag_reaches_plan_json_proto_and_table(monkeypatch):
    monkeypatch.setattr(planner, "solve", _time_limited(planner.solve, gap=0.2))
    fleet = parse_fleet(small_fleet_data(days=2, scenarios=4))
    plan, _ = plan_fleet(fleet, local=True)
    assert plan.solver.gap_exceeded and plan.solver.mip_gap == pytest.approx(0.2)
    assert json.loads(plan.model_dump_json())["solver"]["gap_exceeded"] is True
    message = convert.plan_to_message(plan)
    assert message.solver.gap_exceeded and message.solver.max_accepted_gap == pytest.approx(0.01)
    assert message.solver.time_limit_s == pytest.approx(60)
    back = convert.plan_from_message(plan_pb2.Plan.FromString(message.SerializeToString()))
    assert back.solver == plan.solver
    out = io.StringIO()
    print_plan(plan, Console(file=out, width=200))
    text = out.getvalue()
    assert "UNPROVEN" in text and "20.00%" in text and "1.00%" in text


def test_cli_exits_non_zero_on_a_gap_unless_accepted(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ray_pool, "ray_active", lambda: False)  # in-process even if this session started Ray
    argv = ["plan", str(EXAMPLES / "tiny.yaml"), "--no-robustness", "--scenarios", "6"]
    assert cli.main([*argv, "--out", str(tmp_path / "ok")]) == 0
    assert not json.loads((tmp_path / "ok" / "plan.json").read_text())["solver"]["gap_exceeded"]

    monkeypatch.setattr(planner, "solve", _time_limited(planner.solve, gap=0.3))
    assert cli.main([*argv, "--out", str(tmp_path / "gap")]) == cli.EXIT_GAP
    written = json.loads((tmp_path / "gap" / "plan.json").read_text())  # the plan is still written
    assert written["solver"]["gap_exceeded"] and written["solver"]["mip_gap"] == pytest.approx(0.3)
    assert cli.main([*argv, "--out", str(tmp_path / "accepted"), "--accept-gap"]) == 0
    captured = capsys.readouterr()
    assert "UNPROVEN PLAN" in captured.out + captured.err
    # a gap within the fleet's own threshold is no flag
    lenient = tmp_path / "lenient.yaml"
    data = yaml.safe_load((EXAMPLES / "tiny.yaml").read_text())
    data["solver"] = {"max_accepted_gap": 0.5}
    lenient.write_text(yaml.safe_dump(data))
    assert cli.main(["plan", str(lenient), *argv[2:], "--out", str(tmp_path / "lenient")]) == 0
    assert not json.loads((tmp_path / "lenient" / "plan.json").read_text())["solver"]["gap_exceeded"]


def test_report_html_opens_with_the_warning(ray_session, tmp_path):
    from optimizer.robustness import RobustnessSettings
    from services.report import write_report
    from solvers.robustness import assess_plan

    fleet = parse_fleet(small_fleet_data(days=2, scenarios=4))
    plan, _ = plan_fleet(fleet)
    settings = RobustnessSettings(oos_scenarios=8, replications=0, wait_and_see_scenarios=0, sensitivity=False)
    run = assess_plan(fleet, plan, settings=settings)
    plan = plan.model_copy(update={"robustness": run.report})
    write_report(fleet, plan, run, tmp_path / "proven")
    assert 'id="gap-exceeded"' not in (tmp_path / "proven" / "report.html").read_text()
    solver = plan.solver.model_copy(update={"status": "time_limit", "mip_gap": 0.2, "gap_exceeded": True})
    write_report(fleet, plan.model_copy(update={"solver": solver}), run, tmp_path / "unproven")
    html = (tmp_path / "unproven" / "report.html").read_text()
    assert 'id="gap-exceeded"' in html and "20.00%" in html and "1.00%" in html and "time limit" in html


def _strict_json(text: str):
    """json.loads that refuses Infinity and NaN, as every JSON parser but Python's does."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_solve_stopped_before_any_bound_leaves_bound_and_gap_unset(tmp_path):
    """HiGHS stopped by a tiny time limit with a plan but no proven bound: unset in the Plan, null in plan.json."""
    from services.tables import write_plan_outputs

    plan = None
    for limit_s in (0.03, 0.02, 0.05, 0.015, 0.01, 0.08, 0.007, 0.005):  # an incumbent before the root LP ends
        try:
            candidate, _ = plan_fleet(parse_fleet(hard_fleet_data(time_limit_s=limit_s)), local=True)
        except NoSolutionInTimeError:
            continue
        if candidate.solver.bound_usd is None:
            plan = candidate
            break
    assert plan is not None, "no time limit gave a plan without a bound (the machine may be very fast or loaded)"
    assert plan.solver.status == "time_limit" and plan.solver.mip_gap is None and plan.solver.gap_exceeded
    message = plan_pb2.Plan.FromString(convert.plan_to_message(plan).SerializeToString())
    assert not message.solver.HasField("bound_usd") and not message.solver.HasField("mip_gap")
    assert message.solver.objective_usd == plan.solver.objective_usd
    write_plan_outputs(plan, tmp_path)
    solver = _strict_json((tmp_path / "plan.json").read_text())["solver"]
    assert solver["bound_usd"] is None and solver["mip_gap"] is None
    console = Console(file=io.StringIO(), width=200)
    print_plan(plan, console)
    assert "gap unknown (no bound)" in console.file.getvalue()


def test_plan_json_has_no_infinity_even_where_the_domain_holds_one(tmp_path):
    from services.tables import write_plan_outputs
    from tests.services.test_contract import small_plan

    plan = small_plan()
    plan = plan.model_copy(update={"profit": {**plan.profit, "std_usd": math.inf}})
    write_plan_outputs(plan, tmp_path)
    assert _strict_json((tmp_path / "plan.json").read_text())["profit"]["std_usd"] is None
