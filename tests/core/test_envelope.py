"""Broker envelopes and the exactly-once recipient rule without sockets (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_rt._core.envelope import (
    KIND_KICK,
    Envelope,
    decode_envelope,
    encode_envelope,
    recipients,
    unique_rooms,
)


def test_roundtrip() -> None:
    for env in [
        Envelope(b'{"type":"x"}'),
        Envelope(b"{}", rooms=("a", "b"), exclude="c1", origin="s1"),
        Envelope(b"{}", rooms=("a",), kind=KIND_KICK, user_id="u"),
        Envelope(b"payload\nwith newline"),
        Envelope(b"{}", rooms=("a",), offset=7, epoch="0badcafe"),
    ]:
        assert decode_envelope(encode_envelope(env)) == env


@pytest.mark.parametrize(
    "data", [b"", b"no header", b"[1]\n", b'{"r": 5}\n', b'{"x": 1}\n', b'{"e": 1}\n', b"{bad\n"]
)
def test_foreign_data_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_envelope(data)


def test_unique_rooms_keeps_first_order() -> None:
    assert unique_rooms(["b", "a", "b", "c", "a"]) == ("b", "a", "c")


@given(
    memberships=st.dictionaries(
        st.integers(0, 30), st.sets(st.sampled_from("abcdef")), max_size=30
    ),
    targets=st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=6),
)
def test_each_member_of_any_target_room_is_served_exactly_once(
    memberships: dict[int, set[str]], targets: list[str]
) -> None:
    rooms = unique_rooms(targets)
    env = Envelope(b"{}", rooms=rooms)

    def members_of(room: str) -> list[int]:
        return [m for m, rs in memberships.items() if room in rs]

    def rooms_of(m: int) -> set[str]:
        return memberships[m]

    served: list[int] = []
    for room in rooms:  # every server subscribed to each room channel gets one copy
        served.extend(recipients(env, room, members_of, rooms_of))
    expected = sorted(m for m, rs in memberships.items() if rs & set(rooms))
    assert sorted(served) == expected
