"""`hashpivot diff`: the right racks move, with the reason in money per rack."""

import json

from services.cli import main
from services.plan_diff import diff_plans, rack_moves


def _plan(mine, ai, idle, ai_value, lease_mw, mean):
    groups = []
    for gid, site, m, a, i in zip(("g1", "g2"), ("tx", "oh"), mine, ai, idle, strict=True):
        groups.append(
            {
                "group": gid,
                "site": site,
                "racks_mine": m,
                "racks_ai": a,
                "racks_idle": i,
                "expected_mine_value_usd_per_rack": 1000.0,
            }
        )
    return {
        "horizon_days": 91,
        "objective": "expected",
        "allocation": groups,
        "rack_values": [
            {"group": "g1", "site": "tx", "mine_usd": 1000.0, "ai_usd": ai_value, "idle_usd": -50.0, "best_offer": "o"},
            {"group": "g2", "site": "oh", "mine_usd": 1000.0, "ai_usd": None, "idle_usd": -50.0, "best_offer": None},
        ],
        "offers": [
            {"offer": "o", "accepted": lease_mw > 0, "mw": lease_mw, "mw_by_site": {"tx": lease_mw} if lease_mw else {}}
        ],
        "sites": [
            {"site": "tx", "mining_mw": 10.0, "ai_mw": lease_mw, "expected_profit_usd": mean - 100},
            {"site": "oh", "mining_mw": 5.0, "ai_mw": 0.0, "expected_profit_usd": 100.0},
        ],
        "profit": {"mean_usd": mean, "p5_usd": mean - 50, "cvar_usd": mean - 80},
        "solver": {"objective_usd": mean},
    }


def test_rack_moves_pair_losses_with_gains():
    assert rack_moves({"mine": 100, "ai": 0, "idle": 20}, {"mine": 30, "ai": 80, "idle": 10}) == [
        ("mine", "ai", 70),
        ("idle", "ai", 10),
    ]
    assert rack_moves({"mine": 5, "ai": 0, "idle": 0}, {"mine": 5, "ai": 0, "idle": 0}) == []


def test_diff_of_two_known_plans_lists_the_moves_and_why():
    a = _plan(mine=(100, 50), ai=(0, 0), idle=(0, 10), ai_value=800.0, lease_mw=0.0, mean=1_000_000)
    b = _plan(mine=(40, 60), ai=(60, 0), idle=(0, 0), ai_value=2500.0, lease_mw=3.0, mean=1_200_000)
    diff = diff_plans(a, b, "Q1", "Q2")
    g1, g2 = diff.groups
    assert g1.moves == [("mine", "ai", 60)] and g2.moves == [("idle", "mine", 10)]
    assert g1.reason == "AI $2,500 vs mining $1,000 per rack in Q2 (Q1 to Q2: AI $800 -> $2,500)"
    assert g2.reason.startswith("mining $1,000 vs idle -$50 per rack in Q2")
    assert diff.offers == [
        {"offer": "o", "site": "tx", "mw_a": 0.0, "mw_b": 3.0, "accepted_a": False, "accepted_b": True}
    ]
    mean = next(f for f in diff.figures if f["figure"] == "mean profit")
    assert (mean["a"], mean["b"], mean["change"]) == (1_000_000, 1_200_000, 200_000)
    tx = next(s for s in diff.sites if s["site"] == "tx")
    assert (tx["ai_mw_a"], tx["ai_mw_b"]) == (0.0, 3.0)


def test_diff_command_json(tmp_path, capsys):
    a = _plan(mine=(100, 50), ai=(0, 0), idle=(0, 10), ai_value=800.0, lease_mw=0.0, mean=1.0)
    b = _plan(mine=(40, 60), ai=(60, 0), idle=(0, 0), ai_value=2500.0, lease_mw=3.0, mean=2.0)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [g["moves"] for g in out["groups"]] == ["mining -> AI 60", "idle -> mining 10"]
    assert main(["diff", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "70 racks change mode across 2 groups" in capsys.readouterr().out


def test_racks_sold_and_moved_are_moves_with_their_option_values():
    a = _plan(mine=(100, 50), ai=(0, 0), idle=(0, 10), ai_value=800.0, lease_mw=0.0, mean=1_000_000)
    b = _plan(mine=(70, 50), ai=(0, 0), idle=(0, 10), ai_value=800.0, lease_mw=0.0, mean=1_050_000)
    b["allocation"][0].update(
        racks_sell=20, racks_move=10, option_values_usd_per_rack={"sell": 1500.0, "move:oh": 1200.0}
    )
    g1, _ = diff_plans(a, b, "Q1", "Q2").groups
    assert g1.moves == [("mine", "sell", 20), ("mine", "move", 10)]
    assert g1.reason.startswith("sold $1,500 vs mining $1,000 per rack in Q2")
