"""`hashpivot`: plan a fleet file from the command line, with progress, tables and CSVs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from optimizer.fleet import FleetError, Objective, fleet_json_schema, load_fleet, with_overrides
from services.messages import check_input_file, check_output_dir, check_output_file, one_line
from services.service_cli import (
    add_client_parser,
    add_robustness_arguments,
    add_serve_parser,
    add_token_parser,
    robustness_overrides,
)
from services.tables import output_console, print_plan, write_plan_outputs

console = Console(stderr=True)

EXIT_GAP = 3  # the plan was written, but its solve stopped at a limit with a gap above the accepted one


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="plan a fleet file: mine, lease for AI/HPC, or idle, per rack")
    p.add_argument("fleet", type=Path, help="fleet file (YAML or JSON)")
    p.add_argument("--scenarios", type=int, help="number of Monte Carlo scenarios (default: the fleet file's)")
    p.add_argument("--seed", type=int, help="random seed (default: the fleet file's)")
    p.add_argument("--objective", choices=[o.value for o in Objective], help="risk objective")
    p.add_argument("--alpha", type=float, help="CVaR level, e.g. 0.95")
    p.add_argument("--cvar-weight", type=float, help="weight of CVaR against expected profit")
    p.add_argument("--time-limit", type=float, help="solver time limit, seconds (default: fleet's, else model-scaled)")
    p.add_argument(
        "--step-minutes",
        type=int,
        help="time step in minutes, e.g. 15 (default: the fleet file's); below 60 the plan also reports the value "
        "of that dispatch over hourly dispatch on the same paths",
    )
    p.add_argument(
        "--accept-gap",
        action="store_true",
        help=f"exit 0 even if the solve stopped at a limit with a gap above solver.max_accepted_gap (not {EXIT_GAP})",
    )
    p.add_argument("--scenario-file", type=Path, help="use these scenarios (NPZ, docs/scenarios.md) instead of drawing")
    p.add_argument("--export-scenarios", type=Path, help="write the scenarios the plan used to this NPZ file")
    p.add_argument("--workers", type=int, help="at most this many Ray tasks at once (never changes the plan)")
    p.add_argument("--ray-address", help="existing Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder for plan.json and CSV tables")
    add_robustness_arguments(p, opt_in=False)
    p.add_argument("--no-robustness", action="store_true", help="skip baselines, out-of-sample scoring and report.html")
    p.add_argument("--compare", type=Path, metavar="PREV.json", help="a previous plan.json: report.html shows the diff")
    p.add_argument(
        "--state",
        type=Path,
        metavar="STATE.json",
        help="a previous run's state.json: decisions dated by --as-of are done, the plan continues from them",
    )
    p.add_argument("--as-of", type=_date, metavar="YYYY-MM-DD", help="the date this plan starts from (with --state)")
    p.add_argument(
        "--decision-dates",
        type=_months_list,
        metavar="0,6,12",
        help="months after the start at which decisions are taken: plan on a scenario tree and value the option "
        "to wait (plan.json `tree`, tree_nodes.csv, decision_rule.csv)",
    )
    p.add_argument(
        "--branching", type=_int_list, metavar="K[,K...]", help="children per decision date (default 3, or the file's)"
    )
    p.add_argument(
        "--tree-file", type=Path, help="plan on this scenario tree (NPZ with tree arrays, docs/scenarios.md)"
    )
    p.add_argument("--export-tree", type=Path, help="write the scenario tree the plan used to this NPZ file")
    p.add_argument(
        "--tree-replications",
        type=int,
        help="independent trees for the value-of-waiting interval (default 5; 0: in-sample only)",
    )
    p.add_argument(
        "--tree-oos-trees",
        type=int,
        help="fresh trees the rolling policy is scored on, for the out-of-sample interval (default 3)",
    )
    p.set_defaults(func=cmd_plan)


def _date(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _months_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected months like 0,6,12, got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 3 or 3,2, got {text!r}") from None


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
        ("horizon", "step_minutes", getattr(args, "step_minutes", None)),
    ]
    for section, key, value in pairs:
        if value is not None:
            patch.setdefault(section, {})[key] = value
    return patch


def _tree_patch(args: argparse.Namespace) -> dict:
    """--decision-dates, --branching, --tree-replications, --tree-oos-trees as a patch of the fleet's `tree`."""
    tree: dict = {}
    if getattr(args, "decision_dates", None):
        tree["decision_months"] = args.decision_dates
    if getattr(args, "branching", None) is not None:
        tree["branching"] = args.branching
    if getattr(args, "tree_replications", None) is not None:
        tree["replications"] = args.tree_replications
    if getattr(args, "tree_oos_trees", None) is not None:
        tree["out_of_sample_trees"] = args.tree_oos_trees
    return tree


