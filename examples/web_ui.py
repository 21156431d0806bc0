"""The demo's web page: plain HTML/CSS/JS served by the manager itself, no build step, no CDN.

``add_web_ui(manager)`` registers, on the manager's own port:

* ``GET /`` the page, ``GET /demo/app.js`` and ``GET /demo/style.css`` (files in examples/web/);
  the page imports the browser client from ``GET /trio_rt.js`` (served by every manager);
* ``GET /token?name=NAME`` a development token: an HS256 JWT for ``sub=NAME``, valid
  ``TOKEN_LIFETIME`` seconds, signed with a random secret of this process (so tokens die with
  the process, and a restarted demo refuses old ones: the page asks for a new one on every
  reconnect). Never do this in production: anyone can get a token for any name. Only with the
  `auth` extra (pyjwt); without it the route answers 404 and the page connects with
  ``?user=NAME`` instead;
* ``GET /demo/stats`` a small JSON of the manager's counters for the live metrics panel;
* ``GET /demo/rooms`` the rooms of this server and their local member counts;
* ``GET /demo/config`` what the page should show: ``posts`` (the board, only with change
  streams), ``tokens`` (dev tokens available), and ``off``: one sentence per feature that is
  off, saying how to turn it on.

With the `auth` extra it also registers a `JWTAuthenticator` (``optional=True``) as the first
connection handler: a handshake with a valid ``bearer.<token>`` subprotocol entry is
authenticated, one without a token goes on to the app's own handlers (the chat demo's
``?user=`` name), a bad token gets 401.
"""

from __future__ import annotations

import re
import secrets
import time
from importlib import resources
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request

from trio_rt import HttpResponse, WebSocketManager

if TYPE_CHECKING:
    from trio_rt import TokenVerifier

TOKEN_LIFETIME = 600  # seconds
USER_NAME = re.compile(r"[\w.@-]{1,32}")
NAME_RULE = "1-32 letters, digits, '.', '@', '_' or '-'"
POSTS_OFF = (
    "Posts board: off. Start the demo with --cassandra HOST:PORT to turn it on "
    "(it needs pip install 'trio_rt[cassandra]')."
)
TOKENS_OFF = (
    "Sign-in tokens: off, so the page connects with ?user=NAME. "
    "pip install 'trio_rt[auth]' turns them on."
)


def auth_installed() -> bool:
    """The `auth` extra (pyjwt with cryptography) is there: the dev tokens can be signed."""
    return find_spec("jwt") is not None and find_spec("cryptography") is not None


_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/demo/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/demo/style.css": ("style.css", "text/css; charset=utf-8"),
}


def add_web_ui(
    manager: WebSocketManager, *, posts: bool = False, tokens: bool | None = None
) -> TokenVerifier | None:
    """Serve the demo page (and its token route) on `manager`; returns the token verifier, or
    None when tokens are off.

    Call it before registering the app's own connection handlers (the authenticator must run
    first). `posts=True` shows the live posts board (a ``subscribe`` to table ``posts``).
    `tokens` (default: when the `auth` extra is installed) serves dev tokens at ``/token``.
    """
    if tokens is None:
        tokens = auth_installed()
    verifier = _add_tokens(manager) if tokens else None
    off = ([] if posts else [POSTS_OFF]) + ([] if tokens else [TOKENS_OFF])
    web = resources.files("trio_rt_examples").joinpath("web")

    def static(name: str, content_type: str) -> Any:
        body = web.joinpath(name).read_bytes()  # read once: the files ship with the package

        def serve(request: Request) -> HttpResponse:
            return HttpResponse(200, body, content_type)

        return serve

    for path, (name, content_type) in _FILES.items():
        manager.route(path)(static(name, content_type))

    @manager.route("/demo/stats")
    def stats(request: Request) -> HttpResponse:
        s = manager.stats
        return HttpResponse.json(
            200,
            {
                "server_id": manager.server_id,
                "connections": len(manager.connections),
                "rooms": len(manager.rooms),
                "messages_in": s.messages_in,
                "messages_out": s.messages_out,
                "broadcasts": s.broadcasts,
                "deliveries": s.deliveries,
                "uptime_s": round(time.time() - s.started_at, 1),
            },
        )

    @manager.route("/demo/rooms")
    def rooms(request: Request) -> HttpResponse:
        listing = [
            {"name": name, "members": len(manager.members_of(name))}
            for name in sorted(manager.rooms)
        ]
        return HttpResponse.json(200, {"rooms": listing})

    @manager.route("/demo/config")
    def config(request: Request) -> HttpResponse:
        return HttpResponse.json(
            200,
            {
                "posts": posts,
                "tokens": tokens,
                "off": off,
                "name_rule": NAME_RULE,
                "server_id": manager.server_id,
            },
        )

    return verifier


def _add_tokens(manager: WebSocketManager) -> TokenVerifier:
    """The dev-token route and the authenticator that accepts its tokens (`auth` extra)."""
    import jwt

    from trio_rt import JWTAuthenticator, TokenVerifier

    secret = secrets.token_bytes(32)
    verifier = TokenVerifier(secret, ("HS256",))
    manager.on_connection(JWTAuthenticator(verifier, optional=True))

    @manager.route("/token")
    def token(request: Request) -> HttpResponse:
        name = parse_qs(urlsplit(request.path).query).get("name", [""])[0]
        if not USER_NAME.fullmatch(name):
            return HttpResponse.json(400, {"error": f"a name is {NAME_RULE}"})
        now = int(time.time())
        claims = {"sub": name, "iat": now, "exp": now + TOKEN_LIFETIME}
        encoded = jwt.encode(claims, secret, algorithm="HS256")
        return HttpResponse.json(200, {"token": encoded, "expires_in": TOKEN_LIFETIME})

    return verifier
