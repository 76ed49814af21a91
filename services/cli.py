"""`hashpivot`: plan a fleet file from the command line, with progress, tables and CSVs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from optimizer.fleet import FleetError, Objective, fleet_json_schema, load_fleet, with_overrides
from services.service_cli import (
    add_client_parser,
    add_robustness_arguments,
    add_serve_parser,
    add_token_parser,
    robustness_overrides,
)
from services.tables import print_plan, write_plan_outputs

console = Console(stderr=True)


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="plan a fleet file: mine, lease for AI/HPC, or idle, per rack")
    p.add_argument("fleet", type=Path, help="fleet file (YAML or JSON)")
    p.add_argument("--scenarios", type=int, help="number of Monte Carlo scenarios (default: the fleet file's)")
    p.add_argument("--seed", type=int, help="random seed (default: the fleet file's)")
    p.add_argument("--objective", choices=[o.value for o in Objective], help="risk objective")
    p.add_argument("--alpha", type=float, help="CVaR level, e.g. 0.95")
    p.add_argument("--cvar-weight", type=float, help="weight of CVaR against expected profit")
    p.add_argument("--time-limit", type=float, help="solver time limit in seconds")
    p.add_argument("--scenario-file", type=Path, help="use these scenarios (NPZ, docs/scenarios.md) instead of drawing")
    p.add_argument("--export-scenarios", type=Path, help="write the scenarios the plan used to this NPZ file")
    p.add_argument("--workers", type=int, help="at most this many Ray tasks at once (never changes the plan)")
    p.add_argument("--ray-address", help="existing Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder for plan.json and CSV tables")
    add_robustness_arguments(p, opt_in=False)
    p.add_argument("--no-robustness", action="store_true", help="skip baselines, out-of-sample scoring and report.html")
    p.set_defaults(func=cmd_plan)


def _overrides(args: argparse.Namespace) -> dict:
    """Command-line settings, as a fleet-file patch so they are validated like the file."""
    patch: dict = {}
    pairs = [
        ("scenarios", "count", args.scenarios),
        ("scenarios", "seed", args.seed),
        ("risk", "objective", args.objective),
        ("risk", "alpha", args.alpha),
        ("risk", "weight", args.cvar_weight),
        ("solver", "time_limit_s", args.time_limit),
    ]
    for section, key, value in pairs:
        if value is not None:
            patch.setdefault(section, {})[key] = value
    return patch


def cmd_plan(args: argparse.Namespace) -> int:
    from optimizer.scenario_io import load_scenarios, save_scenarios  # noqa: I001
    from solvers.planner import plan_fleet
    from solvers.ray_pool import ensure_ray

    fleet = with_overrides(load_fleet(args.fleet), _overrides(args))
    provided = None
    if args.scenario_file:
        provided = load_scenarios(args.scenario_file, [m.id for m in fleet.markets], fleet.horizon.n_steps)
    ensure_ray(args.ray_address)
    with _progress_bar() as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        plan, scenarios = plan_fleet(
            fleet,
            provided=provided,
            workers=args.workers,
            keep_scenarios=bool(args.export_scenarios),
            progress=progress,
        )
        run = None if args.no_robustness else _assess(args, fleet, plan, provided, progress)
    if args.export_scenarios:
        save_scenarios(args.export_scenarios, scenarios)
    out_console = Console(width=None if sys.stdout.isatty() else 160)
    print_plan(plan, out_console)
    if run is not None:
        from services.report import print_robustness, write_report

        plan = plan.model_copy(update={"robustness": run.report})
        print_robustness(run.report, out_console)
    paths = write_plan_outputs(plan, args.out)
    if run is not None:
        paths += write_report(fleet, plan, run, args.out)
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _assess(args: argparse.Namespace, fleet, plan, provided, progress):
    from optimizer.robustness import RobustnessSettings
    from solvers.robustness import assess_plan

    settings = RobustnessSettings(**robustness_overrides(args))
    return assess_plan(fleet, plan, provided=provided, settings=settings, workers=args.workers, progress=progress)


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(fleet_json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashpivot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _plan_parser(sub)
    schema = sub.add_parser("schema", help="print the fleet file's JSON Schema")
    schema.set_defaults(func=cmd_schema)
    add_serve_parser(sub)
    add_token_parser(sub)
    add_client_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FleetError as exc:
        for path, message in exc.violations:
            console.print(f"[red]invalid fleet[/red] {path}: {message}")
        return 2
    except ValueError as exc:
        field = getattr(exc, "field", None)
        console.print(f"[red]invalid input[/red] {field + ': ' if field else ''}{exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
