"""Structured logs: every line carries the request and job it belongs to.

`bind(...)` adds fields (rpc, caller, request_id, job_id) to the current context (contextvars, so a
call's fields follow it into the threads asyncio.to_thread starts and never leak to other calls).
`--log-format json` writes one JSON object per line for log shippers; text appends the fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

_FIELDS: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("hashpivot_log_fields", default={})  # noqa: B039 - never mutated, only replaced


def bind(**fields: str) -> None:
    """Add fields to every log line of the current call or job."""
    _FIELDS.set({**_FIELDS.get(), **fields})


def fields() -> dict[str, str]:
    return _FIELDS.get()


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.context = _FIELDS.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "context", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = getattr(record, "context", {})
        return text + "".join(f" {k}={v}" for k, v in context.items()) if context else text


def configure_logging(style: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    if style == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
