"""Files the manager serves itself: the browser client at ``GET /trio_rt.js``."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from websockets.http11 import Request as WsRequest

from .http import HttpResponse

__all__ = ["CLIENT_JS_PATH", "client_js", "client_js_route"]

CLIENT_JS_PATH = "/trio_rt.js"
JS_CONTENT_TYPE = "text/javascript; charset=utf-8"
# Browsers may keep it but must revalidate (a cheap 304 thanks to the ETag): a server upgrade
# is picked up at the next page load, never a stale client against a newer server.
CACHE_CONTROL = "no-cache"


@functools.cache
def client_js() -> tuple[bytes, str]:
    """The packaged ``trio_rt/static/trio_rt.js`` and its strong ETag (read once)."""
    body = resources.files("trio_rt").joinpath("static/trio_rt.js").read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return body, etag


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    candidates = [c.strip() for c in header.split(",")]
    # A weak comparison is fine for GET (RFC 9110 13.1.2): W/"x" matches "x".
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


def client_js_route(request: WsRequest) -> HttpResponse:
    """The route handler: 200 with the module, or 304 when ``If-None-Match`` has its ETag."""
    body, etag = client_js()
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        return HttpResponse(304, b"", JS_CONTENT_TYPE, headers)
    return HttpResponse(200, body, JS_CONTENT_TYPE, headers)
