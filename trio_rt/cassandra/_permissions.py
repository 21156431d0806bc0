"""`CassandraPermissionStore`: the `PermissionStore` seam (trio_rt/_engine/permissions.py) with the
grants in a Cassandra table, through `CassandraSession`.

The wildcard rules are the seam's (``*`` users, ``<kind>:*`` and ``*`` resources, the ``*``
action), the same as `MemoryPermissionStore`'s.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from .._core.checks import int_problem, number_problem, require
from .._engine.permissions import ANY, candidates, check_grant
from ._session import CassandraSession

__all__ = ["CassandraPermissionStore"]

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")


class CassandraPermissionStore:
    """Grants in a Cassandra table (the TypeScript original's ``UserPermission``: user -> resource
    -> actions).

    Schema (created by `create_table`)::

        CREATE TABLE <keyspace>.<table> (
            user_id text, resource text, actions set<text>,
            PRIMARY KEY (user_id, resource))

    One partition per user, one row per resource. A check is one prepared ``SELECT`` with the
    values bound (``user_id IN (user, '*') AND resource IN (resource, kind:*, *)``): user
    input never reaches the CQL text. Answers are cached for `cache_ttl` seconds (default 5,
    0 disables), at most `cache_size` entries (least recently used out), so a revocation takes
    effect within `cache_ttl` on every server; `grant` and `revoke` through this object clear
    its own cache at once. Errors from Cassandra propagate (the manager refuses: fail closed).
    """

    def __init__(
        self,
        session: CassandraSession,
        keyspace: str,
        *,
        table: str = "trio_rt_permissions",
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        for what, name in (("keyspace", keyspace), ("table", table)):
            if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
                raise ValueError(
                    f"{what} must be a letter then letters, digits or '_' (48 at most), "
                    f"not {name!r}"
                )
        require(
            number_problem("cache_ttl", cache_ttl, at_least=0),
            int_problem("cache_size", cache_size),
        )
        self.session = session
        self.table = f"{keyspace}.{table}"
        self.cache_ttl = float(cache_ttl)
        self.cache_size = cache_size
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._cache: OrderedDict[tuple[str | None, str, str], tuple[float, bool]] = OrderedDict()
        self._select = f"SELECT actions FROM {self.table} WHERE user_id IN ? AND resource IN ?"

    async def create_table(self) -> None:
        """``CREATE TABLE IF NOT EXISTS`` (the keyspace must exist)."""
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "user_id text, resource text, actions set<text>, PRIMARY KEY (user_id, resource))"
        )

    async def grant(self, user_id: str, resource: str, *actions: str) -> None:
        if not actions:
            raise ValueError("grant at least one action")
        for action in actions:
            check_grant(user_id, resource, action)
        await self.session.execute(
            f"UPDATE {self.table} SET actions = actions + ? WHERE user_id = ? AND resource = ?",
            (set(actions), user_id, resource),
        )
        self._cache.clear()

    async def revoke(self, user_id: str, resource: str, *actions: str) -> None:
        """Take back `actions` (all of them, i.e. the row, when none is given)."""
        check_grant(user_id, resource, "x")
        if actions:
            await self.session.execute(
                f"UPDATE {self.table} SET actions = actions - ? WHERE user_id = ? AND resource = ?",
                (set(actions), user_id, resource),
            )
        else:
            await self.session.execute(
                f"DELETE FROM {self.table} WHERE user_id = ? AND resource = ?",
                (user_id, resource),
            )
        self._cache.clear()

    async def has_permission(self, user_id: str | None, resource: str, action: str) -> bool:
        key = (user_id, resource, action)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(key)
            return cached[1]
        users = [user_id, ANY] if user_id is not None and user_id != ANY else [ANY]
        rows = await self.session.execute(self._select, (users, list(candidates(resource))))
        allowed = any(action in acts or ANY in acts for acts in _action_sets(rows))
        if self.cache_ttl > 0:
            self._cache[key] = (now + self.cache_ttl, allowed)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return allowed


def _action_sets(rows: Iterable[dict[str, object]]) -> Iterable[frozenset[str]]:
    for row in rows:
        actions = row.get("actions")
        if actions:  # a set emptied by revoke reads back as None
            yield frozenset(str(a) for a in actions)  # type: ignore[attr-defined]
