"""Who is calling, and may they: bearer tokens, roles, tenants, and the grpc.aio interceptor that checks them.

Tokens are random strings the operator hands out; the server keeps only their SHA-256 (hex), so a
leaked tokens file does not leak tokens. A tokens file has one line per token:

    sha256:<hex digest of the token>  <caller>  <role>  [tenant]

(`#` starts a comment). `hashpivot token --caller alice --role planner` prints a new token and its
line. The file comes from --tokens-file or $HASHPIVOT_TOKENS_FILE; the lines themselves may also be
given in $HASHPIVOT_TOKENS (newline- or `;`-separated), e.g. from a secret store.

Roles: reader (get, list, watch), planner (reader + optimize, submit, cancel, evaluate, delete,
dispatch), automation (dispatch and get plan only: fleet controllers), admin (everything, and sees
every tenant's jobs and plans). Jobs and plans belong to the caller's tenant (default: the caller
itself): another tenant's ids answer NOT_FOUND, as if they did not exist. Put an automation token
in a planner's tenant to let it dispatch that planner's plans.

Health checking needs no token (load balancers); reflection needs any valid token.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import inspect
import itertools
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from services import logs

log = logging.getLogger(__name__)

TOKENS_FILE_ENV = "HASHPIVOT_TOKENS_FILE"
TOKENS_ENV = "HASHPIVOT_TOKENS"
TOKEN_ENV = "HASHPIVOT_TOKEN"  # the client's token
AUTHORIZATION = "authorization"
REQUEST_ID_HEADER = "x-request-id"
SERVICE_PREFIX = "/hashpivot.v1.PlannerService/"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
MAX_TOKEN_CHARS = 512  # longer headers are refused before hashing


class Role(enum.StrEnum):
    READER = "reader"
    PLANNER = "planner"
    AUTOMATION = "automation"
    ADMIN = "admin"


_READ = frozenset({"GetPlanJob", "ListPlanJobs", "WatchPlanJob", "GetPlan", "ListPlans"})
_PLAN = _READ | {"Optimize", "SubmitPlanJob", "CancelPlanJob", "Evaluate", "DeletePlan", "DeletePlanJob", "Dispatch"}
_PLAN |= {"UploadScenarios", "DeleteScenarioSet"}
ALLOWED_METHODS: dict[Role, frozenset[str]] = {
    Role.READER: _READ,
    Role.PLANNER: frozenset(_PLAN),
    Role.AUTOMATION: frozenset({"Dispatch", "GetPlan"}),
}


class TokenFileError(ValueError):
    """A tokens file or $HASHPIVOT_TOKENS line that cannot be read; names the line."""


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role
    tenant: str

    @property
    def owner(self) -> str:
        """Owner stamped on what this caller creates."""
        return self.tenant

    @property
    def sees(self) -> str | None:
        """Owner filter of this caller's queries: None (everything) for an admin."""
        return None if self.role is Role.ADMIN else self.tenant

    def may_call(self, method: str) -> bool:
        return self.role is Role.ADMIN or method in ALLOWED_METHODS[self.role]


ANONYMOUS = Caller("anonymous", Role.ADMIN, "anonymous")  # every caller of an --insecure server
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("hashpivot_caller", default=None)


def current_caller() -> Caller:
    """The authenticated caller of the RPC being handled (set by AuthInterceptor)."""
    caller = _CALLER.get()
    if caller is None:  # fail closed: a handler reached without the interceptor serves nobody
        raise PermissionError("no authenticated caller")
    return caller


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_line(token: str, caller: str, role: Role, tenant: str | None = None) -> str:
    return f"sha256:{hash_token(token)} {caller} {role.value}" + (f" {tenant}" if tenant else "")


def parse_token_lines(lines: Iterable[str], source: str) -> dict[str, Caller]:
    """{sha256 hex: caller} from token lines."""
    callers: dict[str, Caller] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{source} line {number}"
        if len(parts) not in (3, 4) or not parts[0].startswith("sha256:"):
            raise TokenFileError(f"{where}: expected 'sha256:<hex> <caller> <role> [tenant]'")
        digest = parts[0].removeprefix("sha256:").lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise TokenFileError(f"{where}: not a SHA-256 hex digest (store hashes, never tokens)")
        try:
            role = Role(parts[2])
        except ValueError:
            raise TokenFileError(f"{where}: role must be one of {', '.join(Role)}") from None
        callers[digest] = Caller(parts[1], role, parts[3] if len(parts) == 4 else parts[1])
    return callers


