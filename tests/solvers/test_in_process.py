"""Small runs skip Ray and run the same task functions in-process, with identical results."""

import os
import subprocess
import sys

import pytest

from optimizer.fleet import load_fleet, parse_fleet
from solvers import ray_pool
from solvers.planner import plan_fleet
from tests.conftest import EXAMPLES, ROOT, events_fleet_data, small_fleet_data


@pytest.mark.parametrize("make", [small_fleet_data, events_fleet_data], ids=["small", "events"])
def test_in_process_plan_equals_ray_plan(ray_session, make):
    fleet = parse_fleet(make(days=2, scenarios=9))
    local, local_scenarios = plan_fleet(fleet, local=True, keep_scenarios=True)
    on_ray, ray_scenarios = plan_fleet(fleet, local=False, keep_scenarios=True)
    assert [g.model_dump() for g in local.allocation] == [g.model_dump() for g in on_ray.allocation]
    assert local.profit == on_ray.profit
    assert [s.model_dump() for s in local.sites] == [s.model_dump() for s in on_ray.sites]
    assert local.solver.objective_usd == on_ray.solver.objective_usd
    assert local.solver.status == on_ray.solver.status == "optimal"
    assert (local_scenarios.power_price_usd_per_mwh == ray_scenarios.power_price_usd_per_mwh).all()


def test_auto_mode_picks_by_work():
    tiny = load_fleet(EXAMPLES / "tiny.yaml")
    example = load_fleet(EXAMPLES / "fleet.yaml")
    assert ray_pool.work_cells(tiny, 40) == 40 * 14 * 24 * (3 + 2)
    # tiny: far below Ray's start-up; the example at 100,000 scenarios: far above, on two cores or more
    assert ray_pool.runs_in_process(tiny, 40, cores=2) or ray_pool.ray_active()
    assert not ray_pool.runs_in_process(example, 100_000, cores=2)
    # one core: Ray can save nothing, so it never pays
    assert ray_pool.runs_in_process(example, 100_000, cores=1) or ray_pool.ray_active()
    # a configured cluster always gets the work
    assert not ray_pool.runs_in_process(tiny, 40, address="127.0.0.1:6379")


def test_tiny_plan_never_imports_ray_nor_scipy_stats(tmp_path):
    """`hashpivot plan tiny.yaml --no-robustness` runs without Ray, gRPC, matplotlib or scipy.stats."""
    code = (
        "import sys; from services.cli import main; "
        f"rc = main(['plan', {str(EXAMPLES / 'tiny.yaml')!r}, '--no-robustness', '--out', {str(tmp_path)!r}]); "
        "heavy = [m for m in ('ray', 'grpc', 'matplotlib', 'scipy.stats') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert (tmp_path / "plan.json").exists()


def test_ray_started_in_the_background_survives_its_thread(tmp_path):
    """A tiny plan with robustness: the plan runs in-process while Ray starts in a background thread,
    then robustness runs on that Ray. Ray's GCS and raylet die with the thread that forked them
    (PR_SET_PDEATHSIG), so the starter thread must outlive the start: this run fails if it does not.
    One fresh process, so one Ray start of its own (the session's Ray cannot test a cold start)."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "plan",
        str(EXAMPLES / "tiny.yaml"),
        "--scenarios",
        "8",
        "--oos-scenarios",
        "8",
        "--replications",
        "0",
        "--wait-and-see",
        "0",
        "--no-sensitivity",
        "--out",
        str(out),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "report.html").exists() and (out / "plan.json").exists()
    assert "SIGTERM handler is not set" not in done.stderr  # the expected off-main-thread warning is muted
