import csv
import json

import pytest

from services.cli import main
from tests.fleets import EXAMPLES


@pytest.fixture
def tiny_args(tmp_path):
    # Robustness has its own tests (tests/services/test_report.py); here only the plan itself.
    return ["plan", str(EXAMPLES / "tiny.yaml"), "--scenarios", "8", "--seed", "3", "--no-robustness"]


def test_plan_writes_json_and_csv(ray_session, tmp_path, tiny_args, capsys):
    out = tmp_path / "out"
    assert main([*tiny_args, "--out", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["scenarios"] == {"count": 8, "seed": 3, "stream": 0, "source": "generated", "batch_size": 10}
    assert {"mean_usd", "std_usd", "p5_usd", "p50_usd", "p95_usd", "var_usd", "cvar_usd"} <= set(plan["profit"])
    assert plan["solver"]["status"] == "optimal"
    assert {"pyomo", "highspy", "ray", "numpy"} <= set(plan["versions"])
    with (out / "allocation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["group"] for r in rows] == ["hydro-s19", "texas-s19", "texas-s21"]
    for row, group in zip(rows, plan["allocation"], strict=True):
        for mode in ("mine", "ai", "idle"):
            assert int(row[f"racks_{mode}"]) == sum(r["count"] for r in group[f"rack_ranges_{mode}"])
    printed = capsys.readouterr().out
    assert "Allocation" in printed and "CVaR95%" in printed


def test_exported_scenarios_replay_to_the_same_plan(ray_session, tmp_path, tiny_args):
    paths = tmp_path / "used.npz"
    assert main([*tiny_args, "--out", str(tmp_path / "a"), "--export-scenarios", str(paths)]) == 0
    replay = ["plan", str(EXAMPLES / "tiny.yaml"), "--scenario-file", str(paths), "--no-robustness"]
    assert main([*replay, "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "plan.json").read_text())
    b = json.loads((tmp_path / "b" / "plan.json").read_text())
    assert b["scenarios"]["source"] == "file" and b["scenarios"]["count"] == 8
    assert a["profit"] == b["profit"] and a["allocation"] == b["allocation"]


def test_bad_fleet_names_the_field(tmp_path, capsys):
    fleet = tmp_path / "bad.yaml"
    text = (EXAMPLES / "tiny.yaml").read_text().replace("capacity_mw: 5\n", "capacity_mw: -5\n")
    fleet.write_text(text)
    assert main(["plan", str(fleet), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "sites[hydro].capacity_mw" in err and "-5" in err
    assert not (tmp_path / "o").exists()


def test_bad_override_names_the_field(tmp_path, capsys):
    assert main(["plan", str(EXAMPLES / "tiny.yaml"), "--alpha", "2", "--out", str(tmp_path / "o")]) == 2
    assert "risk.alpha" in capsys.readouterr().err


def test_schema_command_prints_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "rack_groups" in schema["properties"]


def test_scenario_file_missing_a_market_names_the_array(tmp_path, capsys):
    import numpy as np

    path = tmp_path / "desk.npz"
    hashprice = np.full((2, 14 * 24), 35.0)
    np.savez(path, hashprice_usd_per_ph_day=hashprice, step_hours=1)
    assert main(["plan", str(EXAMPLES / "tiny.yaml"), "--scenario-file", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "power_price_usd_per_mwh__ercot_west" in capsys.readouterr().err
