"""Wall time of the robustness assessment on the example fleet, stage by stage, at a few settings.

The CLI's defaults (500 out-of-sample scenarios, 5 SAA replications, 200 wait-and-see solves,
sensitivity on) must keep `hashpivot plan examples/fleet.yaml` under a minute on 2 cores; this
prints where the time goes so a change of default can be judged.

    .venv/bin/python bench/bench_robustness.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.fleet import load_fleet  # noqa: E402
from optimizer.robustness import RobustnessSettings  # noqa: E402
from solvers.planner import plan_fleet  # noqa: E402
from solvers.ray_pool import ensure_ray  # noqa: E402
from solvers.robustness import assess_plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "defaults": RobustnessSettings(),
    "no sensitivity": RobustnessSettings(sensitivity=False),
    "2,000 out of sample, 500 wait-and-see": RobustnessSettings(oos_scenarios=2_000, wait_and_see_scenarios=500),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only the defaults")
    args = parser.parse_args()
    start = time.perf_counter()
    ensure_ray()
    print(f"ray start: {time.perf_counter() - start:.1f} s")
    fleet = load_fleet(ROOT / "examples" / "fleet.yaml")
    start = time.perf_counter()
    plan, _ = plan_fleet(fleet)
    print(f"plan ({fleet.scenarios.count} scenarios): {time.perf_counter() - start:.1f} s")
    for name, settings in list(SETTINGS.items())[: 1 if args.quick else None]:
        report = assess_plan(fleet, plan, settings=settings).report
        stages = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in report.timings_s.items())
        print(f"{name:<40} {stages} (s)")


if __name__ == "__main__":
    main()