def cmd_plan(args: argparse.Namespace) -> int:
    from optimizer.scenario_io import load_scenarios
    from solvers.ray_pool import settle_ray_start

    check_input_file(args.fleet, "fleet file")
    if args.scenario_file:
        check_input_file(args.scenario_file, "scenario file")
    previous = _load_previous(args.compare) if args.compare else None
    check_output_dir(args.out)
    if args.export_scenarios:
        check_output_file(args.export_scenarios, "--export-scenarios")
    if args.tree_file:
        check_input_file(args.tree_file, "tree file")
    if args.export_tree:
        check_output_file(args.export_tree, "--export-tree")
    fleet = load_fleet(args.fleet)
    patch = _overrides(args)
    tree_patch = _tree_patch(args)
    if tree_patch and (fleet.tree is not None or "decision_months" in tree_patch):
        patch["tree"] = tree_patch  # else they apply to --tree-file's tree (solvers.tree_plan)
    fleet = with_overrides(fleet, patch)
    if args.no_robustness and fleet.tree is not None:  # no out-of-sample scoring of the tree policy either
        fleet = with_overrides(fleet, {"tree": {"out_of_sample": False}})
    state = _carried_state(args, fleet)
    if state is not None:
        from optimizer.replan import apply_state

        fleet = apply_state(fleet, state, args.as_of)
    provided = None
    if args.scenario_file:
        provided = load_scenarios(
            args.scenario_file, [m.id for m in fleet.markets], fleet.horizon.n_steps, fleet.horizon.step_hours
        )
    local = _start_ray_if_needed(args, fleet, provided)
    try:
        return _plan(args, fleet, provided, local, previous, state)
    finally:
        settle_ray_start()  # a Ray still starting (the run failed early) finishes, so it shuts down cleanly


def _start_ray_if_needed(args: argparse.Namespace, fleet, provided) -> bool:
    """Whether the plan runs in-process; Ray starts in the background (sized to the work) if the plan's
    work pays for it or robustness follows, while the planner is imported and the plan made."""
    from solvers.ray_pool import batches, cpus_for, runs_in_process, start_ray_background

    count = fleet.scenarios.count if provided is None else provided.n_scenarios
    local = runs_in_process(fleet, count, args.ray_address)
    if not local or not args.no_robustness:
        parts = len(batches(count, fleet.scenarios.batch_size))
        start_ray_background(args.ray_address, num_cpus=cpus_for(parts if args.no_robustness else 1 << 16))
    return local


def _write_state(path: Path, fleet, plan, carried) -> Path:
    """state.json for the next quarter: the decisions carried in plus this plan's own."""
    from optimizer.replan import state_from_plan

    state = state_from_plan(fleet, plan)
    if carried is not None:
        state = carried.merged(state)
    path.write_text(state.model_dump_json(indent=2))
    return path


def _carried_state(args: argparse.Namespace, fleet):
    """The decisions done by --as-of of the --state file (both or neither), checked before any work."""
    if (args.state is None) != (args.as_of is None):
        raise FleetError([("--state/--as-of", "give both: the previous run's state.json and the date to plan from")])
    if args.state is None:
        return None
    from optimizer.replan import load_state

    check_input_file(args.state, "state file")
    return load_state(args.state).committed(args.as_of)


