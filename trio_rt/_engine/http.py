"""Plain HTTP on the WebSocket port: /health, and whatever routes the app or extensions add.

`HttpRoutes` is the side door's part of the server: a request that is not a WebSocket upgrade
is answered from its table (path -> handler) by the handshake part (`_engine/handshake.py`).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response

from .._core.errors import TrioRTError

__all__ = ["HttpResponse", "HttpRoutes", "Reject", "is_websocket_upgrade", "to_ws_response"]

log = logging.getLogger("trio_rt")


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any, **headers: str) -> HttpResponse:
        return cls(status, json.dumps(data).encode(), "application/json", dict(headers))


class Reject(TrioRTError):
    """Raise in a connection handler to refuse the WebSocket upgrade with an HTTP status.

    The client gets `status` with a JSON body ``{"error": reason}`` and no upgrade.
    """

    def __init__(self, status: int = 403, reason: str = "forbidden", **headers: str):
        if not 400 <= int(status) <= 599:
            raise ValueError("Reject status must be a 4xx or 5xx HTTP status")
        super().__init__(reason)
        self.status = int(status)
        self.reason = reason
        self.headers = headers


HttpHandler = Callable[[WsRequest], HttpResponse | Awaitable[HttpResponse]]


def is_websocket_upgrade(request: WsRequest) -> bool:
    upgrade = ",".join(request.headers.get_all("Upgrade")).lower()
    return "websocket" in upgrade


def to_ws_response(resp: HttpResponse) -> Response:
    headers = Headers()
    headers["Content-Type"] = resp.content_type
    headers["Content-Length"] = str(len(resp.body))
    if not any(k.lower() == "cache-control" for k in resp.headers):
        headers["Cache-Control"] = "no-store"  # the default; a route may set its own
    headers["Connection"] = "close"
    for k, v in resp.headers.items():
        headers[k] = v
    try:
        phrase = HTTPStatus(resp.status).phrase
    except ValueError:
        phrase = "Unknown"
    return Response(resp.status, phrase, headers, resp.body)


class HttpRoutes:
    """Path -> handler for plain HTTP GETs on the WebSocket port (the query string is
    ignored). `respond` answers a request: the handler's response (sync or async handler),
    404 for an unknown path, 500 (logged) when the handler raises. Never raises itself."""

    def __init__(self) -> None:
        self.routes: dict[str, HttpHandler] = {}

    def add(self, path: str, handler: HttpHandler) -> None:
        if not path.startswith("/"):
            raise ValueError("route paths start with '/'")
        self.routes[path] = handler

    async def respond(self, request: WsRequest) -> Response:
        path = request.path.split("?", 1)[0]
        handler = self.routes.get(path)
        if handler is None:
            return to_ws_response(HttpResponse.json(404, {"error": "not found", "path": path}))
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            assert isinstance(result, HttpResponse)
            return to_ws_response(result)
        except Exception:
            log.exception("HTTP handler for %s failed", path)
            return to_ws_response(HttpResponse.json(500, {"error": "internal server error"}))
