"""SweepService (protos/hashpivot/v1/sweep_service.proto): `hashpivot sweep` as a gRPC job.

A submitted sweep is validated point by point in the call (a bad value is INVALID_ARGUMENT naming
`inputs[i]`), then runs in a server thread: services.sweep.run_sweep fans its plans out on Ray.
Sweeps are kept in memory (the most recent MAX_SWEEPS): a restart forgets them, unlike plan jobs.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from optimizer.sweep import SweepInputError, Vary, tornado
from protos.hashpivot.v1 import sweep_service_pb2 as pb
from protos.hashpivot.v1 import sweep_service_pb2_grpc
from services.errors import invalid_argument, not_found
from services.handlers import handle_errors, handle_stream_errors
from services.servicer import _parse_fleet
from services.sweep import METRICS, check_points, run_sweep

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SweepService"].full_name
MAX_SWEEPS = 100
WATCH_POLL_S = 0.2


@dataclass
class _Sweep:
    sweep_id: str
    metric: str
    total: int
    state: int = pb.SWEEP_STATE_RUNNING
    done: int = 0
    rows: list[dict] = field(default_factory=list)
    bars: list = field(default_factory=list)
    error: str = ""
    changed: threading.Event = field(default_factory=threading.Event)

    def message(self) -> pb.SweepJob:
        job = pb.SweepJob(
            sweep_id=self.sweep_id,
            state=self.state,
            points_done=self.done,
            points_total=self.total,
            metric=self.metric,
            error=self.error,
        )
        for row in self.rows:
            job.points.append(_point(row))
        for bar in self.bars:
            job.tornado.append(
                pb.TornadoBar(
                    key=bar.key,
                    low_input=bar.low_input,
                    high_input=bar.high_input,
                    metric_at_low=bar.metric_at_low,
                    metric_at_high=bar.metric_at_high,
                    swing=bar.swing,
                )
            )
        return job


def _point(row: dict) -> pb.SweepPoint:
    point = pb.SweepPoint(varied=row["varied"], status=row["status"])
    for key, value in row.items():
        if key.endswith(":mode"):
            point.site_modes[key.removesuffix(":mode")] = value
    for name in ("objective_usd", "mean_usd", "p5_usd", "cvar_usd"):
        if row.get(name) is not None:
            setattr(point, name, row[name])
    for name in ("racks_mine", "racks_ai", "racks_idle", "ai_mw"):
        if row.get(name) is not None:
            setattr(point, name, row[name])
    return point


class SweepServicer(sweep_service_pb2_grpc.SweepServiceServicer):
    def __init__(self) -> None:
        self._sweeps: OrderedDict[str, _Sweep] = OrderedDict()

    @handle_errors
    async def SubmitSweep(self, request, context):
        fleet = _parse_fleet(request)
        metric = request.metric or "mean"
        if metric not in METRICS:
            raise invalid_argument([("metric", f"one of {sorted(METRICS)}, got {metric!r}")])
        if not request.inputs:
            raise invalid_argument([("inputs", "at least one input to vary")])
        varies = []
        for i, given in enumerate(request.inputs):
            if len(given.values) < 2:
                raise invalid_argument([(f"inputs[{i}].values", "at least two values")])
            varies.append(Vary(given.key, tuple(given.values)))
        keys = [v.key for v in varies]
        data = fleet.model_dump(mode="json")
        try:
            points = check_points(data, varies, request.grid)
        except SweepInputError as exc:
            where = next((f"inputs[{i}]" for i, k in enumerate(keys) if k in exc.field), "inputs")
            raise invalid_argument([(where, f"{exc.field}: {exc}")]) from None
        sweep = _Sweep(sweep_id=f"sweep-{uuid.uuid4().hex[:12]}", metric=metric, total=len(points))
        self._sweeps[sweep.sweep_id] = sweep
        while len(self._sweeps) > MAX_SWEEPS:
            self._sweeps.popitem(last=False)
        threading.Thread(
            target=self._run, args=(sweep, data, varies, request.grid), name=sweep.sweep_id, daemon=True
        ).start()
        return pb.SubmitSweepResponse(sweep=sweep.message())

    def _run(self, sweep: _Sweep, data: dict, varies: list[Vary], grid: bool) -> None:
        def progress(done: int, total: int) -> None:
            sweep.done, sweep.total = done, total
            sweep.changed.set()

        try:
            rows = run_sweep(data, varies, grid, progress=progress)
            sweep.rows = rows
            if not grid:
                sweep.bars = tornado(rows, varies, METRICS[sweep.metric])
            sweep.state = pb.SWEEP_STATE_SUCCEEDED
        except Exception as exc:  # noqa: BLE001 - the sweep fails with its reason
            sweep.error = f"{type(exc).__name__}: {exc}"
            sweep.state = pb.SWEEP_STATE_FAILED
        sweep.changed.set()

    def _get(self, sweep_id: str) -> _Sweep:
        sweep = self._sweeps.get(sweep_id)
        if sweep is None:
            raise not_found("sweep", sweep_id)
        return sweep

    @handle_errors
    async def GetSweep(self, request, context):
        return pb.GetSweepResponse(sweep=self._get(request.sweep_id).message())

    @handle_stream_errors
    async def WatchSweep(self, request, context):
        sweep = self._get(request.sweep_id)
        last = None
        while True:
            finished = sweep.state != pb.SWEEP_STATE_RUNNING  # read first: the message below is at least as new
            message = sweep.message()
            if (message.state, message.points_done) != last:
                last = (message.state, message.points_done)
                yield pb.WatchSweepResponse(sweep=message)
            if finished:
                return
            sweep.changed.clear()
            await asyncio.to_thread(sweep.changed.wait, WATCH_POLL_S)