def _plan(args: argparse.Namespace, fleet, provided, local: bool, previous: dict | None, carried) -> int:
    from optimizer.scenario_io import save_scenarios
    from solvers.planner import plan_fleet

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
            local=local,
        )
        run = None if args.no_robustness else _assess(args, fleet, plan, provided, progress)
        if fleet.tree is not None or args.tree_file:
            from solvers.tree_plan import plan_tree

            tree_paths = None
            if args.tree_file:
                from optimizer.tree_io import load_tree_scenarios

                markets = [m.id for m in fleet.markets]
                tree_paths = load_tree_scenarios(
                    args.tree_file, markets, fleet.horizon.n_steps, fleet.horizon.step_hours
                )
            report = plan_tree(
                fleet,
                progress,
                provided=tree_paths,
                export_path=args.export_tree,
                out_of_sample=False if args.no_robustness else None,
                replications=args.tree_replications,
                out_of_sample_trees=args.tree_oos_trees,
                workers=args.workers,
            )
            plan = plan.model_copy(update={"tree": report})
    if args.export_scenarios:
        args.export_scenarios.parent.mkdir(parents=True, exist_ok=True)
        save_scenarios(args.export_scenarios, scenarios)
    out_console = output_console()
    print_plan(plan, out_console, fleet)
    if plan.tree is not None:
        from services.tables import print_tree

        print_tree(plan.tree, out_console)
    if run is not None:
        from services.report import print_robustness, write_report

        plan = plan.model_copy(update={"robustness": run.report})
        print_robustness(run.report, out_console)
    paths = write_plan_outputs(plan, args.out, fleet)
    paths.append(_write_state(args.out / "state.json", fleet, plan, carried))
    if previous is not None:
        from services.plan_diff import diff_plans, print_diff

        print_diff(diff_plans(previous, _plan_data(plan, fleet), "previous", "this plan"), out_console)
    if run is not None:
        paths += write_report(fleet, plan, run, args.out, previous=previous)
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
    if plan.solver.gap_exceeded:
        from services.tables import gap_warning

        if args.accept_gap:
            console.print(f"[yellow]{gap_warning(plan)} (accepted: --accept-gap)[/yellow]")
        else:
            console.print(f"[red]{gap_warning(plan)}[/red]; exiting {EXIT_GAP} (pass --accept-gap to accept it)")
            return EXIT_GAP
    return 0


def _load_previous(path: Path) -> dict:
    from services.plan_diff import load_plan_data

    check_input_file(path, "plan file (--compare)")
    return load_plan_data(path)


def _plan_data(plan, fleet) -> dict:
    from services.tables import plan_json

    return plan_json(plan, fleet)


def _assess(args: argparse.Namespace, fleet, plan, provided, progress):
    from optimizer.robustness import RobustnessSettings
    from solvers.robustness import assess_plan

    settings = RobustnessSettings(**robustness_overrides(args))
    return assess_plan(fleet, plan, provided=provided, settings=settings, workers=args.workers, progress=progress)


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="re-plan over ranges of inputs (on Ray): sweep.csv, tornado chart, decision map")
    p.add_argument("fleet", type=Path, help="fleet file (YAML or JSON)")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        required=True,
        metavar="KEY=LO:HI:N",
        help="an input and N evenly spaced values (or KEY=V1,V2,...): btc_price, hashprice, power.<market|site>, "
        "offer.<id>.rate, or a dotted fleet path such as sites.<id>.capacity_mw (repeatable; docs/sweeps.md)",
    )
    p.add_argument("--grid", action="store_true", help="every combination (default: one input at a time)")
    p.add_argument("--metric", choices=["mean", "objective", "p5", "cvar"], default="mean", help="tornado measure")
    p.add_argument("--scenarios", type=int, help="scenarios per plan (default: the fleet file's)")
    p.add_argument("--seed", type=int, help="random seed (default: the fleet file's)")
    p.add_argument("--time-limit", type=float, help="solver time limit per plan in seconds")
    p.add_argument("--workers", type=int, help="at most this many plans at once (never changes the results)")
    p.add_argument("--ray-address", help="existing Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument(
        "--out", type=Path, default=Path("out"), help="output folder (sweep.csv, tornado.png, decision_map.png)"
    )
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from optimizer.sweep import parse_vary, tornado
    from services import sweep
    from solvers.ray_pool import ensure_ray

    check_input_file(args.fleet, "fleet file")
    check_output_dir(args.out)
    varies = [parse_vary(v) for v in args.vary]
    keys = [v.key for v in varies]
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"--vary: an input is given twice ({', '.join(sorted({k for k in keys if keys.count(k) > 1}))})"
        )
    patch = {"scenarios": {}, "solver": {}}
    if args.scenarios is not None:
        patch["scenarios"]["count"] = args.scenarios
    if args.seed is not None:
        patch["scenarios"]["seed"] = args.seed
    if args.time_limit is not None:
        patch["solver"]["time_limit_s"] = args.time_limit
    fleet = with_overrides(load_fleet(args.fleet), {k: v for k, v in patch.items() if v})
    data = fleet.model_dump(mode="json")
    sweep.check_points(data, varies, args.grid)  # every point valid before Ray starts
    ensure_ray(args.ray_address)
    with _progress_bar() as bar:
        task = bar.add_task("plans", total=None)
        rows = sweep.run_sweep(
            data, varies, args.grid, args.workers, lambda done, total: bar.update(task, completed=done, total=total)
        )
    metric = sweep.METRICS[args.metric]
    out_console = output_console()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [sweep.write_csv(args.out / "sweep.csv", rows)]
    base_metric = rows[0].get(metric)
    sites = [s.id for s in fleet.sites]
    if args.grid:
        sweep.print_grid(rows, keys, sites, metric, out_console)
        if len(varies) == 2:
            paths.append(args.out / "decision_map.png")
            sweep.decision_map_chart(paths[-1], rows, keys[0], keys[1], sites)
        else:
            console.print("decision map: drawn for a grid of exactly two inputs")
    else:
        bars = tornado(rows, varies, metric)
        sweep.print_tornado(bars, base_metric, args.metric, out_console)
        paths.append(args.out / "tornado.png")
        sweep.tornado_chart(paths[-1], bars, base_metric, args.metric)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        console.print(f"{len(failed)} of {len(rows)} points have no plan (status column of sweep.csv)")
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _client_sweep_parser(calls: argparse._SubParsersAction) -> None:
    c = calls.add_parser("sweep", help="run a sweep on the server (SweepService) and print its tornado or grid")
    c.add_argument("fleet", type=Path, help="fleet file (YAML or JSON)")
    c.add_argument(
        "--vary", action="append", default=[], required=True, metavar="KEY=LO:HI:N", help="as `hashpivot sweep`"
    )
    c.add_argument("--grid", action="store_true", help="every combination (default: one input at a time)")
    c.add_argument("--metric", choices=["mean", "objective", "p5", "cvar"], default="mean", help="tornado measure")
    c.add_argument("--scenarios", type=int, help="scenarios per plan (default: the fleet file's)")
    c.set_defaults(func=cmd_client_sweep)


