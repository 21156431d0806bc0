"""Listening sockets that several processes share: ``SO_REUSEPORT`` (Linux).

`trio-rt serve --workers N` (``_workers.py``) runs N processes that each open their own
listening socket on the same host:port with ``SO_REUSEPORT``; Linux then spreads new connections
over every listening socket of the group (a hash of the connection's addresses and ports), so
no process accepts for another and no descriptor is passed around. A worker that dies leaves
the group; its restart joins it again.

Only Linux balances this way: BSDs and macOS accept ``SO_REUSEPORT`` with other meanings (the
last socket takes every connection, or duplicate bindings only), so `reuse_port_problem` refuses
them rather than running N workers of which one gets all the clients.
"""

from __future__ import annotations

import errno
import socket
import sys

import trio

__all__ = ["open_reuseport_listeners", "reuse_port_problem"]

BACKLOG = 0xFFFF  # as trio's default: the kernel caps it at net.core.somaxconn


def reuse_port_problem() -> str | None:
    """Why this platform cannot share a port between worker processes, or None if it can."""
    if not sys.platform.startswith("linux"):
        return f"several workers on one port need Linux's SO_REUSEPORT (this is {sys.platform})"
    if not hasattr(socket, "SO_REUSEPORT"):
        return "several workers on one port need SO_REUSEPORT, which this Python lacks"
    return None


async def open_reuseport_listeners(
    port: int, *, host: str | None, backlog: int = BACKLOG
) -> list[trio.SocketListener]:
    """`trio.open_tcp_listeners`, with ``SO_REUSEPORT`` set on every socket before it binds.

    One listener per address `host` resolves to (None: the IPv4 and IPv6 wildcards). With
    ``port=0`` the first socket's port is used for the others, so one port serves every
    address. Raises OSError (e.g. EADDRINUSE when a socket without ``SO_REUSEPORT`` holds the
    port) and RuntimeError where the platform cannot do it (`reuse_port_problem`); nothing is
    left open when it raises.
    """
    problem = reuse_port_problem()
    if problem is not None:
        raise RuntimeError(problem)
    addresses = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    unsupported: list[OSError] = []
    try:
        for family, type_, proto, _, sockaddr in addresses:
            try:
                sock = trio.socket.socket(family, type_, proto)
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT:  # e.g. no IPv6: the other family will do
                    unsupported.append(exc)
                    continue
                raise
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and listeners:  # one port for every address
                    sockaddr = (sockaddr[0], listeners[0].socket.getsockname()[1], *sockaddr[2:])
                await sock.bind(sockaddr)
                sock.listen(backlog)
                listeners.append(trio.SocketListener(sock))
            except BaseException:
                sock.close()
                raise
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    if not listeners:
        raise OSError(errno.EAFNOSUPPORT, "no address family of this host can listen", unsupported)
    return listeners
