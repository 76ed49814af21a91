"""Uploaded scenario sets: a caller's own price paths, sent once in chunks and referenced by id.

`receive` takes the chunks of UploadScenarios, refuses an upload past the server's size limit as soon
as it passes it (nothing is stored), checks the file is a scenario file (optimizer/scenario_io.py:
the same checks as `hashpivot plan --scenario-file`) and stores the bytes as uploaded, owned by the
caller's tenant. `load` reads a set back for a request and checks it against that request's fleet
(power markets, steps, step length); another tenant's set is NOT_FOUND, like its plans and jobs.
"""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator

from optimizer.fleet import Fleet
from optimizer.scenario_io import ScenarioFileError, load_scenarios
from optimizer.scenarios import ScenarioSet
from services.admission import Limits
from services.errors import QuotaViolation, ServiceError, invalid_argument, not_found, resource_exhausted
from services.store import JobStore, ScenarioSetInfo, new_id
from services.validation import MAX_CHUNK_BYTES, MAX_STRING_CHARS


async def receive(chunks: AsyncIterator, store: JobStore, owner: str, limits: Limits) -> ScenarioSetInfo:
    """Read an upload's chunks, validate the file and store it; the stored set's description."""
    _check_quota(store, owner, limits)
    name, parts, size = "", [], 0
    async for message in chunks:
        if not parts and message.name:
            name = message.name
        if len(message.chunk) > MAX_CHUNK_BYTES:
            too_long = f"at most {MAX_CHUNK_BYTES:,} bytes per chunk (got {len(message.chunk):,})"
            raise invalid_argument([("chunk", too_long)])
        size += len(message.chunk)
        if size > limits.max_scenario_upload_bytes:
            raise _too_large(size, limits.max_scenario_upload_bytes)
        parts.append(message.chunk)
    if len(name) > MAX_STRING_CHARS:
        raise invalid_argument([("name", f"at most {MAX_STRING_CHARS} characters (got {len(name)})")])
    data = b"".join(parts)
    scenarios = _parse(data, "chunk")
    info = ScenarioSetInfo(
        scenario_set_id=new_id("scenarios"),
        owner=owner,
        name=name,
        created_at=time.time(),
        size_bytes=len(data),
        scenarios=scenarios.n_scenarios,
        steps=scenarios.n_steps,
        step_hours=scenarios.step_hours,
        markets=tuple(scenarios.markets),
    )
    store.save_scenario_set(info, data)
    return info


def load(store: JobStore, scenario_set_id: str, owner: str | None, fleet: Fleet, field: str) -> ScenarioSet:
    """The set's scenarios, checked against `fleet`; errors name the request `field` holding the id."""
    found = store.get_scenario_set(scenario_set_id, owner)
    if found is None:
        raise not_found("scenario set", scenario_set_id)
    _, data = found
    markets = [m.id for m in fleet.markets]
    return _parse(data, field, markets, fleet.horizon.n_steps, fleet.horizon.step_hours)


def _parse(data: bytes, field: str, *expected) -> ScenarioSet:
    try:
        return load_scenarios(io.BytesIO(data), *expected)
    except ScenarioFileError as exc:
        raise invalid_argument([(field, f"not a usable scenario file: {exc}")]) from None


def _check_quota(store: JobStore, owner: str, limits: Limits) -> None:
    stored, quota = store.count_scenario_sets(owner), limits.max_scenario_sets_per_caller
    if stored >= quota:
        raise resource_exhausted(
            f"max_scenario_sets_per_caller: {stored} scenario sets stored, limit {quota}; delete some first",
            [QuotaViolation("max_scenario_sets_per_caller", f"{stored} scenario sets stored, limit {quota}")],
        )


def _too_large(size: int, limit: int) -> ServiceError:
    description = f"upload size: more than {size:,} bytes received, limit {limit:,}; request field: chunk"
    return resource_exhausted(
        f"max_scenario_upload_bytes: the scenario file exceeds the server's limit of {limit:,} bytes",
        [QuotaViolation("max_scenario_upload_bytes", description)],
    )