def cmd_client_sweep(args: argparse.Namespace) -> int:
    import grpc

    from optimizer.sweep import TornadoBar, parse_vary
    from protos.hashpivot.v1 import sweep_service_pb2 as pb
    from protos.hashpivot.v1 import sweep_service_pb2_grpc
    from services.client import PlannerClient, PlannerError, fleet_message
    from services.tables import emit

    check_input_file(args.fleet, "fleet file")
    varies = [parse_vary(v) for v in args.vary]
    fleet = load_fleet(args.fleet)
    if args.scenarios is not None:
        fleet = with_overrides(fleet, {"scenarios": {"count": args.scenarios}})
    request = pb.SubmitSweepRequest(fleet=fleet_message(fleet), grid=args.grid, metric=args.metric)
    for v in varies:
        request.inputs.append(pb.SweepInput(key=v.key, values=v.values))
    with PlannerClient(args.target, timeout_s=args.timeout) as client:
        stub = sweep_service_pb2_grpc.SweepServiceStub(client._channel)
        try:
            sweep = stub.SubmitSweep(request, timeout=args.timeout).sweep
            with _progress_bar() as bar:
                task = bar.add_task("plans", total=sweep.points_total)
                for update in stub.WatchSweep(pb.WatchSweepRequest(sweep_id=sweep.sweep_id)):
                    sweep = update.sweep
                    bar.update(task, completed=sweep.points_done, total=sweep.points_total)
        except grpc.RpcError as exc:
            error = PlannerError.from_rpc_error(exc)
            details = " ".join(f"[{p}: {d}]" for p, d in error.field_violations)
            console.print(Text(f"{error.code.name}: {error.message} {details}".strip(), style="red"))
            return 1
    if sweep.state != pb.SWEEP_STATE_SUCCEEDED:
        console.print(Text(f"sweep {sweep.sweep_id} failed: {sweep.error}", style="red"))
        return 1
    console.print(f"sweep_id {sweep.sweep_id}")
    if args.grid:
        rows = [
            {
                **dict(p.inputs),
                "status": p.status,
                args.metric: getattr(p, METRIC_FIELDS[args.metric]),
                **{f"{site}": mode for site, mode in sorted(p.site_modes.items())},
            }
            for p in sweep.points
            if p.varied == "grid"
        ]
        emit(rows, args.format, "sweep grid")
        return 0
    bars = [
        TornadoBar(
            b.key,
            b.low_input,
            b.high_input,
            b.metric_at_low,
            b.metric_at_high,
            min(b.metric_at_low, b.metric_at_high),
            min(b.metric_at_low, b.metric_at_high) + b.swing,
        )
        for b in sweep.tornado
    ]
    if args.format == "table":
        from services.sweep import print_tornado

        base = next((p for p in sweep.points if p.varied == "base"), None)
        base_value = getattr(base, METRIC_FIELDS[args.metric]) if base is not None else None
        print_tornado(bars, base_value, args.metric, output_console())
    else:
        emit(
            [
                {
                    "input": b.key,
                    "low": b.low_input,
                    "high": b.high_input,
                    "at_low": b.metric_at_low,
                    "at_high": b.metric_at_high,
                    "swing": b.swing,
                }
                for b in bars
            ],
            args.format,
        )
    return 0


