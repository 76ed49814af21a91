"""Protobuf <-> domain objects, generically by field name.

The contract (protos/hashpivot/v1) mirrors the pydantic models field for field, so translation walks
the message descriptor and the model together instead of copying fields by hand: a field added to
both sides needs no code here. Conventions:
- enums: a domain value "time_limit" is the proto value SOLVE_STATUS_TIME_LIMIT (enum name in
  UPPER_SNAKE as prefix); the *_UNSPECIFIED zero means "not set".
- presence: `optional` scalars and message fields left unset are left out of the dict, so the
  pydantic default applies (or None, for a field the model requires but allows to be None); plain
  proto3 scalars are always copied; an empty repeated field takes the model's default when it has
  one (e.g. `months`: every month).
- field paths: pydantic's "sites.1.capacity_mw" is the request's "fleet.sites[1].capacity_mw".
Domain fields the proto lacks are reported (never silently lost in tests: test_contract.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from optimizer.allocation import MODES, Allocation, Mode
from optimizer.fleet import Fleet, FleetError, parse_fleet
from optimizer.lifecycles import plan_grid
from optimizer.plan_result import PlanResult
from optimizer.rack_ranges import RackRange
from optimizer.robustness import RobustnessSettings, allocation_from_plan
from protos.hashpivot.v1 import fleet_pb2, jobs_pb2, plan_pb2, planner_service_pb2
from solvers.diagnose import Commitments

log = logging.getLogger(__name__)

_ID_LISTS = ("markets", "machines", "sites", "rack_groups", "lease_offers")  # fleet lists keyed by `id`


# ---------------------------------------------------------------------------------------------
# Generic walk


def enum_prefix(descriptor: EnumDescriptor) -> str:
    """CONTRACT_TYPE_ for ContractType: the Google API style prefix of every value."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).upper() + "_"


def enum_number(descriptor: EnumDescriptor, value: Any) -> int | None:
    """Proto enum number of a domain value ("cvar", Objective.CVAR, or already a number)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, int):
        return value
    if value == "":
        return 0  # an empty domain value is "not set"
    found = descriptor.values_by_name.get(enum_prefix(descriptor) + str(value).upper())
    return None if found is None else found.number


def enum_value(descriptor: EnumDescriptor, number: int) -> str | None:
    """Domain value of a proto enum number; None for *_UNSPECIFIED (not set)."""
    if number == 0:
        return None
    found = descriptor.values_by_number.get(number)
    if found is None:
        return None
    return found.name.removeprefix(enum_prefix(descriptor)).lower()


def _items(data: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(data, BaseModel):
        return ((name, getattr(data, name)) for name in type(data).model_fields)
    if isinstance(data, Mapping):
        return data.items()
    raise TypeError(f"cannot convert {type(data).__name__} to a message")


def _scalar(field: FieldDescriptor, value: Any, path: str, dropped: list[str]) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        number = enum_number(field.enum_type, value)
        if number is None:
            dropped.append(f"{path}={getattr(value, 'value', value)!r}")
            return 0
        return number
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.date):
        return value.isoformat()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float(value)
    if field.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64):
        return int(value)
    return value


def fill_message(message: Message, data: Any, path: str = "", dropped: list[str] | None = None) -> list[str]:
    """Copy a pydantic model or dict into `message` by field name; returns the paths it had no field for."""
    dropped = [] if dropped is None else dropped
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in _items(data):
        if value is None:
            continue  # unset: nothing to carry
        here = f"{path}.{key}" if path else key
        field = fields.get(key)
        if field is None:
            dropped.append(here)
            continue
        target = getattr(message, key)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.message_type is not None:
                    fill_message(target[k], v, f"{here}[{k}]", dropped)
                else:
                    target[k] = _scalar(value_field, v, f"{here}[{k}]", dropped)
        elif field.is_repeated:
            for i, item in enumerate(value):
                if field.message_type is not None:
                    fill_message(target.add(), item, f"{here}[{i}]", dropped)
                else:
                    target.append(_scalar(field, item, f"{here}[{i}]", dropped))
        elif field.message_type is not None:
            target.SetInParent()
            fill_message(target, value, here, dropped)
        elif _unknown_number(field, value):
            continue  # an unknown bound or gap stays unset rather than travelling as Infinity
        else:
            setattr(message, key, _scalar(field, value, here, dropped))
    return dropped


def _unknown_number(field: FieldDescriptor, value: Any) -> bool:
    return field.has_presence and isinstance(value, float) and not math.isfinite(value)


def message_to_dict(message: Message) -> dict[str, Any]:
    """The fields of `message` that are set, as plain Python values with domain enum values."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {
                k: (message_to_dict(v) if value_field.message_type is not None else _plain(value_field, v))
                for k, v in value.items()
            }
        elif field.is_repeated:
            out[field.name] = [
                message_to_dict(v) if field.message_type is not None else _plain(field, v) for v in value
            ]
        elif field.has_presence and not message.HasField(field.name):
            continue
        elif field.message_type is not None:
            out[field.name] = message_to_dict(value)
        else:
            plain = _plain(field, value)
            if plain is not None:
                out[field.name] = plain
    return out


