"""Redis clients for Trio: one server (`RedisClient`) or a Redis Cluster (`RedisClusterClient`).

Both hand commands to pipelined `RedisConnection`s (``_connection.py``), one per server,
opened on first use and opened again after a failure: no task of their own, so they work
from any task and need no nursery. Callers that wait while a connection is being opened share
that attempt's outcome (one failed connect fails them all, at once, instead of one timeout
each in turn). A command that certainly never reached Redis (`RedisUnavailable` with
``maybe_sent=False``: the old connection was found closed before the write) is sent once more
on a fresh connection; one that may have reached Redis is never re-sent: the caller decides.

`eval` runs a `Script` with ``EVALSHA`` and falls back to ``EVAL`` on ``NOSCRIPT``.

The cluster client keeps a `SlotMap` (``CLUSTER SLOTS``, loaded on first use from the node the
URL names or any node known since), routes each command by its key's hash slot, follows
``MOVED`` (and reloads the map) and ``ASK`` (``ASKING`` + the command, back to back on the
target), retries ``TRYAGAIN``/``CLUSTERDOWN`` a few times, and reloads the map when a node
cannot be reached before the command was sent.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from ._connection import RedisConnection
from ._resp import (
    Node,
    RedisAddress,
    RedisReplyError,
    RedisUnavailable,
    Script,
    SlotMap,
    keyslot,
    parse_url,
    redirect,
    require_url,
)

__all__ = [
    "Commands",
    "KeyedStore",
    "RedisClient",
    "RedisClusterClient",
    "connect_client",
]

MAX_REDIRECTS = 5
_RETRY_LATER = ("TRYAGAIN", "CLUSTERDOWN")


class Commands(Protocol):
    """What the Redis components need of a client, standalone or cluster."""

    async def execute(self, *args: Any, key: str | bytes | None = None) -> Any: ...

    async def eval(self, script: Script, keys: list[str], args: list[Any]) -> Any: ...

    async def aclose(self) -> None: ...


def connect_client(
    url: str | RedisAddress,
    *,
    cluster: bool = False,
    timeout: float = 5.0,
    max_pending: int = 10_000,
) -> RedisClient | RedisClusterClient:
    """A `RedisClusterClient` when `cluster`, else a `RedisClient` (nothing is opened yet)."""
    factory = RedisClusterClient if cluster else RedisClient
    return factory(url, timeout=timeout, max_pending=max_pending)


class _Server:
    """The connection to one server, (re)opened on demand."""

    def __init__(self, address: RedisAddress, timeout: float, max_pending: int) -> None:
        self.address = address
        self._timeout = timeout
        self._max_pending = max_pending
        self._connection: RedisConnection | None = None
        self._lock = trio.Lock()
        self._attempts = 0
        self._failure: tuple[int, BaseException] | None = None  # (attempt, what it raised)
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.broken

    async def connection(self) -> RedisConnection:
        connection = self._connection
        if connection is not None and not connection.broken:
            return connection
        attempts_seen = self._attempts
        async with self._lock:
            connection = self._connection
            if connection is not None and not connection.broken:
                return connection
            if self._closed:
                raise RedisUnavailable(f"the client of redis at {self.address} is closed")
            failure = self._failure
            if failure is not None and failure[0] > attempts_seen:
                raise failure[1]  # an attempt made while we waited failed: so do we
            self._attempts += 1
            try:
                connection = await RedisConnection.connect(
                    self.address, io_timeout=self._timeout, max_pending=self._max_pending
                )
            except Exception as exc:
                self._failure = (self._attempts, exc)
                raise
            self._failure = None
            self._connection = connection
            return connection

    async def execute(self, args: tuple[Any, ...]) -> Any:
        for attempt in (1, 2):
            connection = await self.connection()
            try:
                return await connection.execute(*args)
            except RedisUnavailable as exc:
                if exc.maybe_sent or attempt == 2:
                    raise
                # Found closed before the write (Redis restarted): once more, on a new one.
        raise AssertionError("unreachable")

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        connection = await self.connection()
        return await connection.execute_many(commands)

    def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()


class RedisClient:
    """Commands to one Redis server (a ``redis://``, ``rediss://`` or ``unix://`` URL).

    `timeout` bounds connecting, each write and the wait for each reply. `max_pending`
    commands at most wait for replies on the connection; more callers wait for room.
    `aclose` (or leaving ``async with``) closes the connection; commands still waiting fail.
    """

    def __init__(
        self, url: str | RedisAddress, *, timeout: float = 5.0, max_pending: int = 10_000
    ) -> None:
        self.address = url if isinstance(url, RedisAddress) else parse_url(url)
        self._server = _Server(self.address, timeout, max_pending)

    @property
    def connected(self) -> bool:
        """Whether the connection is open (it may still turn out dead on the next command)."""
        return self._server.connected

    async def execute(self, *args: Any, key: str | bytes | None = None) -> Any:
        """Run one command; its reply, or `RedisReplyError`/`RedisUnavailable`. (`key` is
        for the cluster client's routing; ignored here.)"""
        return await self._server.execute(args)

    async def eval(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run `script` (EVALSHA, then EVAL if Redis does not have it)."""
        return await _eval(self._server, script, keys, args)

    async def aclose(self) -> None:
        self._server.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> RedisClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _eval(server: _Server, script: Script, keys: list[str], args: list[Any]) -> Any:
    try:
        return await server.execute(("EVALSHA", script.sha, len(keys), *keys, *args))
    except RedisReplyError as exc:
        if exc.code != "NOSCRIPT":
            raise
    return await server.execute(("EVAL", script.source, len(keys), *keys, *args))


class RedisClusterClient:
    """Commands to a Redis Cluster, each routed to the master that owns its key's slot.

    `url` names any node; the others are learnt from it. Settings as `RedisClient`'s, per
    node.
    """

    def __init__(
        self, url: str | RedisAddress, *, timeout: float = 5.0, max_pending: int = 10_000
    ) -> None:
        self.address = url if isinstance(url, RedisAddress) else parse_url(url)
        if self.address.path is not None:
            raise ValueError("a Redis Cluster is reached over TCP, not a unix socket")
        self._timeout = timeout
        self._max_pending = max_pending
        self._servers: dict[Node, _Server] = {}
        self._slots: SlotMap | None = None
        self._refreshes = 0
        self._refresh_lock = trio.Lock()
        self._closed = False

    @property
    def connected(self) -> bool:
        return any(server.connected for server in self._servers.values())

    def _server(self, node: Node) -> _Server:
        server = self._servers.get(node)
        if server is None:
            if self._closed:
                raise RedisUnavailable("the Redis Cluster client is closed")
            server = _Server(self.address.node(*node), self._timeout, self._max_pending)
            self._servers[node] = server
        return server

    def node_address(self, node: Node) -> RedisAddress:
        """The address (credentials, TLS) of `node`."""
        return self.address.node(*node)

    def cached_owner(self, key: str | bytes) -> Node:
        """The master that owns `key`'s slot by the map loaded so far (the node the URL
        names when no map is loaded or the slot is not served)."""
        node = self._slots.owner(keyslot(key)) if self._slots is not None else None
        return node if node is not None else (self.address.host, self.address.port)

    async def owner(self, key: str | bytes) -> Node:
        """The master that owns `key`'s slot (loading the slot map if needed)."""
        if self._slots is None:
            await self.refresh()
        assert self._slots is not None
        node = self._slots.owner(keyslot(key))
        if node is None:
            await self.refresh()
            node = self._slots.owner(keyslot(key))
            if node is None:
                raise RedisReplyError(f"CLUSTERDOWN hash slot {keyslot(key)} is not served")
        return node

    async def refresh(self) -> None:
        """Load the slot map from a reachable node. Callers that wait meanwhile share it."""
        seen = self._refreshes
        async with self._refresh_lock:
            if self._refreshes > seen and self._slots is not None:
                return  # refreshed while we waited
            seed: Node = (self.address.host, self.address.port)
            candidates = [seed, *(node for node in self._servers if node != seed)]
            error: BaseException | None = None
            for node in candidates:
                try:
                    reply = await self._server(node).execute(("CLUSTER", "SLOTS"))
                    self._slots = SlotMap.from_cluster_slots(reply, node)
                    self._refreshes += 1
                    return
                except (RedisUnavailable, RedisReplyError) as exc:
                    error = exc
            assert error is not None
            raise error

    async def execute(self, *args: Any, key: str | bytes | None = None) -> Any:
        """Run one command on the master that owns `key`'s slot, following redirects
        (without a key: on the node the URL names)."""
        if key is None:
            return await self._server((self.address.host, self.address.port)).execute(args)
        return await self._routed(key, args)

    async def eval(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run `script` on the master that owns ``keys[0]`` (all keys share one slot)."""
        try:
            return await self._routed(keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args))
        except RedisReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        return await self._routed(keys[0], ("EVAL", script.source, len(keys), *keys, *args))

    async def _routed(self, key: str | bytes, args: tuple[Any, ...]) -> Any:
        node = await self.owner(key)
        asking = False
        for attempt in range(MAX_REDIRECTS + 1):
            server = self._server(node)
            try:
                if asking:
                    _, value = await server.execute_many([("ASKING",), args])
                    if isinstance(value, RedisReplyError):
                        raise value
                    return value
                return await server.execute(args)
            except RedisReplyError as exc:
                moved = redirect(exc, node)
                if moved is None:
                    if exc.code not in _RETRY_LATER or attempt == MAX_REDIRECTS:
                        raise
                    await trio.sleep(0.05 * (attempt + 1))
                    await self.refresh()
                    node, asking = await self.owner(key), False
                    continue
                if attempt == MAX_REDIRECTS:
                    raise
                asking = moved.ask
                node = moved.node
                if not moved.ask:
                    assert self._slots is not None
                    self._slots.move(moved.slot, moved.node)
                    await self.refresh()
            except RedisUnavailable as exc:
                if exc.maybe_sent or attempt:
                    raise
                # The node is unreachable and nothing was sent: the map may be outdated
                # (a failover). Reload it and try the owner it names, once.
                try:
                    await self.refresh()
                except (RedisUnavailable, RedisReplyError):
                    raise exc from None
                new = await self.owner(key)
                if new == node:
                    raise
                node, asking = new, False
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._closed = True
        for server in self._servers.values():
            server.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> RedisClusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class KeyedStore:
    """What the stores with one Redis key per record share (`RedisRateLimiter`,
    `RedisIdempotencyStore`): the URL and key prefix checked, a client for one Redis or, with
    `cluster=True`, a Redis Cluster (each record is one key, so each call runs on the shard
    that owns it), and `aclose`. No task of its own: the client connects on first use and again
    after a failure."""

    def __init__(self, url: str, *, prefix: str, cluster: bool, socket_timeout: float) -> None:
        self.url = require_url(url)
        if not isinstance(prefix, str):
            raise TypeError("prefix must be a string")
        self.prefix = prefix
        self.cluster = cluster
        self._socket_timeout = socket_timeout
        self._client = self._new_client()

    def _new_client(self) -> RedisClient | RedisClusterClient:
        factory = RedisClusterClient if self.cluster else RedisClient
        return factory(self.url, timeout=self._socket_timeout)

    async def aclose(self) -> None:
        """Close the Redis connections (a later call opens them again)."""
        client, self._client = self._client, self._new_client()
        await client.aclose()
