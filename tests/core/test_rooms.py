"""Room rules without sockets (sans-IO)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_rt._core.protocol import ErrorCode
from trio_rt._core.rooms import RoomError, RoomRegistry


def test_join_is_idempotent_and_reports_first_member() -> None:
    reg: RoomRegistry[str] = RoomRegistry()
    first = reg.join("a", "r")
    assert first.joined and first.first_member
    again = reg.join("a", "r")
    assert not again.joined and not again.first_member
    second = reg.join("b", "r")
    assert second.joined and not second.first_member
    assert reg.members_of("r") == {"a", "b"}
    assert reg.rooms_of("a") == {"r"}


def test_leave_is_idempotent_and_empty_room_is_removed() -> None:
    reg: RoomRegistry[str] = RoomRegistry()
    reg.join("a", "r")
    res = reg.leave("a", "r")
    assert res.left and res.last_member and res.removed
    assert reg.get("r") is None
    assert not reg.leave("a", "r").left
    assert reg.rooms_of("a") == frozenset()
    assert reg.member_count() == 0


def test_persistent_room_survives_being_empty() -> None:
    reg: RoomRegistry[str] = RoomRegistry()
    reg.create("p", persistent=True)
    reg.join("a", "p")
    res = reg.leave("a", "p")
    assert res.last_member and not res.removed
    assert reg.get("p") is not None


def test_full_room_is_a_clear_error() -> None:
    reg: RoomRegistry[str] = RoomRegistry()
    reg.create("small", max_users=2)
    reg.join("a", "small")
    reg.join("b", "small")
    with pytest.raises(RoomError) as info:
        reg.join("c", "small")
    assert info.value.code is ErrorCode.ROOM_FULL
    assert "full" in info.value.message
    # a member re-joining a full room is fine (idempotent)
    assert not reg.join("a", "small").joined
    assert reg.rooms_of("c") == frozenset()


def test_auto_create_off_refuses_unknown_rooms_without_revealing() -> None:
    reg: RoomRegistry[str] = RoomRegistry(auto_create=False)
    with pytest.raises(RoomError) as info:
        reg.join("a", "nope")
    assert info.value.code is ErrorCode.NOT_PERMITTED
    reg.create("yes")
    assert reg.join("a", "yes").joined


def test_create_updates_settings_and_validates() -> None:
    reg: RoomRegistry[str] = RoomRegistry()
    reg.create("r", max_users=5, moderators=["admin"])
    reg.join("a", "r")
    room = reg.create("r", max_users=1, moderators=["mod"])
    assert room.members == {"a"}
    assert reg.is_moderator("r", "mod") and not reg.is_moderator("r", "admin")
    assert not reg.is_moderator("r", None)
    for kwargs in ({"max_users": 0}, {"max_users": True}, {"max_users": 1.5}, {"moderators": "ab"}):
        with pytest.raises(ValueError):
            reg.create("x", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        reg.create("bad name")


def test_delete_returns_members_and_forgets_them() -> None:
    reg: RoomRegistry[str] = RoomRegistry()
    reg.join("a", "r")
    reg.join("a", "s")
    assert reg.delete("r") == {"a"}
    assert reg.rooms_of("a") == {"s"}


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcd"), st.sampled_from("xyz"))))
def test_membership_is_consistent_both_ways(ops: list[tuple[bool, str, str]]) -> None:
    reg: RoomRegistry[str] = RoomRegistry()
    reg.create("z", max_users=2)
    for join, member, room in ops:
        if join:
            with contextlib.suppress(RoomError):
                reg.join(member, room)
        else:
            reg.leave(member, room)
    for name, room in reg.rooms.items():
        assert room.members or room.persistent or name == "z"
        for m in room.members:
            assert name in reg.rooms_of(m)
        if room.max_users is not None:
            assert len(room.members) <= room.max_users
    for m in "abcd":
        for name in reg.rooms_of(m):
            assert m in reg.members_of(name)
