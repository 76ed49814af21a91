"""`hashpivot serve` and `hashpivot client ...`: the command line of the gRPC service.

hashpivot token --caller alice --role planner >> tokens.txt   # prints the token on stderr, keep it
hashpivot serve --port 50051 --db /var/lib/hashpivot/hashpivot.sqlite --tokens-file tokens.txt
hashpivot serve --host 0.0.0.0 --tls-cert server.pem --tls-key server.key --client-ca clients-ca.pem --tokens-file t.txt
HASHPIVOT_TOKEN=... hashpivot client list
hashpivot client optimize examples/tiny.yaml --target localhost:50051 --out out/
hashpivot client optimize examples/tiny.yaml --robustness --oos-scenarios 200 --timeout 300
hashpivot client submit examples/fleet.yaml --robustness --watch
hashpivot client dispatch PLAN_ID --price texas=41.5 --hashprice 35
hashpivot client dispatch PLAN_ID --spot ercot_west=900 --available texas-west=16 --dr-call texas-west --hashprice 35
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gRPC planning service")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default $HASHPIVOT_PORT or 50051)")
    p.add_argument("--db", type=Path, help="SQLite file of jobs and plans (default $HASHPIVOT_DB or the user data dir)")
    p.add_argument("--ray-address", help="existing Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--max-jobs", type=int, default=1, help="plan jobs run at once (default 1)")
    p.add_argument("--grace", type=float, help="seconds in-flight calls get to finish on SIGTERM (default 10)")
    p.add_argument(
        "--dispatch-fronts",
        type=int,
        default=0,
        metavar="N",
        help="answer Dispatch from N extra processes on the same port, the rest forwarded (default 0; docs/service.md)",
    )
    security = p.add_argument_group("identity and transport (docs/operations.md, SECURITY.md)")
    security.add_argument("--tokens-file", type=Path, help="token hashes and roles (default $HASHPIVOT_TOKENS_FILE)")
    security.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM): serve TLS")
    security.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    security.add_argument("--client-ca", type=Path, help="CA of client certificates: require mTLS")
    security.add_argument(
        "--insecure",
        action="store_true",
        help="no authentication (every caller is admin): for a laptop, never a network",
    )
    limits = p.add_argument_group("admission and retention")
    limits.add_argument("--max-scenario-steps", type=int, help="scenario x step pairs per request (default 20M)")
    limits.add_argument("--max-memory-gb", type=float, help="estimated memory per request (default 2)")
    limits.add_argument("--max-groups", type=int, help="rack groups per fleet (default 1000)")
    limits.add_argument("--max-queued-jobs", type=int, help="unfinished jobs per tenant (default 20)")
    limits.add_argument("--max-upload-mb", type=float, help="size of one uploaded scenario file (default 256)")
    limits.add_argument("--max-scenario-sets", type=int, help="stored scenario sets per tenant (default 20)")
    limits.add_argument("--max-crashes", type=int, default=3, help="server deaths a job may cause before it FAILs")
    limits.add_argument("--retain-days", type=float, help="delete plans and finished jobs older than this")
    limits.add_argument("--retain-plans", type=int, help="keep at most this many plans (newest)")
    limits.add_argument("--retain-jobs", type=int, help="keep at most this many finished jobs (newest)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT/metrics")
    p.add_argument("--log-format", choices=["text", "json"], default="text", help="log lines as text or JSON")
    p.add_argument(
        "--no-supervise",
        dest="supervise",
        action="store_false",
        help="run the server in this process; by default a supervisor restarts it if it dies (e.g. with its Ray)",
    )
    p.set_defaults(func=cmd_serve)


def add_token_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="make a bearer token: its line for the tokens file on stdout, the token on stderr")
    p.add_argument("--caller", required=True, help="who holds it (logged with each call)")
    p.add_argument("--role", required=True, choices=["reader", "planner", "automation", "admin"])
    p.add_argument("--tenant", help="owner of what it creates (default: the caller)")
    p.set_defaults(func=cmd_token)


def cmd_token(args: argparse.Namespace) -> int:
    from services.auth import Role, new_token, token_line

    token = new_token()
    print(token_line(token, args.caller, Role(args.role), args.tenant))
    console.print(f"token for {args.caller} (shown once, store it now): {token}", highlight=False)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from services.auth import TokenFileError
    from services.errors import StoreError
    from services.logs import configure_logging
    from services.server import serve
    from services.serving import ServerConfigError
    from services.store import JobStore
    from solvers.ray_pool import ensure_ray

    configure_logging(args.log_format)
    try:
        config = serve_config(args)
        JobStore(config.db_path).close()  # a corrupt or unwritable database fails here, before Ray starts
        if not config.insecure:
            config.authenticator()  # no tokens: refused here, before Ray starts (insecure warns once, at start)
    except (StoreError, TokenFileError, ServerConfigError) as exc:
        console.print(f"hashpivot serve: {exc}", highlight=False, soft_wrap=True)
        return 2
    if args.supervise:
        from services.supervisor import supervise

        return supervise(sys.argv[1:])
    # From the main thread, where Ray installs its own signal handling; an embedded Ray at a lower CPU priority
    # than the server (solvers/ray_pool.py): PlannerServer.start finds it started and cannot lower it then.
    ensure_ray(args.ray_address, yield_to_serving=True)
    asyncio.run(serve(config))
    return 0


def serve_config(args: argparse.Namespace):
    """The ServerConfig the serve flags give."""
    import dataclasses

    from services.admission import Limits
    from services.auth import load_tokens
    from services.front import MAX_FRONTS
    from services.server import Retention, ServerConfig
    from services.serving import ServerConfigError, TlsFiles

    config = ServerConfig(
        host=args.host,
        ray_address=args.ray_address,
        max_concurrent_jobs=args.max_jobs,
        insecure=args.insecure,
        metrics_port=args.metrics_port,
        max_crashes=args.max_crashes,
        dispatch_fronts=args.dispatch_fronts,
        log_format=args.log_format,
        retention=Retention(args.retain_days, args.retain_plans, args.retain_jobs),
    )
    for name in ("grace", "port", "db"):
        if getattr(args, name) is not None:
            setattr(config, {"grace": "grace_s", "db": "db_path"}.get(name, name), getattr(args, name))
    if not 0 <= args.dispatch_fronts <= MAX_FRONTS:
        raise ServerConfigError(f"--dispatch-fronts must be between 0 and {MAX_FRONTS} (got {args.dispatch_fronts})")
    if not args.insecure:
        config.tokens = load_tokens(args.tokens_file)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ServerConfigError("--tls-cert and --tls-key go together")
    if args.client_ca and not args.tls_cert:
        raise ServerConfigError("--client-ca (mTLS) needs --tls-cert and --tls-key")
    if args.tls_cert:
        config.tls = TlsFiles(args.tls_cert, args.tls_key, args.client_ca)
    limits = {
        "max_scenario_steps": args.max_scenario_steps,
        "max_groups": args.max_groups,
        "max_queued_jobs_per_caller": args.max_queued_jobs,
        "max_memory_bytes": None if args.max_memory_gb is None else int(args.max_memory_gb * 1024**3),
        "max_scenario_upload_bytes": None if args.max_upload_mb is None else int(args.max_upload_mb * 1024**2),
        "max_scenario_sets_per_caller": args.max_scenario_sets,
    }
    config.limits = dataclasses.replace(Limits(), **{k: v for k, v in limits.items() if v is not None})
    return config


# ---------------------------------------------------------------------------------------------
# robustness settings, shared by `hashpivot plan` and `hashpivot client optimize|submit`

# flag dest -> optimizer.robustness.RobustnessSettings field
ROBUSTNESS_FLAGS = {
    "oos_scenarios": "oos_scenarios",
    "replications": "replications",
    "wait_and_see": "wait_and_see_scenarios",
}


def add_robustness_arguments(parser: argparse.ArgumentParser, opt_in: bool = True) -> None:
    """--oos-scenarios, --replications, --wait-and-see, --no-sensitivity (and, if opt_in, --robustness).

    Left out, a setting takes the default of optimizer.robustness.RobustnessSettings, the one source of
    the defaults (500 out-of-sample scenarios, 5 SAA replications, 100 wait-and-see scenarios).
    """
    if opt_in:
        parser.add_argument(
            "--robustness",
            action="store_true",
            help="assess the plan's robustness too (out of sample, baselines, SAA gap, VSS, EVPI, sensitivity); "
            "implied by the settings below",
        )
    parser.add_argument("--oos-scenarios", type=int, help="fresh scenarios every plan is scored on (default 500)")
    parser.add_argument("--replications", type=int, help="SAA replications for the optimality-gap interval (5)")
    parser.add_argument("--wait-and-see", type=int, help="out-of-sample scenarios solved with foresight (100)")
    parser.add_argument("--no-sensitivity", action="store_true", help="skip the capacity and hashprice sensitivity")


def robustness_overrides(args: argparse.Namespace) -> dict | None:
    """The robustness settings the flags give, as RobustnessSettings fields; None when robustness is not asked for."""
    given = {field: getattr(args, flag) for flag, field in ROBUSTNESS_FLAGS.items() if getattr(args, flag) is not None}
    if args.no_sensitivity:
        given["sensitivity"] = False
    if not (getattr(args, "robustness", True) or given):
        return None
    return given


# ---------------------------------------------------------------------------------------------
# client


def add_client_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="call a hashpivot server")
    p.add_argument("--target", help="HOST:PORT of the server (default $HASHPIVOT_TARGET or localhost:50051)")
    p.add_argument("--timeout", type=float, help="deadline of the call in seconds")
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output: table (default), json or csv"
    )
    p.add_argument("--token-file", type=Path, help="file holding the bearer token (default $HASHPIVOT_TOKEN)")
    p.add_argument("--tls-ca", type=Path, help="CA of the server's certificate: connect with TLS ($HASHPIVOT_TLS_CA)")
    p.add_argument("--client-cert", type=Path, help="client certificate for mTLS ($HASHPIVOT_CLIENT_CERT)")
    p.add_argument("--client-key", type=Path, help="client private key for mTLS ($HASHPIVOT_CLIENT_KEY)")
    calls = p.add_subparsers(dest="call", required=True)

    def fleet_call(name: str, help_text: str):
        c = calls.add_parser(name, help=help_text)
        c.add_argument("fleet", type=Path, help="fleet file (YAML or JSON), as for `hashpivot plan`")
        c.add_argument("--scenarios", type=int, help="number of Monte Carlo scenarios (default: the fleet file's)")
        add_scenario_file_argument(c)
        c.add_argument("--time-limit", type=float, help="solver time limit in seconds")
        c.add_argument("--accept-offer", action="append", default=[], help="commit to this lease offer (repeatable)")
        c.add_argument("--convert-site", action="append", default=[], help="commit to converting a site (repeatable)")
        c.add_argument(
            "--print-request", action="store_true", help="print the request as JSON (for grpcurl) instead of calling"
        )
        add_robustness_arguments(c)
        return c

    c = fleet_call("optimize", "plan a fleet within the call")
    c.add_argument("--out", type=Path, help="write plan.json and CSV tables here")
    c.set_defaults(func=cmd_optimize)
    c = fleet_call("submit", "queue a plan job")
    c.add_argument("--request-id", default="", help="idempotency key: resubmitting returns the same job")
    c.add_argument("--watch", action="store_true", help="follow the job's progress until it ends")
    c.set_defaults(func=cmd_submit)
    c = calls.add_parser("watch", help="follow a job's progress until it ends")
    c.add_argument("job_id")
    c.set_defaults(func=cmd_watch)
    c = calls.add_parser("get", help="show a job, and its plan once done")
    c.add_argument("job_id")
    c.add_argument("--out", type=Path, help="write plan.json and CSV tables here")
    c.set_defaults(func=cmd_get)
    c = calls.add_parser("list", help="list jobs, newest first")
    c.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    c.set_defaults(func=cmd_list)
    c = calls.add_parser("cancel", help="cancel a queued or running job")
    c.add_argument("job_id")
    c.set_defaults(func=cmd_cancel)
    c = calls.add_parser("evaluate", help="score a plan (or a what-if allocation) on scenarios")
    c.add_argument("--plan-id", default="", help="a stored plan: its fleet and allocation are the defaults")
    c.add_argument("--fleet", type=Path, help="fleet file to score on (default: the plan's)")
    c.add_argument("--allocation", type=Path, help="plan.json whose allocation to score (default: the plan's)")
    c.add_argument("--scenarios", type=int, help="number of scenarios")
    c.add_argument("--seed", type=int, help="random seed")
    c.add_argument("--stream", type=int, help="0 the plan's scenarios, 1 out-of-sample, 2+k SAA replication k")
    add_scenario_file_argument(c)
    c.add_argument("--json", action="store_true", help="print the response as JSON")
    c.set_defaults(func=cmd_evaluate)
    c = calls.add_parser("dispatch", help="which racks of a plan to run or curtail now")
    c.add_argument("plan_id")
    c.add_argument(
        "--price", action="append", default=[], metavar="SITE=USD_PER_MWH", help="current site price (repeatable)"
    )
    c.add_argument(
        "--spot",
        action="append",
        default=[],
        metavar="MARKET=USD_PER_MWH",
        help="current spot price of a market, for its sites without --price (repeatable)",
    )
    c.add_argument(
        "--available",
        action="append",
        default=[],
        metavar="SITE=MW",
        help="curtailment event: MW the site may draw now at the meter (repeatable)",
    )
    c.add_argument("--dr-call", action="append", default=[], metavar="SITE", help="DR call active at the site")
    c.add_argument("--hashprice", type=float, help="current hashprice, USD per PH/s per day")
    c.add_argument("--btc-price", type=float, help="BTC price, USD (with --network-hashrate, instead of --hashprice)")
    c.add_argument("--network-hashrate", type=float, help="network hashrate, EH/s")
    c.add_argument("--rack-ids", action="store_true", help="the rack ids to run and to curtail, as ranges")
    c.add_argument("--json", action="store_true", help="print the response as JSON")
    c.set_defaults(func=cmd_dispatch)
    c = calls.add_parser("health", help="standard gRPC health check; exit 0 when SERVING")
    c.add_argument("--service", default="", help="service name (default: the whole server)")
    c.set_defaults(func=cmd_health)


def add_scenario_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario-file",
        type=Path,
        help="your own scenarios (NPZ, docs/scenarios.md): uploaded (UploadScenarios), then used by id",
    )


def _uploaded_scenarios(client, args: argparse.Namespace) -> str:
    """Upload --scenario-file, if given; its scenario_set_id ("" without one)."""
    if args.scenario_file is None:
        return ""
    from services.messages import check_input_file

    check_input_file(args.scenario_file, "scenario file")
    uploaded = client.upload_scenarios(args.scenario_file, name=args.scenario_file.name)
    console.print(
        f"scenario_set_id {uploaded.scenario_set_id} ({uploaded.scenarios} scenarios x {uploaded.steps} steps)",
        highlight=False,
    )
    return uploaded.scenario_set_id


def _client(args: argparse.Namespace):
    from services.client import PlannerClient, TlsConfig

    token = args.token_file.read_text().strip() if args.token_file else None  # a file: not in `ps` output
    tls = None
    if args.tls_ca or args.client_cert:
        tls = TlsConfig(args.tls_ca, args.client_cert, args.client_key)
    return PlannerClient(args.target, timeout_s=args.timeout, token=token, tls=tls)


def _fleet(args: argparse.Namespace):
    from optimizer.fleet import load_fleet, with_overrides

    patch: dict = {}
    if args.scenarios is not None:
        patch["scenarios"] = {"count": args.scenarios}
    if args.time_limit is not None:
        patch["solver"] = {"time_limit_s": args.time_limit}
    return with_overrides(load_fleet(args.fleet), patch)


def _commitments(args: argparse.Namespace):
    from solvers.diagnose import Commitments

    return Commitments(accept_offers=tuple(args.accept_offer), convert_sites=tuple(args.convert_site))


def _rpc(fn):
    """Run a client call; a failed call prints its status and details and exits 1."""

    def wrapped(args: argparse.Namespace) -> int:
        from services.client import PlannerError

        try:
            return fn(args)
        except PlannerError as error:
            _print_error(error)
            return 1

    return wrapped


def _print_error(error) -> None:
    """One red line: the status, the message; field and constraint details only when the message lacks them."""
    from services.messages import tidy

    extra = [f"{p}: {d}" for p, d in error.field_violations if p not in error.message]
    extra += [f"{s}: {d}" for s, d in error.constraint_violations if s not in error.message]
    extra += [f"{limit}: {d}" for limit, d in error.quota_violations if limit not in error.message]
    line = tidy(" ".join([f"{error.code.name}: {error.message}", *(f"[{e}]" for e in extra)]))
    console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)


def _show_plan(plan, out: Path | None, fmt: str = "table") -> None:
    from services.tables import emit, output_console, plan_json, plan_tables, print_plan, write_plan_outputs

    out_console = output_console()
    if fmt == "json":
        print(json.dumps(plan_json(plan), indent=2))
    elif fmt == "csv":
        emit(plan_tables(plan)["allocation"], "csv")
    else:
        print_plan(plan, out_console)
    if plan.robustness is not None and fmt == "table":
        from services.report import print_robustness

        print_robustness(plan.robustness, out_console)
    if out is not None:
        paths = write_plan_outputs(plan, out)
        console.print(f"wrote {', '.join(str(p) for p in paths)}")


def _print_request(args: argparse.Namespace, request_type) -> int:
    from google.protobuf import json_format

    from services import convert
    from services.client import fleet_message, robustness_message

    request = request_type(fleet=fleet_message(_fleet(args)))
    request.commitments.CopyFrom(convert.commitments_to_message(_commitments(args)))
    robustness = robustness_overrides(args)
    if robustness is not None:
        request.robustness.CopyFrom(robustness_message(robustness))
    print(json_format.MessageToJson(request, preserving_proto_field_name=True))
    return 0


@_rpc
def cmd_optimize(args: argparse.Namespace) -> int:
    if args.print_request:
        from protos.hashpivot.v1.planner_service_pb2 import OptimizeRequest

        return _print_request(args, OptimizeRequest)
    with _client(args) as client:
        scenario_set_id = _uploaded_scenarios(client, args)
        reply = client.optimize(
            _fleet(args), _commitments(args), robustness=robustness_overrides(args), scenario_set_id=scenario_set_id
        )
    _show_plan(reply.plan, args.out, args.format)
    if args.format == "table":
        print(f"plan_id {reply.plan_id}")
    else:
        console.print(f"plan_id {reply.plan_id}")
    return 0


@_rpc
def cmd_submit(args: argparse.Namespace) -> int:
    if args.print_request:
        from protos.hashpivot.v1.planner_service_pb2 import SubmitPlanJobRequest

        return _print_request(args, SubmitPlanJobRequest)
    with _client(args) as client:
        scenario_set_id = _uploaded_scenarios(client, args)
        job = client.submit(
            _fleet(args), _commitments(args), args.request_id, robustness_overrides(args), scenario_set_id
        )
        if args.format == "table" or args.watch:
            print(f"job_id {job.job_id}")
        else:
            from services.tables import emit

            emit([{"job_id": job.job_id}], args.format)
        if args.watch:
            return _follow(client, job.job_id)
    return 0


@_rpc
def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, args.job_id)


def _follow(client, job_id: str) -> int:
    from protos.hashpivot.v1 import jobs_pb2

    tasks: dict[str, int] = {}
    job = None
    with Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[mip]}"),
        console=console,
    ) as bar:
        for job in client.watch(job_id):
            p = job.progress
            if p.stage and p.stage_total:
                if p.stage not in tasks:
                    tasks[p.stage] = bar.add_task(p.stage, total=p.stage_total, mip="")
                mip = ""
                if p.HasField("incumbent_usd"):
                    mip = f"incumbent ${p.incumbent_usd:,.0f}"
                    if p.HasField("bound_usd"):
                        mip += f" bound ${p.bound_usd:,.0f}"
                bar.update(tasks[p.stage], completed=p.stage_done, mip=mip)
    state = jobs_pb2.PlanJobState.Name(job.state).removeprefix("PLAN_JOB_STATE_").lower()
    print(f"job {job_id} {state}" + (f" plan_id {job.plan_id}" if job.plan_id else ""))  # one line in every format
    if job.HasField("status"):
        from services.client import PlannerError

        _print_error(PlannerError.from_status(job.status))
    return 0 if job.state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED else 1


@_rpc
def cmd_get(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with _client(args) as client:
        job, plan = client.get(args.job_id)
    if args.format != "csv" or plan is None:
        print(json_format.MessageToJson(job, preserving_proto_field_name=True))
    if plan is not None:
        _show_plan(plan.plan, args.out, args.format)
    return 0


@_rpc
def cmd_list(args: argparse.Namespace) -> int:
    from protos.hashpivot.v1 import jobs_pb2

    state = jobs_pb2.PlanJobState.Value(f"PLAN_JOB_STATE_{args.state.upper()}") if args.state else 0
    from services.tables import emit

    rows = []
    with _client(args) as client:
        for job in client.list_jobs(state):
            name = jobs_pb2.PlanJobState.Name(job.state).removeprefix("PLAN_JOB_STATE_").lower()
            rows.append(
                {
                    "job_id": job.job_id,
                    "state": name,
                    "fleet": job.fleet_name,
                    "stage": job.progress.stage,
                    "plan_id": job.plan_id,
                }
            )
    emit(rows, args.format, "plan jobs")  # ids are never cut (services/tables.py)
    return 0


@_rpc
def cmd_cancel(args: argparse.Namespace) -> int:
    from protos.hashpivot.v1 import jobs_pb2

    with _client(args) as client:
        job = client.cancel(args.job_id)
    state = jobs_pb2.PlanJobState.Name(job.state).removeprefix("PLAN_JOB_STATE_").lower()
    if args.format == "table":
        print(f"job {job.job_id} {state}")
    else:
        from services.tables import emit

        emit([{"job_id": job.job_id, "state": state}], args.format)
    return 0


@_rpc
def cmd_evaluate(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from optimizer.fleet import load_fleet
    from optimizer.plan_result import PlanResult

    allocation = None
    if args.allocation is not None:
        allocation = PlanResult.model_validate(json.loads(args.allocation.read_text()))
    fleet = load_fleet(args.fleet) if args.fleet else None
    with _client(args) as client:
        response = client.evaluate(
            args.plan_id,
            fleet,
            allocation,
            count=args.scenarios,
            seed=args.seed,
            stream=args.stream,
            scenario_set_id=_uploaded_scenarios(client, args),
        )
    if args.json or args.format == "json":
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
        return 0
    from services.tables import emit, new_table, output_console

    p = response.profit
    columns = ("mean", "std", "P5", "P50", "P95", "VaR", "CVaR", "worst", "risk objective")
    values = (p.mean_usd, p.std_usd, p.p5_usd, p.p50_usd, p.p95_usd, p.var_usd, p.cvar_usd, p.worst_usd)
    values = (*values, response.risk_objective_usd)
    if args.format == "csv":
        emit([dict(zip(columns, values, strict=True))], "csv")
        return 0
    table = new_table(f"profit over {response.scenario_count} scenarios (USD)", columns)
    table.add_row(*(f"{v:,.0f}" for v in values))
    output_console().print(table)
    return 0


@_rpc
def cmd_dispatch(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from protos.hashpivot.v1 import planner_service_pb2

    with _client(args) as client:
        response = client.dispatch(
            args.plan_id,
            _pairs(args.price, "--price", "SITE=USD_PER_MWH"),
            args.hashprice,
            args.btc_price,
            args.network_hashrate,
            include_rack_ids=args.rack_ids,
            spot_price_usd_per_mwh_by_market=_pairs(args.spot, "--spot", "MARKET=USD_PER_MWH"),
            available_mw_by_site=_pairs(args.available, "--available", "SITE=MW"),
            dr_call_sites=tuple(args.dr_call),
        )
    if args.json or args.format == "json":
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
        return 0
    from services.tables import emit, new_table, output_console

    columns = ("group", "site", "action", "run/racks", "MW", "price $/MWh", "breakeven $/MWh", "margin $/rack-h")
    table = new_table(f"dispatch at {response.hashprice_usd_per_ph_day:.2f} $/PH/day", columns, columns[:3])
    actions = {
        planner_service_pb2.RACK_ACTION_RUN: "run",
        planner_service_pb2.RACK_ACTION_CURTAIL: "curtail",
        planner_service_pb2.RACK_ACTION_RUN_PARTIAL: "run part",
    }
    rows = [
        (
            g.group,
            g.site,
            actions.get(g.action, "?"),
            f"{g.racks_run}/{g.racks}",
            f"{g.mw:.2f}",
            f"{g.power_price_usd_per_mwh:.1f}",
            f"{g.breakeven_power_price_usd_per_mwh:.1f}",
            f"{g.margin_usd_per_rack_hour:.2f}",
        )
        for g in response.groups
    ]
    if args.format == "csv":
        emit([dict(zip(columns, row, strict=True)) for row in rows], "csv")
        return 0
    for row in rows:
        table.add_row(*row)
    output_console().print(table)
    if args.rack_ids:
        _print_rack_ids(response)
    for site in response.sites:
        limit = f"{site.available_mw:.2f} MW available" if site.HasField("available_mw") else "no event"
        call = f", DR call ({site.dr_commitment_mw:.2f} MW committed)" if site.dr_call else ""
        shed = f", AI shed {site.shed_ai_mw:.2f} MW" if site.shed_ai_mw > 0 else ""
        print(f"site {site.site}: {limit}{call}; AI {site.ai_load_mw:.2f} MW, mining {site.run_mw:.2f} MW{shed}")
    print(
        f"run {response.racks_run} racks ({response.run_mw:.2f} MW), curtail {response.racks_curtailed} "
        f"({response.curtailed_mw:.2f} MW)"
    )
    return 0


def _print_rack_ids(response) -> None:
    from optimizer.rack_ranges import label, split
    from services.convert import rack_ranges_from_message

    for g in response.groups:
        run, curtail = split(rack_ranges_from_message(g.rack_ranges), g.racks_run)
        parts = [f"{verb} {label(blocks)}" for verb, blocks in (("run", run), ("curtail", curtail)) if blocks]
        print(f"{g.group}: {'; '.join(parts)}")


def _pairs(items: list[str], flag: str, form: str) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"{flag} {item!r}: expected {form}") from None
    return out


def cmd_health(args: argparse.Namespace) -> int:
    from services.healthcheck import check

    status = check(args.target, args.service, timeout_s=args.timeout or 5.0)
    if args.format == "table":
        print(status)
    else:
        from services.tables import emit

        emit([{"service": args.service, "status": status}], args.format)
    return 0 if status == "SERVING" else 1
