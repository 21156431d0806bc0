"""Redis's wire protocol and addressing, sans-IO: what the Trio-native connection needs.

- the error tree of the Redis edge (`RedisError` and its subclasses, drawn in
  trio_rt/_core/errors.py): a lost or refused connection is `RedisUnavailable` (retryable; its
  `maybe_sent` says whether the command may have reached Redis), an error reply is
  `RedisReplyError` (its `code` is the reply's first word: ``NOSCRIPT``, ``MOVED``...);
- `RedisAddress` and `parse_url`: ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs with
  their credentials and database;
- `pack`: a command as RESP2 bytes (hiredis's C encoder); replies are parsed by
  ``hiredis.Reader`` where the bytes arrive (``_connection.py``);
- `Script`: a Lua script and its SHA1, for EVALSHA with a fallback to EVAL;
- Redis Cluster: `keyslot` (CRC16 with hash tags), `SlotMap` (from ``CLUSTER SLOTS``) and
  `redirect` (a ``MOVED``/``ASK`` reply).

Nothing here imports trio or touches a socket.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from .._core.errors import TrioRTError

__all__ = [
    "SLOTS",
    "Node",
    "Redirect",
    "RedisAddress",
    "RedisError",
    "RedisReplyError",
    "RedisTimeout",
    "RedisUnavailable",
    "Script",
    "SlotMap",
    "keyslot",
    "pack",
    "parse_url",
    "redirect",
    "require_url",
]

SLOTS = 16384  # hash slots of a Redis Cluster

Node = tuple[str, int]
"""A cluster node: (host, port)."""


# -- errors -----------------------------------------------------------------------------------
class RedisError(TrioRTError):
    """A Redis command failed: the base of the Redis edge's errors (trio_rt.redis)."""


class RedisUnavailable(RedisError):
    """The connection to Redis failed, was lost or timed out: retrying later may succeed.

    `maybe_sent` is False when the command certainly never reached Redis (the connection
    could not be opened, or was found dead before the command was written): resending it is
    safe. True when it was written and no reply came back: Redis may have run it.
    """

    def __init__(self, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class RedisTimeout(RedisUnavailable):
    """Redis did not answer (or accept the connection) within the timeout."""


class RedisReplyError(RedisError):
    """Redis answered a command with an error reply. `code` is its first word (``ERR``,
    ``NOSCRIPT``, ``WRONGTYPE``, ``MOVED``, ``ASK``...), `message` the whole text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = message.split(" ", 1)[0] if message else "ERR"


# -- addresses --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where a Redis server listens and how to log in: what a URL says.

    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` the same over TLS (query
    ``ssl_cert_reqs=none`` turns certificate checks off, ``ssl_ca_certs=PATH`` names the CA
    file), ``unix:///path/to/socket[?db=N&password=P]``. `password` and `db` may also come
    as query parameters. Printed without the password.
    """

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket
    tls: bool = False
    tls_verify: bool = True
    tls_ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    def node(self, host: str, port: int) -> RedisAddress:
        """Another node of the same deployment (a cluster node), with the same credentials
        and TLS settings."""
        return replace(self, host=host, port=port, path=None)

    def handshake(self) -> list[tuple[str | int, ...]]:
        """The commands that open a session: AUTH (with credentials), SELECT (db != 0)."""
        commands: list[tuple[str | int, ...]] = []
        if self.password is not None:
            if self.username:
                commands.append(("AUTH", self.username, self.password))
            else:
                commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands

    def __str__(self) -> str:
        if self.path is not None:
            where = f"unix://{self.path}"
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            where = f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}"
        return f"{where}/{self.db}" if self.db else where


def require_url(url: object) -> str:
    """`url` if it names Redis by its scheme (``redis://``, ``rediss://``, ``unix://``), else
    a ValueError that quotes it. Checked when a component is built; `parse_url` checks the
    rest when a connection is opened."""
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"not a Redis URL: {url!r}")
    return url


