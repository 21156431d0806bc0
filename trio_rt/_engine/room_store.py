"""RoomStore: where persistent rooms' settings live across restarts.

Without a store, a persistent room lives as long as the process. With one
(``WebSocketManager(room_store=CassandraRoomStore(...))``), `create_room(persistent=True)`
saves the room's settings, `delete_room` removes them, and `serve` creates every saved room
before it accepts connections.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

__all__ = ["RoomSettings", "RoomStore"]


@dataclass(frozen=True, slots=True)
class RoomSettings:
    name: str
    max_users: int | None = None
    moderators: frozenset[str] = frozenset()
    private: bool = False


class RoomStore(abc.ABC):
    """Saved settings of persistent rooms. Every method may raise the backend's errors."""

    @abc.abstractmethod
    async def load(self) -> list[RoomSettings]: ...

    @abc.abstractmethod
    async def save(self, settings: RoomSettings) -> None: ...

    @abc.abstractmethod
    async def delete(self, name: str) -> None: ...
