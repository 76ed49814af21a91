"""What every hashpivot handler does around its work: check the request's bounds, turn errors into statuses.

Shared by the PlannerService and SweepService handlers (services/servicer.py, services/sweep_servicer.py)
and the Dispatch handler the Dispatch fronts run too (services/dispatcher.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import grpc

from services.errors import abort, invalid_argument, to_service_error
from services.validation import request_violations


def handle_errors(method: Callable) -> Callable:
    """Check the request's bounds, then turn domain and solver errors into a status with details."""

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            check_bounds(request)
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            await abort_with(context, exc)

    return unary


def handle_stream_errors(method: Callable) -> Callable:
    @functools.wraps(method)
    async def stream(self, request, context):
        try:
            check_bounds(request)
            async for response in method(self, request, context):
                yield response
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc)

    return stream


def check_bounds(request) -> None:
    violations = request_violations(request)
    if violations:
        raise invalid_argument(violations)


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    await abort(context, to_service_error(exc))