def _plain(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_value(field.enum_type, value)
    return value


def missing_fields(model: type[BaseModel], descriptor: Descriptor, path: str = "") -> list[str]:
    """Fields of the pydantic model (recursively) that the message lacks: the contract's gaps."""
    gaps = []
    for name, info in model.model_fields.items():
        here = f"{path}.{name}" if path else name
        field = descriptor.fields_by_name.get(name)
        if field is None:
            gaps.append(here)
            continue
        nested = _nested_model(info.annotation)
        if nested is not None and field.message_type is not None and not field.message_type.GetOptions().map_entry:
            gaps.extend(missing_fields(nested, field.message_type, here))
    return gaps


def conform(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Adjust a message_to_dict result (in place) to the model's idea of "not set", recursively.

    A field the message left unset that the model requires but allows to be None becomes None; an
    empty repeated field whose model field has a default is dropped, so the default applies (proto3
    cannot tell an empty list from an unset one).
    """
    for name, info in model.model_fields.items():
        if name not in data:
            if info.is_required() and _admits_none(info.annotation):
                data[name] = None
            continue
        value = data[name]
        if isinstance(value, list) and not value and not info.is_required():
            del data[name]
            continue
        nested = _nested_model(info.annotation)
        if nested is None or value is None:
            continue
        if isinstance(value, list):
            items = value
        elif _is_mapping_annotation(info.annotation):
            items = list(value.values())
        else:
            items = [value]
        for item in items:
            if isinstance(item, dict):
                conform(nested, item)
    return data


def _admits_none(annotation: Any) -> bool:
    return annotation is None or type(None) in typing.get_args(annotation)


def _is_mapping_annotation(annotation: Any) -> bool:
    """dict[str, X] (possibly inside X | None): its values, not itself, are the nested models."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_mapping_annotation(arg) for arg in typing.get_args(annotation))
    return origin is dict


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside X, list[X], X | None, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------------
# Fleet


def fleet_to_message(fleet: Fleet | Mapping[str, Any]) -> fleet_pb2.Fleet:
    """A fleet (validated, or a raw fleet-file mapping) as a message; unknown keys raise naming the field.

    Settings left at their defaults are left out: the server applies the same defaults, and a field
    the contract does not carry yet only matters when a fleet actually uses it.
    """
    message = fleet_pb2.Fleet()
    if isinstance(fleet, Fleet):
        fleet = fleet.model_dump(mode="python", exclude_defaults=True)
    dropped = fill_message(message, fleet)
    if dropped:
        raise FleetError([_contract_gap(path) for path in dropped])
    return message


def _contract_gap(dropped: str) -> tuple[str, str]:
    path, _, value = dropped.partition("=")
    if value:
        return path, f"value {value} is not in this version of the fleet contract"
    return path, "no such field in this version of the fleet contract"


def fleet_from_message(message: fleet_pb2.Fleet) -> Fleet:
    """Validate a fleet message exactly as a fleet file; FleetError paths are proto field paths."""
    return parse_fleet(conform(Fleet, message_to_dict(message)))


def field_path(path: str, prefix: str = "") -> str:
    """pydantic's "sites.1.ai.min_mw" as the proto path "fleet.sites[1].ai.min_mw" (with prefix "fleet")."""
    if path in ("<root>", "<file>", ""):
        return prefix or "<root>"
    out = ""
    for part in path.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return f"{prefix}.{out}" if prefix else out


# ---------------------------------------------------------------------------------------------
# Plan


def plan_to_message(plan: PlanResult, plan_id: str = "", created: dt.datetime | None = None) -> plan_pb2.Plan:
    message = plan_pb2.Plan(plan_id=plan_id)
    if created is not None:
        message.create_time.CopyFrom(timestamp(created))
    dropped = fill_message(message, plan)
    if dropped:
        log.warning("plan fields the contract does not carry yet: %s", ", ".join(dropped))
    return message


def plan_from_message(message: plan_pb2.Plan) -> PlanResult:
    data = message_to_dict(message)
    for extra in ("plan_id", "create_time"):
        data.pop(extra, None)
    data["solver"].setdefault("status", "other")  # a status this contract version does not know
    return PlanResult.model_validate(conform(PlanResult, data))


def plan_allocation(plan: PlanResult) -> Allocation:
    """The first-stage decision a plan holds (racks, conversions, leases, demand-response MW)."""
    return allocation_from_plan(plan)


# ---------------------------------------------------------------------------------------------
# Robustness settings


def robustness_settings_from_message(message: plan_pb2.RobustnessSettings, prefix: str = "robustness"):
    """Validated settings; unset fields take the defaults of `hashpivot plan`. Errors name request paths."""
    try:
        return RobustnessSettings.model_validate(message_to_dict(message))
    except ValidationError as exc:
        raise FleetError(
            [
                (f"{prefix}.{'.'.join(str(p) for p in e['loc'])}", f"{e['msg']} (got {e['input']!r})")
                for e in exc.errors()
            ]
        ) from None


def robustness_settings_to_message(settings: RobustnessSettings) -> plan_pb2.RobustnessSettings:
    message = plan_pb2.RobustnessSettings()
    fill_message(message, settings)
    return message


# ---------------------------------------------------------------------------------------------
# Allocation and commitments (request inputs checked against the fleet)


def allocation_from_message(message: planner_service_pb2.Allocation, fleet: Fleet) -> Allocation:
    """The allocation of a request; ids that are not in the fleet raise FleetError naming the field."""
    problems: list[tuple[str, str]] = []
    groups = {g.id for g in fleet.rack_groups}
    racks: dict[str, dict[Mode, int]] = {}
    for i, counts in enumerate(message.racks):
        if counts.group not in groups:
            problems.append((f"allocation.racks[{i}].group", f"unknown rack group {counts.group!r}"))
        elif counts.group in racks:
            problems.append((f"allocation.racks[{i}].group", f"rack group {counts.group!r} given twice"))
        racks[counts.group] = {m: getattr(counts, f"racks_{m.value}") for m in MODES}
    for group in fleet.rack_groups:
        if group.id not in racks:
            problems.append(("allocation.racks", f"rack group {group.id!r} missing"))
    ai_sites = {s.id for s in fleet.sites if s.ai is not None}
    for i, site in enumerate(message.converted_sites):
        if site not in ai_sites:
            problems.append((f"allocation.converted_sites[{i}]", f"{site!r} is not an AI-ready site of the fleet"))
    offers = {o.id: o for o in fleet.lease_offers}
    dr_sites = {s.id for s in fleet.sites}
    for site, mw in message.dr_mw_by_site.items():
        if site not in dr_sites:
            problems.append((f"allocation.dr_mw_by_site[{site}]", f"unknown site {site!r}"))
        if not (mw >= 0 and math.isfinite(mw)):
            problems.append((f"allocation.dr_mw_by_site[{site}]", f"must be a finite number >= 0 (got {mw})"))
    lease: dict[tuple[str, str], float] = {}
    for i, item in enumerate(message.leases):
        if item.offer not in offers:
            problems.append((f"allocation.leases[{i}].offer", f"unknown lease offer {item.offer!r}"))
        elif item.site not in offers[item.offer].sites:
            problems.append((f"allocation.leases[{i}].site", f"offer {item.offer!r} is not open at {item.site!r}"))
        if not (item.mw >= 0 and math.isfinite(item.mw)):
            problems.append((f"allocation.leases[{i}].mw", f"must be a finite number >= 0 (got {item.mw})"))
        lease[(item.offer, item.site)] = lease.get((item.offer, item.site), 0.0) + item.mw
    lifecycles = {c.group: dict(c.lifecycles) for c in message.racks if c.lifecycles}
    problems += _lifecycle_problems(fleet, message)
    if problems:
        raise FleetError(problems)
    dr_mw = {site: mw for site, mw in message.dr_mw_by_site.items() if mw > 0}
    starts = {site: int(message.conversion_start.get(site, 0)) for site in message.converted_sites}
    return Allocation(
        racks=racks,
        converted_sites=frozenset(message.converted_sites),
        lease_mw=lease,
        dr_mw=dr_mw,
        lifecycles=lifecycles,
        conversion_start=starts,
        purchases={k: v for k, v in message.purchases.items() if v},
    )


def _lifecycle_problems(fleet: Fleet, message: planner_service_pb2.Allocation) -> list[tuple[str, str]]:
    """Lifecycle keys, start options and purchases that the fleet does not offer."""
    grid = plan_grid(fleet)
    problems = []
    options = {g.id: {life.key for life in grid.lifecycles[i]} for i, g in enumerate(fleet.rack_groups)}
    for i, counts in enumerate(message.racks):
        for key, n in counts.lifecycles.items():
            if key not in options.get(counts.group, set()):
                problems.append((f"allocation.racks[{i}].lifecycles[{key}]", f"no such option for {counts.group!r}"))
            elif n < 0:
                problems.append((f"allocation.racks[{i}].lifecycles[{key}]", f"must be >= 0 (got {n})"))
    for site, k in message.conversion_start.items():
        starts = grid.conversion_start.get(site)
        if starts is None or not 0 <= k < len(starts):
            problems.append((f"allocation.conversion_start[{site}]", f"no start option {k} at {site!r}"))
    known = {lot.key for lot in grid.purchase_lots}  # an option's id, or "id@mM" at a recourse date
    for option_id, n in message.purchases.items():
        if option_id not in known or n < 0:
            problems.append((f"allocation.purchases[{option_id}]", f"unknown purchase option or negative ({n})"))
    return problems


def commitments_from_message(message: planner_service_pb2.Commitments, fleet: Fleet) -> Commitments:
    problems = []
    offers = {o.id for o in fleet.lease_offers}
    for i, offer in enumerate(message.accept_offers):
        if offer not in offers:
            problems.append((f"commitments.accept_offers[{i}]", f"unknown lease offer {offer!r}"))
    ai_sites = {s.id for s in fleet.sites if s.ai is not None}
    for i, site in enumerate(message.convert_sites):
        if site not in ai_sites:
            problems.append((f"commitments.convert_sites[{i}]", f"{site!r} is not an AI-ready site of the fleet"))
    if problems:
        raise FleetError(problems)
    return Commitments(accept_offers=tuple(message.accept_offers), convert_sites=tuple(message.convert_sites))


def commitments_to_message(commitments: Commitments) -> planner_service_pb2.Commitments:
    return planner_service_pb2.Commitments(
        accept_offers=list(commitments.accept_offers), convert_sites=list(commitments.convert_sites)
    )


def allocation_to_message(allocation: Allocation) -> planner_service_pb2.Allocation:
    return planner_service_pb2.Allocation(
        racks=[
            planner_service_pb2.GroupCounts(
                group=g,
                lifecycles=allocation.lifecycles.get(g, {}),
                **{f"racks_{m.value}": counts.get(m, 0) for m in MODES},
            )
            for g, counts in allocation.racks.items()
        ],
        conversion_start=dict(allocation.conversion_start),
        purchases=dict(allocation.purchases),
        converted_sites=sorted(allocation.converted_sites),
        leases=[
            planner_service_pb2.LeaseAssignment(offer=o, site=s, mw=mw) for (o, s), mw in allocation.lease_mw.items()
        ],
        dr_mw_by_site=dict(allocation.dr_mw),
    )


def timestamp(moment: dt.datetime | float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    if isinstance(moment, dt.datetime):
        out.FromDatetime(moment)
    else:
        out.FromNanoseconds(int(moment * 1e9))
    return out


# ---------------------------------------------------------------------------------------------
# Jobs, plan summaries, dispatch replies (message building only; the servicer stays thin)


def job_state_number(state: enum.Enum) -> int:
    """services.store.JobState -> PlanJobState number (by name: RUNNING -> PLAN_JOB_STATE_RUNNING)."""
    return jobs_pb2.PlanJobState.Value(f"PLAN_JOB_STATE_{state.name}")


def job_to_message(job) -> jobs_pb2.PlanJob:
    """services.store.JobRecord -> PlanJob."""
    message = jobs_pb2.PlanJob(
        job_id=job.job_id,
        request_id=job.request_id,
        state=job_state_number(job.state),
        fleet_name=job.fleet_name,
        plan_id=job.plan_id,
        cancel_requested=job.cancel_requested,
        attempts=job.attempts,
        create_time=timestamp(job.created_at),
        scenario_set_id=job.scenario_set_id,
    )
    fill_message(message.progress, job.progress.as_dict())
    if job.started_at is not None:
        message.start_time.CopyFrom(timestamp(job.started_at))
    if job.ended_at is not None:
        message.end_time.CopyFrom(timestamp(job.ended_at))
    if job.error is not None:
        message.status.CopyFrom(job.error.to_rpc_status())
        message.error.CopyFrom(job.error.to_job_error())  # deprecated, kept for older clients
    if job.robustness is not None:
        message.robustness.CopyFrom(robustness_settings_to_message(job.robustness))
    return message


def scenario_set_to_message(info) -> planner_service_pb2.ScenarioSet:
    """services.store.ScenarioSetInfo -> ScenarioSet."""
    return planner_service_pb2.ScenarioSet(
        scenario_set_id=info.scenario_set_id,
        name=info.name,
        scenarios=info.scenarios,
        steps=info.steps,
        step_hours=info.step_hours,
        markets=list(info.markets),
        size_bytes=info.size_bytes,
        create_time=timestamp(info.created_at),
    )


def plan_summary_to_message(summary) -> planner_service_pb2.PlanSummary:
    """services.store.PlanSummary -> PlanSummary."""
    return planner_service_pb2.PlanSummary(
        plan_id=summary.plan_id,
        job_id=summary.job_id,
        fleet_name=summary.fleet_name,
        create_time=timestamp(summary.created_at),
    )


_ACTIONS = (  # index 0: every rack of the group runs, 1: none, 2: some (a limit or a DR call binds)
    planner_service_pb2.RACK_ACTION_RUN,
    planner_service_pb2.RACK_ACTION_CURTAIL,
    planner_service_pb2.RACK_ACTION_RUN_PARTIAL,
)


def _rack_range(block: RackRange) -> plan_pb2.RackRange:
    return plan_pb2.RackRange(prefix=block.prefix, first=block.first, count=block.count, digits=block.digits)


def rack_ranges_from_message(blocks) -> list[RackRange]:
    """RackRange messages (a Dispatch reply's) -> optimizer.rack_ranges.RackRange, whose ids() lists them."""
    return [RackRange(prefix=b.prefix, first=b.first, count=b.count, digits=b.digits) for b in blocks]


def dispatch_response(plan_id: str, table, decision, include_rack_ids: bool) -> planner_service_pb2.DispatchResponse:
    """optimizer.dispatch's table and decision -> DispatchResponse (plain floats: one conversion per array)."""
    racks, racks_run, mw = table.racks.tolist(), decision.racks_run.tolist(), table.meter_mw.tolist()
    run_mw = [n * rack_mw for n, rack_mw in zip(racks_run, table.rack_meter_mw.tolist(), strict=True)]
    columns = zip(
        table.group_ids,
        table.group_sites,
        racks,
        mw,
        decision.power_price_usd_per_mwh.tolist(),
        decision.breakeven_power_price_usd_per_mwh.tolist(),
        decision.margin_usd_per_rack_hour.tolist(),
        table.rack_ranges,
        racks_run,
        run_mw,
        strict=True,
    )
    groups = [
        planner_service_pb2.GroupDispatch(
            group=group,
            site=site,
            action=_ACTIONS[0 if n_run == n else 1 if n_run == 0 else 2],
            racks=n,
            mw=group_mw,
            power_price_usd_per_mwh=price,
            breakeven_power_price_usd_per_mwh=breakeven,
            margin_usd_per_rack_hour=margin,
            rack_ranges=[_rack_range(r) for r in ranges] if include_rack_ids else (),
            racks_run=n_run,
            run_mw=group_run_mw,
        )
        for group, site, n, group_mw, price, breakeven, margin, ranges, n_run, group_run_mw in columns
    ]
    response = planner_service_pb2.DispatchResponse(
        plan_id=plan_id,
        hashprice_usd_per_ph_day=decision.hashprice_usd_per_ph_day,
        groups=groups,
        racks_run=sum(racks_run),
        racks_curtailed=sum(racks) - sum(racks_run),
        run_mw=sum(run_mw),
        curtailed_mw=sum(mw) - sum(run_mw),
    )
    for state in decision.sites:
        fill_message(response.sites.add(), dataclasses.asdict(state))
    return response
