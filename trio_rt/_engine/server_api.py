"""ServerAPI: an HTTP API for other backends (any language) on a port of its own: publish into
a room, broadcast, disconnect a user, kick a user from a room, read a room's history
(docs/server-api.md). Described by an OpenAPI 3.1 document it serves at
``GET /api/openapi.json``, built from the same table of calls that routes the requests.

Why its own port: the WebSocket port's plain-HTTP path is websockets' handshake parser, which
accepts only GET requests without a body (`_http.py`); the API's calls carry JSON bodies.

Every call is ``POST /api/<call>`` with a JSON object body, answered with JSON: 200 and the
result, or an error ``{"error": {"code", "message"}}`` with its status (400 ``invalid_json``
/ ``invalid_field``, 401 ``unauthorized``, 403 ``forbidden``, 404 ``not_found`` /
``no_history``, 405 ``method_not_allowed``, 409 ``conflict`` (an Idempotency-Key used for
another room), 413 ``too_large``, 415 ``unsupported_media_type``,
429 ``rate_limited`` with ``Retry-After``, 503 ``unavailable`` with ``Retry-After``, 500
``internal_error``).

Authentication (``Authorization: Bearer <credential>`` or ``X-API-Key: <key>``): an API key
from `keys` (compared with `hmac.compare_digest` against every configured key: no early
exit), or, with `verifier` (a `TokenVerifier`), a JWT whose ``scope`` claim (space-separated,
or a ``scopes`` list) grants the call's scope. Each call needs its scope (its name:
``publish``, ``broadcast``, ``disconnect``, ``kick``, ``history``). Rate limits: `rate` per
API client (the key's name, or ``jwt:<sub>``), on `rate_limiter` (the manager's seam:
`LocalRateLimiter` by default, `RedisRateLimiter` to share budgets between servers).

Across servers: ``kick`` travels through the broker by itself (`WebSocketManager.kick`);
``disconnect`` is published on ``<channel_prefix>:api`` and every server with a `ServerAPI`
(``port=None``: no listener, only this) closes its connections of that user. Presence is not
here yet: `add_call` wires more calls (the presence helper's, when it lands).

Ownership: `serve` (a service of the manager, `add_service`) owns the listener and one task
per HTTP connection, all cancelled when the manager stops; at most `max_connections` HTTP
connections are served at once (one more is answered 503 and closed); a connection idle
`idle_timeout` seconds (or slower than that to send a request) is closed.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from .._core.acks import api_idempotency_key
from .._core.checks import int_problem, number_problem, require
from .._core.http_parse import HttpError, HttpRequest, RequestReader, json_body, render_response
from .._core.openapi import idempotency_key_parameter, openapi_document
from .._core.protocol import (
    MAX_HISTORY_LIMIT,
    CloseCode,
    ProtocolError,
    parse_position,
    validate_room_name,
)
from .._core.ratelimit import LocalRateLimiter, Rate, RateLimiter
from .publish import Publisher, PublishRefused

if TYPE_CHECKING:
    from .auth import TokenVerifier
    from .manager import WebSocketManager

__all__ = ["APICall", "APIKey", "ServerAPI"]

log = logging.getLogger("trio_rt.api")

OPENAPI_PATH = "/api/openapi.json"
MAX_IDEMPOTENCY_KEY = 128
MAX_REASON = 123  # a close frame's reason is at most 123 bytes


@dataclass(frozen=True, slots=True)
class APIKey:
    """An API client: its `name` (logs, metrics, rate-limit bucket; never the secret), its
    `secret` (the key it sends) and the `scopes` it is granted (None: every call)."""

    name: str
    secret: str = field(repr=False)
    scopes: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("an API key needs a non-empty name")
        if not isinstance(self.secret, str) or len(self.secret) < 16:
            raise ValueError(f"API key {self.name!r}: the secret must be at least 16 characters")
        if self.scopes is not None:
            object.__setattr__(self, "scopes", frozenset(self.scopes))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: the API client's name and its scopes (None: all)."""

    name: str
    scopes: frozenset[str] | None

    def may(self, scope: str) -> bool:
        return self.scopes is None or scope in self.scopes