def parse_url(url: str) -> RedisAddress:
    """A `RedisAddress` from a ``redis://``, ``rediss://`` or ``unix://`` URL; ValueError for
    anything else."""
    if not isinstance(url, str):
        raise ValueError(f"not a Redis URL: {url!r}")
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        db = int(query.get("db", "0"))
        if parts.scheme in ("redis", "rediss") and parts.path.strip("/"):
            db = int(parts.path.strip("/"))
        port = parts.port
    except ValueError:
        raise ValueError(f"not a Redis URL: {url!r}") from None
    if db < 0:
        raise ValueError(f"not a Redis URL: {url!r} (negative database)")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is None and "password" in query:
        password = query["password"]
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"not a Redis URL: {url!r} (no socket path)")
        return RedisAddress(path=parts.path, username=username, password=password, db=db)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"not a Redis URL: {url!r}")
    return RedisAddress(
        host=parts.hostname,
        port=port if port is not None else 6379,
        tls=parts.scheme == "rediss",
        tls_verify=query.get("ssl_cert_reqs", "required").lower() != "none",
        tls_ca_file=query.get("ssl_ca_certs"),
        username=username,
        password=password,
        db=db,
    )


# -- commands ---------------------------------------------------------------------------------
def pack(args: tuple[Any, ...]) -> bytes:
    """One command as RESP2 bytes. Arguments: bytes, str (UTF-8), int or float."""
    return hiredis.pack_command(args)  # type: ignore[no-any-return]


class Script:
    """A Lua script: its source and SHA1, for ``EVALSHA`` (``EVAL`` when Redis answers
    ``NOSCRIPT``: a new server, or one that lost its script cache)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# -- Redis Cluster ----------------------------------------------------------------------------
def _crc16_table() -> tuple[int, ...]:
    # CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster uses.
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


@functools.lru_cache(maxsize=65536)  # channels and stream keys repeat: one CRC each
def keyslot(key: str | bytes) -> int:
    """The hash slot of `key`: CRC16 of the key, or of its hash tag (the part between the
    first ``{`` and the next ``}``, when not empty), modulo 16384."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc16(data) % SLOTS


class SlotMap:
    """Which master serves each hash slot, from a ``CLUSTER SLOTS`` reply."""

    __slots__ = ("_owners",)

    def __init__(self, owners: list[Node | None]) -> None:
        self._owners = owners

    @classmethod
    def from_cluster_slots(cls, reply: Any, asked: Node) -> SlotMap:
        """Parse ``CLUSTER SLOTS`` (``[[start, end, [host, port, ...], replicas...], ...]``).
        An empty host means the node that was `asked` (Redis does not know its own address)."""
        owners: list[Node | None] = [None] * SLOTS
        if not isinstance(reply, list):
            raise RedisReplyError(f"ERR unexpected CLUSTER SLOTS reply: {reply!r}")
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            if not host or host == "?":
                host = asked[0]
            node = (host, int(master[1]))
            for slot in range(start, end + 1):
                owners[slot] = node
        return cls(owners)

    def owner(self, slot: int) -> Node | None:
        return self._owners[slot]

    def move(self, slot: int, node: Node) -> None:
        """A MOVED reply: `slot` is served by `node` now."""
        self._owners[slot] = node

    def nodes(self) -> set[Node]:
        return {node for node in self._owners if node is not None}


@dataclass(frozen=True, slots=True)
class Redirect:
    """A ``MOVED`` (the slot lives elsewhere for good) or ``ASK`` (ask there once, after
    ``ASKING``: the slot is being migrated) reply."""

    ask: bool
    slot: int
    node: Node


def redirect(error: RedisReplyError, asked: Node) -> Redirect | None:
    """The redirect `error` carries, or None. An empty host means `asked`'s host."""
    if error.code not in ("MOVED", "ASK"):
        return None
    try:
        _, slot, where = error.message.split(" ", 2)
        host, _, port = where.rpartition(":")
        return Redirect(error.code == "ASK", int(slot), (host or asked[0], int(port)))
    except ValueError:
        return None
