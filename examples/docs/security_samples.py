"""The samples of docs/security.md, run by tests/integration/test_doc_samples.py."""

from __future__ import annotations

from typing import Any

from trio_rt import Connection, JWTAuthenticator, TokenVerifier, WebSocketManager


def authenticated_server(secret: str, port: int = 3001) -> WebSocketManager:
    # --8<-- [start:jwt]
    # JWTAuthenticator and TokenVerifier need the `auth` extra (pyjwt)
    from trio_rt import JWTAuthenticator, TokenVerifier, WebSocketManager

    auth = JWTAuthenticator(
        TokenVerifier(secret, ("HS256",), audience="chat", issuer="https://id.example")
    )
    manager = WebSocketManager(port=port, auth=auth)
    # --8<-- [end:jwt]
    return manager


def jwks_authenticator(url: str = "https://id.example/.well-known/jwks.json") -> JWTAuthenticator:
    # --8<-- [start:jwks]
    from trio_rt import JWKSKeySource

    source = JWKSKeySource(url)  # e.g. "https://id.example/.well-known/jwks.json"
    auth = JWTAuthenticator(TokenVerifier(source, ("RS256",), audience="chat"))
    # --8<-- [end:jwks]
    return auth


async def permission_server(port: int = 3001) -> WebSocketManager:
    """A server that answers ``{"type": "may", "resource", "action"}`` with `authorize`'s answer
    for the sender (named by ``?user=``; anonymous without it), with a private room ``vip``."""
    # --8<-- [start:permissions]
    from trio_rt import MemoryPermissionStore  # or CassandraPermissionStore(session, keyspace)

    store = MemoryPermissionStore()
    store.grant("ann", "room:vip", "join", "broadcast")
    store.grant("mod", "room:*", "moderate")
    store.grant("*", "table:public", "read")  # every user, anonymous included
    manager = WebSocketManager(port=port, permissions=store)
    # Join checks apply to private rooms only: without this line anyone could join "vip",
    # and ann's `join` grant would change nothing.
    await manager.create_room("vip", private=True)
    # --8<-- [end:permissions]

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        conn.user_id = conn.request.query.get("user", [None])[0]

    @manager.on_message("may")
    async def may(conn: Connection, message: dict[str, Any]) -> None:
        resource, action = message["resource"], message["action"]
        # --8<-- [start:authorize]
        allowed = await manager.authorize(conn, resource, action)  # "table:posts", "read"
        # --8<-- [end:authorize]
        await conn.send({"type": "may", "allowed": allowed})

    return manager