def load_tokens(path: Path | None = None) -> dict[str, Caller]:
    """Tokens from `path`, else $HASHPIVOT_TOKENS_FILE, plus any lines in $HASHPIVOT_TOKENS."""
    callers: dict[str, Caller] = {}
    path = path or (Path(os.environ[TOKENS_FILE_ENV]) if os.environ.get(TOKENS_FILE_ENV) else None)
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise TokenFileError(f"tokens file {path}: {exc.strerror or exc}") from None
        callers.update(parse_token_lines(text.splitlines(), str(path)))
    inline = os.environ.get(TOKENS_ENV, "")
    if inline:
        callers.update(parse_token_lines(inline.replace(";", "\n").splitlines(), f"${TOKENS_ENV}"))
    return callers


class Authenticator:
    """Bearer token -> Caller; None with insecure mode (everyone is ANONYMOUS)."""

    def __init__(self, callers: dict[str, Caller] | None):
        self._callers = callers

    @property
    def insecure(self) -> bool:
        return self._callers is None

    def caller(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller | None:
        if self._callers is None:
            return ANONYMOUS
        header = next((v for k, v in metadata or () if k == AUTHORIZATION), None)
        if not isinstance(header, str) or len(header) > MAX_TOKEN_CHARS:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return self._callers.get(hash_token(token.strip()))


def _method_name(full_method: str) -> str:
    return full_method.rsplit("/", 1)[-1]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a valid token, PERMISSION_DENIED outside the role; otherwise the handler
    runs with `current_caller()` set. Checked per call, before the request is even deserialized.

    The handler it returns is made once per (method, caller) and reused: building one per call cost
    every Dispatch an extra handler and closures, a measurable share of a ~0.5 ms call under load."""

    def __init__(self, authenticator: Authenticator):
        self._auth = authenticator
        self._handlers: dict[tuple[str, Caller | None], grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        caller = self._auth.caller(details.invocation_metadata)
        key = (details.method, caller)
        checked = self._handlers.get(key)
        if checked is None:  # bounded: methods x the callers of the tokens file (and None)
            checked = self._handlers[key] = _checked_handler(handler, details.method, caller)
        return checked


def _checked_handler(handler: grpc.RpcMethodHandler, full_method: str, caller: Caller | None) -> grpc.RpcMethodHandler:
    method = _method_name(full_method)
    if caller is None:
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")
    if full_method.startswith(SERVICE_PREFIX) and not caller.may_call(method):
        return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, f"role {caller.role.value} may not call {method}")
    return wrap_handler(handler, lambda behavior: _with_caller(behavior, caller, method))


# Ids for calls that bring none: a random prefix per server process and a counter, unique in its
# logs at a fraction of uuid4's cost (an os.urandom call on every Dispatch).
_REQUEST_PREFIX = secrets.token_hex(4)
_REQUEST_COUNTER = itertools.count(1)


def _request_id(metadata) -> str:
    """The caller's x-request-id (clipped), else a fresh one: it ties the caller's logs to ours."""
    given = next((v for k, v in metadata or () if k == REQUEST_ID_HEADER), None)
    return given[:64] if isinstance(given, str) and given else f"{_REQUEST_PREFIX}-{next(_REQUEST_COUNTER):x}"


def _with_caller(behavior: Callable, caller: Caller, method: str) -> Callable:
    def enter(context) -> None:
        _CALLER.set(caller)
        logs.bind(rpc=method, caller=caller.name, request_id=_request_id(context.invocation_metadata()))

    if inspect.isasyncgenfunction(behavior):

        async def stream(request, context):
            enter(context)
            async for response in behavior(request, context):
                yield response

        return stream

    async def unary(request, context):
        enter(context)
        return await behavior(request, context)

    return unary


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request, context):
        await context.abort(code, message)

    return wrap_handler(handler, lambda _behavior: refuse)


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def wrap_handler(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]) -> grpc.RpcMethodHandler:
    """The same handler (kind, serializers) with its behavior replaced by wrap(behavior)."""
    for kind, make in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            return make(
                wrap(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
