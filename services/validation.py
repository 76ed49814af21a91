"""Bounds every request obeys before a handler looks at it: finite numbers, known enum values,
bounded strings, lists and maps. One walk over the message descriptor, so a field added to the
contract is covered without code here; each problem names the field's path in the request.
"""

from __future__ import annotations

import math

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

MAX_STRING_CHARS = 256  # ids and names; no field of the contract needs more
MAX_ITEMS = 5_000  # entries of any one repeated field or map (admission bounds the work separately)
MAX_ABS_NUMBER = 1e12  # USD, MW, TH/s, ...: a magnitude past this is a typo or an attack (1e308 overflows sums)
MAX_CHUNK_BYTES = 1024 * 1024  # one UploadScenarios chunk (clients send this size; the server refuses more)
MAX_VIOLATIONS = 20  # stop collecting: one bad list must not produce a megabyte of violations

_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


class _Collector:
    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []

    @property
    def full(self) -> bool:
        return len(self.violations) >= MAX_VIOLATIONS

    def add(self, path: str, problem: str) -> None:
        if not self.full:
            self.violations.append((path, problem))


def request_violations(message: Message) -> list[tuple[str, str]]:
    """(field path, problem) for every out-of-bounds value of the request, at most MAX_VIOLATIONS."""
    found = _Collector()
    _walk(message, "", found)
    return found.violations


def _walk(message: Message, prefix: str, found: _Collector) -> None:
    for field, value in message.ListFields():
        if found.full:
            return
        path = f"{prefix}.{field.name}" if prefix else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _check_map(field, value, path, found)
        elif field.is_repeated:
            if len(value) > MAX_ITEMS:
                found.add(path, f"at most {MAX_ITEMS} entries (got {len(value)})")
                continue
            for index, item in enumerate(value):
                _check_value(field, item, f"{path}[{index}]", found)
        else:
            _check_value(field, value, path, found)


def _check_map(field: FieldDescriptor, value, path: str, found: _Collector) -> None:
    if len(value) > MAX_ITEMS:
        found.add(path, f"at most {MAX_ITEMS} entries (got {len(value)})")
        return
    key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
    for key, item in value.items():
        _check_value(key_field, key, f"{path}[{str(key)[:40]!r}]", found)
        _check_value(value_field, item, f"{path}[{str(key)[:40]!r}]", found)


def _check_value(field: FieldDescriptor, value, path: str, found: _Collector) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        _walk(value, path, found)
    elif field.type in _FLOATS:
        if not math.isfinite(value):
            found.add(path, f"must be a finite number (got {value})")
        elif abs(value) > MAX_ABS_NUMBER:
            found.add(path, f"magnitude must be at most {MAX_ABS_NUMBER:g} (got {value:g})")
    elif field.type == FieldDescriptor.TYPE_ENUM:
        if field.enum_type.values_by_number.get(value) is None:
            names = ", ".join(v.name for v in field.enum_type.values)
            found.add(path, f"unknown value {value}; one of {names}")
    elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        if len(value) > MAX_STRING_CHARS:
            found.add(path, f"at most {MAX_STRING_CHARS} characters (got {len(value)})")
