"""Authorization: who may do what to which resource.

A permission is (user, resource, action). Resources are strings such as ``room:<name>`` and
``table:<name>``; actions are ``join``, ``read``, ``broadcast``, ``moderate`` (any string
works; these are the ones trio_rt itself asks about). The manager asks its store through
`WebSocketManager.authorize(conn, resource, action)`.

Wildcards, the same in every store: a grant to user ``*`` applies to every user, including
anonymous connections (user None); a grant on resource ``*`` covers every resource, on
``room:*`` every resource starting with ``room:``; the action ``*`` covers every action.
Resource names are never parsed further: ``room:a*`` is a room literally named ``a*``.

The seam and the in-memory store live here (no I/O); `CassandraPermissionStore` keeps grants
in Cassandra (trio_rt/cassandra/_permissions.py, ``trio_rt.CassandraPermissionStore``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = [
    "ANY",
    "MemoryPermissionStore",
    "PermissionStore",
    "candidates",
    "check_grant",
]

ANY = "*"


@runtime_checkable
class PermissionStore(Protocol):
    """Answers one question. Raising (store unreachable) makes the manager refuse: fail closed."""

    async def has_permission(self, user_id: str | None, resource: str, action: str) -> bool: ...


def candidates(resource: str) -> tuple[str, ...]:
    """The grant resources that cover `resource`: itself, ``<kind>:*`` and ``*``."""
    kind, sep, _ = resource.partition(":")
    if sep and resource != f"{kind}:{ANY}":
        return (resource, f"{kind}:{ANY}", ANY)
    return (resource, ANY) if resource != ANY else (ANY,)


def check_grant(user_id: object, resource: object, action: object) -> None:
    """``ValueError`` unless a grant's user, resource and action are non-empty strings."""
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id must be a non-empty string ('*' for everyone)")
    if not isinstance(resource, str) or not resource:
        raise ValueError("resource must be a non-empty string")
    if not isinstance(action, str) or not action:
        raise ValueError("action must be a non-empty string")


class MemoryPermissionStore:
    """Grants in a dict: for tests, single-process apps, or a cache the app fills itself."""

    def __init__(self) -> None:
        self._grants: dict[str, dict[str, set[str]]] = {}

    def grant(self, user_id: str, resource: str, *actions: str) -> None:
        """Allow `user_id` (``*``: everyone) the `actions` on `resource` (wildcards above)."""
        if not actions:
            raise ValueError("grant at least one action")
        for action in actions:
            check_grant(user_id, resource, action)
        self._grants.setdefault(user_id, {}).setdefault(resource, set()).update(actions)

    def revoke(self, user_id: str, resource: str, *actions: str) -> None:
        """Take back `actions` (all of them when none is given). Unknown grants are ignored.

        Revokes exactly what was granted: revoking ``join`` on ``room:a`` does not restrict a
        grant on ``room:*``.
        """
        by_resource = self._grants.get(user_id)
        if by_resource is None or resource not in by_resource:
            return
        if actions:
            by_resource[resource].difference_update(actions)
        if not actions or not by_resource[resource]:
            del by_resource[resource]
        if not by_resource:
            del self._grants[user_id]

    def allowed(self, user_id: str | None, resource: str, action: str) -> bool:
        """The sync answer of `has_permission`."""
        users = (user_id, ANY) if user_id is not None and user_id != ANY else (ANY,)
        for user in users:
            by_resource = self._grants.get(user)
            if not by_resource:
                continue
            for res in candidates(resource):
                actions = by_resource.get(res)
                if actions and (action in actions or ANY in actions):
                    return True
        return False

    async def has_permission(self, user_id: str | None, resource: str, action: str) -> bool:
        return self.allowed(user_id, resource, action)
