"""Rendezvous (highest-random-weight) hashing: which of the live servers owns a key.

Sans-IO: plain functions, no sockets, no Redis. Every server computes the same answer from the
same inputs, with nothing to coordinate:

- each (key, server) pair gets a stable 64-bit score, BLAKE2b of ``key + NUL + server``
  (never Python's ``hash()``, which is randomized per process);
- the key's owner is the server with the highest score; `rendezvous_rank` orders all servers,
  so the second entry is where the key goes if its owner leaves.

Minimal remapping follows from the definition: removing a server moves only the keys it owned
(each to its runner-up); adding one moves only the keys for which the newcomer scores highest,
about 1/(n+1) of them, and all of them to the newcomer.

Weighted HRW: with `weights`, the score of a pair is ``-weight / ln(u)`` where ``u`` is the
64-bit hash mapped into (0, 1); a server then owns a share of the keys proportional to its
weight (missing servers weigh 1.0). Without weights the raw 64-bit hash is compared, exactly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

from .checks import number_problem, require

__all__ = ["rendezvous_owner", "rendezvous_rank", "rendezvous_score"]

_SEP = b"\x00"
_TWO_64 = float(2**64)


def _key_bytes(key: str | bytes) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


def _server_list(servers: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for server in servers:
        if not isinstance(server, str):
            raise TypeError(f"server ids must be str, not {type(server).__name__}")
        if _SEP.decode() in server:
            raise ValueError(f"server id must not contain NUL: {server!r}")
        seen[server] = None
    return list(seen)


def _check_weights(weights: Mapping[str, float] | None) -> None:
    if weights is None:
        return
    for server, weight in weights.items():
        require(number_problem(f"weight of {server!r}", weight))


def _hash64(prefix: hashlib.blake2b, server: str) -> int:
    h = prefix.copy()
    h.update(server.encode())
    return int.from_bytes(h.digest(), "big")


def _prefix(key: str | bytes) -> hashlib.blake2b:
    return hashlib.blake2b(_key_bytes(key) + _SEP, digest_size=8)


def _weighted(h: int, weight: float) -> float:
    # ln(u) with u = (h + 0.5) / 2**64 in (0, 1). Near 1, log1p of the distance keeps ln(u)
    # nonzero (plain float division would round u to 1.0 and divide by zero).
    if h < 2**63:
        ln_u = math.log((h + 0.5) / _TWO_64)
    else:
        ln_u = math.log1p(-((2**64 - h) - 0.5) / _TWO_64)
    return -weight / ln_u


def rendezvous_score(
    key: str | bytes, server: str, weights: Mapping[str, float] | None = None
) -> float:
    """The score of (key, server): the raw 64-bit hash, or the weighted score with `weights`."""
    _check_weights(weights)
    (server,) = _server_list([server])
    h = _hash64(_prefix(key), server)
    if weights is None:
        return float(h)
    return _weighted(h, weights.get(server, 1.0))


def rendezvous_rank(
    key: str | bytes, servers: Iterable[str], weights: Mapping[str, float] | None = None
) -> list[str]:
    """All `servers` (duplicates dropped), best owner of `key` first.

    Ties (astronomically unlikely) are broken by server id, so the order is total and the same
    everywhere.
    """
    _check_weights(weights)
    ids = _server_list(servers)
    prefix = _prefix(key)
    if weights is None:
        scored_int = [(_hash64(prefix, s), s) for s in ids]
        scored_int.sort(reverse=True)
        return [s for _, s in scored_int]
    scored = [(_weighted(_hash64(prefix, s), weights.get(s, 1.0)), s) for s in ids]
    scored.sort(reverse=True)
    return [s for _, s in scored]


def rendezvous_owner(
    key: str | bytes, servers: Iterable[str], weights: Mapping[str, float] | None = None
) -> str | None:
    """The server that owns `key` among `servers`, or None when there are none."""
    _check_weights(weights)
    ids = _server_list(servers)
    if not ids:
        return None
    prefix = _prefix(key)
    if weights is None:
        return max((_hash64(prefix, s), s) for s in ids)[1]
    return max((_weighted(_hash64(prefix, s), weights.get(s, 1.0)), s) for s in ids)[1]