Handler = Callable[["Caller", dict[str, Any], HttpRequest], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class APICall:
    """One call of the API: ``POST /api/<name>``, needing scope `scope`, its handler, and its
    OpenAPI description (`summary`, the JSON Schemas of its `request` body and `response`)."""

    name: str
    scope: str
    handler: Handler
    summary: str
    request: dict[str, Any]
    response: dict[str, Any]

    @property
    def path(self) -> str:
        return f"/api/{self.name}"


def _fail(status: int, code: str, message: str, **headers: str) -> HttpError:
    return HttpError(status, code, message, headers=headers)


def _field_error(message: str) -> HttpError:
    return _fail(400, "invalid_field", message)


POSITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"offset": {"type": "integer", "minimum": 0}, "epoch": {"type": "string"}},
    "required": ["offset", "epoch"],
}
ROOM_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 128}


class ServerAPI:
    """The HTTP server API of one manager (see the module docstring)::

        api = ServerAPI(manager, keys=[APIKey("billing", secret, {"publish"})], port=8081)

    `publisher` handles ``publish`` (default: a `Publisher` of its own, with no client
    message and a memory idempotency store; pass the app's to share its idempotency store).
    `port` None: no listener (a server that only honours ``disconnect`` calls made through
    another). `calls` counts requests by (call, outcome): the call's name or ``other``, and
    ``ok`` or the error code (both closed sets).
    """

    def __init__(
        self,
        manager: WebSocketManager,
        *,
        keys: Iterable[APIKey] = (),
        verifier: TokenVerifier | None = None,
        publisher: Publisher | None = None,
        host: str = "127.0.0.1",
        port: int | None = 0,
        rate: Rate | None = Rate(100, 1.0, 200),  # noqa: B008 - frozen, shared safely
        rate_limiter: RateLimiter | None = None,
        max_body: int = 65_536,
        max_connections: int = 256,
        idle_timeout: float = 10.0,
    ) -> None:
        require(
            int_problem("max_body", max_body),
            int_problem("max_connections", max_connections),
            number_problem("idle_timeout", idle_timeout),
            int_problem("port", port, at_least=0, allow_none=True),
        )
        self.manager = manager
        self.keys = tuple(keys)
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")
        if not self.keys and verifier is None:
            raise ValueError("give API keys or a token verifier: the API is never open")
        self.verifier = verifier
        self.publisher = (
            publisher if publisher is not None else Publisher(manager, message_type=None)
        )
        self.host = host
        self.port = port
        self.rate = rate
        self.rate_limiter: RateLimiter = (
            rate_limiter if rate_limiter is not None else LocalRateLimiter()
        )
        self.max_body = max_body
        self.max_connections = max_connections
        self.idle_timeout = float(idle_timeout)
        self.calls: Counter[tuple[str, str]] = Counter()
        self.address: tuple[str, int] | None = None
        self._open = 0
        self._channel = f"{manager.options.channel_prefix}:api"
        self.routes: dict[str, APICall] = {}
        for call in self._builtin_calls():
            self.add_call(call)
        manager.add_service(self.serve)

    # -- the calls ------------------------------------------------------------------------------
    def add_call(self, call: APICall) -> None:
        """Serve `call` at ``POST /api/<name>`` (and describe it in the OpenAPI document).
        ValueError when the name is taken."""
        if call.path in self.routes or call.path == OPENAPI_PATH:
            raise ValueError(f"{call.path} is already served")
        self.routes[call.path] = call

    def _builtin_calls(self) -> list[APICall]:
        room_data = {
            "type": "object",
            "properties": {"room": ROOM_SCHEMA, "data": {}},
            "required": ["room", "data"],
        }
        ack = {
            "type": "object",
            "properties": {
                "room": {"type": "string"},
                "position": {"oneOf": [POSITION_SCHEMA, {"type": "null"}]},
            },
            "required": ["room", "position"],
        }
        user = {"type": "string", "minLength": 1}
        return [
            APICall(
                "publish",
                "publish",
                self._publish,
                "Publish data into a room (stored first in a room with history). With an "
                "Idempotency-Key header, a retry within the window returns the first result.",
                room_data,
                ack,
            ),
            APICall(
                "broadcast",
                "broadcast",
                self._broadcast,
                "Send a message (an object with a string type) to every client, on every server.",
                {
                    "type": "object",
                    "properties": {
                        "data": {
                            "type": "object",
                            "properties": {"type": {"type": "string"}},
                            "required": ["type"],
                        }
                    },
                    "required": ["data"],
                },
                {"type": "object"},
            ),
            APICall(
                "disconnect",
                "disconnect",
                self._disconnect,
                "Close every connection of a user, on every server with a ServerAPI: close "
                "code 4002 (the client reconnects) or, with reconnect false, 4003 (it does not).",
                {
                    "type": "object",
                    "properties": {
                        "user_id": user,
                        "reason": {"type": "string", "maxLength": MAX_REASON},
                        "reconnect": {"type": "boolean", "default": True},
                    },
                    "required": ["user_id"],
                },
                {"type": "object", "properties": {"user_id": {"type": "string"}}},
            ),
            APICall(
                "kick",
                "kick",
                self._kick,
                "Remove every connection of a user from a room, on every server "
                "(they get room_kicked and stay connected).",
                {
                    "type": "object",
                    "properties": {
                        "room": ROOM_SCHEMA,
                        "user_id": user,
                        "reason": {"type": "string"},
                    },
                    "required": ["room", "user_id"],
                },
                {"type": "object", "properties": {"room": {}, "user_id": {}}},
            ),
            APICall(
                "presence",
                "presence",
                self._presence,
                "Who is in a room, across servers (docs/presence.md): the counts, and the "
                "members unless the room has more users than the server's max_members "
                "(then members is null and too_large true). 404 without presence.",
                {"type": "object", "properties": {"room": ROOM_SCHEMA}, "required": ["room"]},
                {
                    "type": "object",
                    "properties": {
                        "room": {"type": "string"},
                        "users": {"type": "integer"},
                        "connections": {"type": "integer"},
                        "version": {"type": "integer"},
                        "too_large": {"type": "boolean"},
                        "members": {
                            "oneOf": [
                                {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "user_id": {"type": ["string", "null"]},
                                            "connections": {"type": "integer"},
                                            "info": {"type": ["object", "null"]},
                                        },
                                    },
                                },
                                {"type": "null"},
                            ]
                        },
                    },
                    "required": ["room", "users", "connections", "version", "members"],
                },
            ),
            APICall(
                "history",
                "history",
                self._history,
                "A page of a room's stored messages, oldest first: the latest, or those "
                "before / after a position.",
                {
                    "type": "object",
                    "properties": {
                        "room": ROOM_SCHEMA,
                        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY_LIMIT},
                        "before": POSITION_SCHEMA,
                        "after": POSITION_SCHEMA,
                    },
                    "required": ["room"],
                },
                {
                    "type": "object",
                    "properties": {
                        "room": {"type": "string"},
                        "position": POSITION_SCHEMA,
                        "messages": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["room", "position", "messages"],
                },
            ),
        ]

    async def _publish(self, caller: Caller, body: dict[str, Any], request: HttpRequest) -> Any:
        room = _room(body)
        if "data" not in body:
            raise _field_error("missing 'data'")
        idem = request.headers.get("idempotency-key")
        if idem is not None and not 0 < len(idem) <= MAX_IDEMPOTENCY_KEY:
            raise _field_error(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        key = api_idempotency_key(caller.name, idem) if idem is not None else None
        try:
            result = await self.publisher.publish(room, body["data"], key=key)
        except PublishRefused as exc:
            if exc.code == "unavailable":
                retry = str(max(1, round(exc.retry_after or 1)))
                raise _fail(503, "unavailable", exc.message, **{"Retry-After": retry}) from None
            raise _fail(409, "conflict", exc.message) from None  # the key named another room
        return result.ack_fields()

    async def _broadcast(self, caller: Caller, body: dict[str, Any], request: HttpRequest) -> Any:
        data = body.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise _field_error("'data' must be an object with a string 'type'")
        await self.manager.broadcast(data)
        return {}

    async def _disconnect(self, caller: Caller, body: dict[str, Any], request: HttpRequest) -> Any:
        user_id = _user(body)
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason.encode()) > MAX_REASON:
            raise _field_error(f"'reason' must be a string of at most {MAX_REASON} bytes")
        reconnect = body.get("reconnect", True)
        if not isinstance(reconnect, bool):
            raise _field_error("'reconnect' must be a boolean")
        code = int(CloseCode.KICKED if reconnect else CloseCode.FORBIDDEN)
        control = {"op": "disconnect", "user_id": user_id, "code": code, "reason": reason}
        await self.manager.broker.publish(self._channel, json_body(control))
        return {"user_id": user_id}

    async def _kick(self, caller: Caller, body: dict[str, Any], request: HttpRequest) -> Any:
        room, user_id = _room(body), _user(body)
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise _field_error("'reason' must be a string")
        await self.manager.kick(room, user_id, by=None, reason=reason)
        return {"room": room, "user_id": user_id}

    async def _presence(self, caller: Caller, body: dict[str, Any], request: HttpRequest) -> Any:
        room = _room(body)
        presence = self.manager.presence
        if presence is None or not presence.enabled(room):
            raise _fail(404, "no_presence", f"room {room!r} has no presence")
        result = await presence.members(room)
        members = None if result.members is None else [m.to_json() for m in result.members]
        return {
            "room": room,
            **result.stats.to_json(),
            "too_large": members is None,
            "members": members,
        }

    async def _history(self, caller: Caller, body: dict[str, Any], request: HttpRequest) -> Any:
        room = _room(body)
        history = self.manager.history
        if history is None or not history.enabled(room):
            raise _fail(404, "no_history", f"room {room!r} keeps no history")
        limit = body.get("limit", 50)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_HISTORY_LIMIT
        ):
            raise _field_error(f"'limit' must be an integer from 1 to {MAX_HISTORY_LIMIT}")
        if body.get("before") is not None and body.get("after") is not None:
            raise _field_error("give 'before' or 'after', not both")
        try:
            before = parse_position(body["before"], field="before") if body.get("before") else None
            after = parse_position(body["after"], field="after") if body.get("after") else None
        except ProtocolError as exc:
            raise _field_error(exc.message) from None
        entries, current = await history.page(room, limit, before, after)
        return {
            "room": room,
            "position": current.to_json(),
            "messages": [json.loads(e.payload) for e in entries],
        }

    # -- cross-server control ---------------------------------------------------------------
    def _on_control(self, data: bytes) -> None:
        """A ``disconnect`` published by a server's API (this one's too): close the user's
        connections here (sync: `close_soon`)."""
        try:
            control = json.loads(data)
            user_id, code, reason = control["user_id"], int(control["code"]), control["reason"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed API control message")
            return
        if control.get("op") != "disconnect":
            return
        for conn in list(self.manager.connections.values()):
            if conn.user_id is not None and conn.user_id == user_id:
                conn.close_soon(code, str(reason))

    # -- HTTP -------------------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the API (the manager runs it as a service): listen on the control channel and,
        with a `port`, accept HTTP connections. Ready once both are."""
        await self.manager.listen(self._channel, self._on_control)
        try:
            if self.port is None:
                task_status.started()
                await trio.sleep_forever()
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
            sockname = listeners[0].socket.getsockname()
            self.address = (str(sockname[0]), int(sockname[1]))
            log.info("trio_rt server API on http://%s:%d/api/", *self.address)
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._connection, listeners)
                task_status.started()
        finally:
            self.address = None
            self.manager.stop_listening(self._channel)

    @property
    def url(self) -> str:
        """``http://host:port`` of the listener (RuntimeError when not listening)."""
        if self.address is None:
            raise RuntimeError("the server API is not listening")
        host, port = self.address
        return f"http://{host}:{port}"

    async def _connection(self, stream: trio.SocketStream) -> None:
        """One HTTP connection: requests answered in order until it closes, asks to, idles
        `idle_timeout`, or breaks the protocol."""
        async with stream:
            if self._open >= self.max_connections:
                body = json_body({"error": {"code": "unavailable", "message": "server busy"}})
                with trio.move_on_after(self.idle_timeout):
                    await stream.send_all(
                        render_response(503, body, headers={"Retry-After": "1"}, keep_alive=False)
                    )
                return
            self._open += 1
            try:
                await self._serve_stream(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._open -= 1

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        reader = RequestReader(max_body=self.max_body)
        while True:
            request: HttpRequest | None = None
            with trio.move_on_after(self.idle_timeout):
                try:
                    while (request := reader.next_request()) is None:
                        data = await stream.receive_some(65_536)
                        if not data:
                            return
                        reader.feed(data)
                except HttpError as exc:
                    self.calls["other", exc.code] += 1
                    await stream.send_all(_error_response(exc, keep_alive=False))
                    return
            if request is None:
                return  # idle, or too slow to send a request
            keep_alive = request.keep_alive
            response = await self.respond(request, keep_alive)
            with trio.move_on_after(self.idle_timeout) as sending:
                await stream.send_all(response)
            if sending.cancelled_caught or not keep_alive:
                return  # a client that does not read its response is dropped

    async def respond(self, request: HttpRequest, keep_alive: bool = False) -> bytes:
        """The response to one request (never raises for what a client sent)."""
        call = self.routes.get(request.path)
        label = call.name if call is not None else "other"
        try:
            result = await self._handle(request, call)
        except HttpError as exc:
            self.calls[label, exc.code] += 1
            return _error_response(exc, keep_alive)
        except Exception:
            log.exception("server API call %s failed", request.path)
            self.calls[label, "internal_error"] += 1
            return _error_response(
                HttpError(500, "internal_error", "internal server error"), keep_alive
            )
        self.calls[label, "ok"] += 1
        return render_response(200, json_body(result), keep_alive=keep_alive)

    async def _handle(self, request: HttpRequest, call: APICall | None) -> Any:
        if request.path == OPENAPI_PATH:
            if request.method != "GET":
                raise _fail(405, "method_not_allowed", "use GET", Allow="GET")
            return self.openapi()
        if call is None:
            raise _fail(404, "not_found", f"no API call at {request.path}")
        if request.method != "POST":
            raise _fail(405, "method_not_allowed", "use POST", Allow="POST")
        caller = await self._authenticate(request)
        if not caller.may(call.scope):
            raise _fail(403, "forbidden", f"this credential lacks the {call.scope!r} scope")
        if self.rate is not None:
            identity = f"api:{len(caller.name)}:{caller.name}"
            decision = await self.rate_limiter.hit(identity, self.rate)
            if not decision.allowed:
                retry = str(max(1, round(decision.retry_after + 0.5)))
                raise _fail(429, "rate_limited", "too many requests", **{"Retry-After": retry})
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _fail(415, "unsupported_media_type", "send Content-Type: application/json")
        try:
            body = json.loads(request.body)
        except (ValueError, RecursionError):
            raise _fail(400, "invalid_json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _fail(400, "invalid_json", "the body must be a JSON object")
        return await call.handler(caller, body, request)

    async def _authenticate(self, request: HttpRequest) -> Caller:
        credential = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if credential is None and scheme.lower() == "bearer":
            credential = token.strip()
        if not credential:
            raise _unauthorized("missing credentials: Authorization: Bearer <key or token>")
        found: APIKey | None = None
        given = credential.encode()
        for key in self.keys:  # every key compared: the time says nothing about which matched
            if hmac.compare_digest(given, key.secret.encode()):
                found = key
        if found is not None:
            return Caller(found.name, found.scopes)
        if self.verifier is not None and credential.count(".") == 2:
            from .auth import AuthError  # the "auth" extra: only with a verifier

            try:
                claims = self.verifier.verify(credential)
            except AuthError as exc:
                raise _unauthorized(f"invalid token: {exc.reason}") from None
            return Caller(f"jwt:{claims.user_id}", _scopes(claims.claims))
        raise _unauthorized("invalid credentials")

    # -- OpenAPI ----------------------------------------------------------------------------
    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of the calls served (built from the route table)."""
        return openapi_document(
            OPENAPI_PATH,
            sorted(self.routes.items()),
            headers={"publish": [idempotency_key_parameter(MAX_IDEMPOTENCY_KEY)]},
        )


def _unauthorized(message: str) -> HttpError:
    return _fail(401, "unauthorized", message, **{"WWW-Authenticate": "Bearer"})


def _error_response(exc: HttpError, keep_alive: bool) -> bytes:
    body = json_body({"error": {"code": exc.code, "message": exc.message}})
    return render_response(
        exc.status, body, headers=exc.headers, keep_alive=keep_alive and not exc.close
    )


def _room(body: Mapping[str, Any]) -> str:
    try:
        return validate_room_name(body.get("room"))
    except ProtocolError as exc:
        raise _field_error(exc.message) from None


def _user(body: Mapping[str, Any]) -> str:
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise _field_error("'user_id' must be a non-empty string")
    return user_id


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """A token's scopes: ``scope`` (space-separated, RFC 8693) or ``scopes`` (a list)."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scopes = claims.get("scopes")
    if isinstance(scopes, list):
        return frozenset(s for s in scopes if isinstance(s, str))
    return frozenset()
