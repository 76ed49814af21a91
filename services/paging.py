"""List pagination as AIP-158 asks: opaque keyset tokens bound to the filter, page_size coerced.

A token holds the sort key of the last item of the page (created_at, id) and a digest of the filter
(method, caller's owner view, state) it was issued for; reusing it with another filter, or
tampering with it, is INVALID_ARGUMENT. Keyset (not offset) paging gives stable pages while jobs
are added, and no offset arithmetic an attacker could overflow.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass

from services.errors import invalid_argument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TOKEN_CHARS = 512
TOKEN_VERSION = 1


@dataclass(frozen=True)
class PageRequest:
    size: int
    after: tuple[float, str] | None  # sort key of the previous page's last item
    filter_digest: str


def page_size(requested: int) -> int:
    """AIP-158: 0 means the default, larger than the maximum means the maximum; negative is an error."""
    if requested < 0:
        raise invalid_argument([("page_size", f"must not be negative (got {requested})")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def filter_digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def page_request(requested_size: int, token: str, *filter_parts: object) -> PageRequest:
    digest = filter_digest(*filter_parts)
    return PageRequest(page_size(requested_size), decode_token(token, digest), digest)


def encode_token(after: tuple[float, str], digest: str) -> str:
    payload = json.dumps({"v": TOKEN_VERSION, "t": after[0], "i": after[1], "f": digest}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(token: str, digest: str) -> tuple[float, str] | None:
    if not token:
        return None
    bad = invalid_argument([("page_token", "not a page token this server issued")])
    if len(token) > MAX_TOKEN_CHARS:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, dict) or data.get("v") != TOKEN_VERSION:
        raise bad
    created, last_id = data.get("t"), data.get("i")
    if not isinstance(created, int | float) or isinstance(created, bool) or not math.isfinite(created):
        raise bad
    if not isinstance(last_id, str) or len(last_id) > 128:
        raise bad
    if data.get("f") != digest:
        raise invalid_argument([("page_token", "issued for a different filter: list again from the first page")])
    return float(created), last_id
