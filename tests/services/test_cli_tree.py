"""`hashpivot plan --decision-dates --branching`: the tree plan in plan.json and its CSVs."""

import csv
import json

import pytest
import yaml

from optimizer.fleet import parse_fleet
from optimizer.multistage import with_recourse_at
from optimizer.option_value import value_of_waiting
from services.cli import main
from tests.optimizer.test_multistage import waiting_fleet_data


def test_plan_on_a_tree_writes_the_tree_value_of_waiting_and_rule(ray_session, tmp_path, capsys):
    data = waiting_fleet_data(55.0)
    data["scenarios"] = {"seed": 3, "count": 3}
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    args = ["plan", str(fleet_file), "--no-robustness", "--out", str(out)]
    assert main([*args, "--decision-dates", "0,6", "--branching", "3", "--tree-replications", "2"]) == 0
    tree = json.loads((out / "plan.json").read_text())["tree"]
    assert (tree["nodes"], tree["scenarios"], tree["branching"]) == (1 + 3 + 9, 9, [3, 3])
    direct = value_of_waiting(with_recourse_at(parse_fleet(data), [0, 6]), [0, 6], [3, 3], replications=2)
    assert tree["value_of_waiting_in_sample_usd"] == pytest.approx(direct.in_sample.value_of_waiting_usd, rel=1e-9)
    assert tree["value_of_waiting"]["replications_usd"] == pytest.approx(list(direct.value_of_waiting.values_usd))
    assert tree["multistage_usd"] >= tree["now_or_never_usd"]
    assert tree["now"]["node"] == 0 and tree["now"]["decision_month"] == 0
    with (out / "tree_nodes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 13 and rows[0]["parent"] == "-1"
    with (out / "decision_rule.csv").open() as handle:
        rules = list(csv.DictReader(handle))
    assert {r["decision_month"] for r in rules} == {"0.0", "6.0"}
    assert sum(r["decision_month"] == "6.0" for r in rules) == 3  # one row per month-6 node
    printed = capsys.readouterr().out
    assert "value of waiting" in printed and "rule: month 6" in printed
    with pytest.raises(SystemExit):
        main([*args, "--decision-dates", "0,x"])


def test_report_shows_the_tree_the_rule_and_the_rolling_score(ray_session, tmp_path):
    data = waiting_fleet_data(55.0)
    data["scenarios"] = {"seed": 3, "count": 3}
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    quick = ["--oos-scenarios", "10", "--replications", "0", "--wait-and-see", "0", "--no-sensitivity"]
    args = ["plan", str(fleet_file), *quick, "--out", str(out), "--decision-dates", "0,6", "--tree-replications", "0"]
    assert main(args) == 0
    tree = json.loads((out / "plan.json").read_text())["tree"]
    assert [p["policy"] for p in tree["out_of_sample"]] == ["multi-stage (rolling)", "now-or-never", "calculator"]
    rolling, now, _ = (p["objective_usd"] for p in tree["out_of_sample"])
    assert tree["out_of_sample_value_of_waiting_usd"] == pytest.approx(rolling - now)
    html = (out / "report.html").read_text()
    assert "Decide now, or wait" in html and "decision rule chart rule_a" in html
    assert (out / "scenario_tree.png").stat().st_size > 10_000 and (out / "decision_rule_a.png").exists()


def test_export_tree_then_plan_on_the_tree_file(ray_session, tmp_path):
    data = waiting_fleet_data(55.0)
    data["scenarios"] = {"seed": 3, "count": 3}
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(data))
    base = ["plan", str(fleet_file), "--no-robustness", "--tree-replications", "0"]
    exported = tmp_path / "trees" / "used.npz"
    assert main([*base, "--decision-dates", "0,6", "--out", str(tmp_path / "a"), "--export-tree", str(exported)]) == 0
    assert main([*base, "--tree-file", str(exported), "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "plan.json").read_text())["tree"]
    b = json.loads((tmp_path / "b" / "plan.json").read_text())["tree"]
    assert b["multistage_usd"] == pytest.approx(a["multistage_usd"], rel=1e-12)
    assert b["branching"] == [3, 3] and b["decision_months"] == [0.0, 6.01232]  # 183 daily steps
    assert [(n["lifecycles"], n["conversions"]) for n in b["tree"]] == [
        (n["lifecycles"], n["conversions"]) for n in a["tree"]
    ]