METRIC_FIELDS = {"mean": "mean_usd", "objective": "objective_usd", "p5": "p5_usd", "cvar": "cvar_usd"}


def _diff_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff", help="compare two plan.json files: racks moved, MW, profit and risk, and why")
    p.add_argument("plan_a", type=Path, help="the earlier plan.json")
    p.add_argument("plan_b", type=Path, help="the later plan.json")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    from services.plan_diff import diff_plans, diff_rows, load_plan_data, print_diff

    for path in (args.plan_a, args.plan_b):
        check_input_file(path, "plan file")
    a, b = load_plan_data(args.plan_a), load_plan_data(args.plan_b)
    diff = diff_plans(a, b, "A", "B")
    if args.format == "json":
        print(
            json.dumps({"a": str(args.plan_a), "b": str(args.plan_b), **diff_rows(diff), "notes": diff.notes}, indent=2)
        )
    elif args.format == "csv":
        from services.tables import emit

        emit(diff_rows(diff)["groups"], "csv")
    else:
        print(f"A = {args.plan_a}\nB = {args.plan_b}")
        print_diff(diff, output_console())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(fleet_json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashpivot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _plan_parser(sub)
    schema = sub.add_parser("schema", help="print the fleet file's JSON Schema")
    schema.set_defaults(func=cmd_schema)
    _sweep_parser(sub)
    _diff_parser(sub)
    add_serve_parser(sub)
    add_token_parser(sub)
    add_client_parser(sub)
    client_calls = next(a for a in sub.choices["client"]._actions if isinstance(a, argparse._SubParsersAction))
    _client_sweep_parser(client_calls)
    return parser


# Options that work anywhere on the command line: before or after the subcommand.
GLOBAL_OPTIONS = [(("--debug",), {"action": "store_true", "help": "show the traceback of a failure"})]
CLIENT_OPTIONS = ("--target", "--timeout", "--format")  # defined on `client`, accepted after its call too


def _propagate(parser: argparse.ArgumentParser, specs: list[tuple[tuple, dict]]) -> None:
    """Add options to every nested subcommand with a SUPPRESS default, so a value given at any level sticks."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in action.choices.values():
            known = {o for a in child._actions for o in a.option_strings}
            for flags, kwargs in specs:
                if flags[0] not in known:
                    child.add_argument(*flags, **{**kwargs, "default": argparse.SUPPRESS})
            _propagate(child, specs)


def _client_specs(parser: argparse.ArgumentParser) -> list[tuple[tuple, dict]]:
    client = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["client"]
    specs = []
    for action in client._actions:
        if action.option_strings and action.option_strings[0] in CLIENT_OPTIONS:
            kwargs = {"help": action.help, "dest": action.dest}
            if action.type is not None:
                kwargs["type"] = action.type
            if action.choices is not None:
                kwargs["choices"] = action.choices
            specs.append((tuple(action.option_strings), kwargs))
    return specs


def _command_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    for flags, kwargs in GLOBAL_OPTIONS:
        parser.add_argument(*flags, **kwargs)
    _propagate(parser, GLOBAL_OPTIONS)
    client = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["client"]
    _propagate(client, _client_specs(parser))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _command_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        fleet_path = getattr(args, "fleet", None)
        line = one_line(exc, fleet_path if isinstance(fleet_path, Path) else None)
        # Text, not markup: ids in paths have brackets
        console.print(Text.assemble(("error: ", "red"), line), highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
