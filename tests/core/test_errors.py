"""trio_rt's exceptions are one tree under TrioRTError, drawn in
trio_rt/_core/errors.py's docstring; RoomError is a ProtocolError, so the server answers both in
one branch."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import trio_rt
from trio_rt import ErrorCode, ProtocolError, RoomError, TrioRTError
from trio_rt._core import errors as _errors
from trio_rt._core.rooms import RoomRegistry


def _public_exceptions() -> dict[str, type[BaseException]]:
    """Every public exception class defined in a trio_rt module (test tooling aside)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(trio_rt.__path__, "trio_rt."):
        if info.name.startswith("trio_rt.testing") or info.name == "trio_rt.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ == info.name
                and not name.startswith("_")
            ):
                found[name] = obj
    return found


EXCEPTIONS = _public_exceptions()


def test_the_walk_finds_the_known_exceptions() -> None:
    for name in ("ProtocolError", "RoomError", "BrokerUnavailable", "Reject", "AuthError"):
        assert name in EXCEPTIONS
    assert {"CassandraError", "ClientError", "ServerError"} <= set(EXCEPTIONS)


def _drawn_tree() -> dict[str, str]:
    """The tree in trio_rt/_core/errors.py's docstring as {class: parent}: each ``── Name`` line
    sits under the nearest line above it that starts further left."""
    doc = _errors.__doc__
    assert doc is not None
    lines = [line for line in doc.splitlines() if "── " in line]
    root = next(line for line in doc.splitlines() if line.strip().startswith("TrioRTError"))
    stack: list[tuple[int, str]] = [(root.index("TrioRTError"), "TrioRTError")]
    parents: dict[str, str] = {}
    for line in lines:
        column = line.index("── ") + 3
        name = line[column:].split()[0]
        while stack[-1][0] >= column:
            stack.pop()
        parents[name] = stack[-1][1]
        stack.append((column, name))
    return parents


@pytest.mark.parametrize("name", sorted(EXCEPTIONS))
def test_every_exception_is_a_trio_rt_error_and_in_the_drawn_tree(name: str) -> None:
    cls = EXCEPTIONS[name]
    assert issubclass(cls, TrioRTError), f"{cls.__module__}.{name} is not a TrioRTError"
    assert name in {*_drawn_tree(), "TrioRTError"}, (
        f"{name} is missing from the tree in trio_rt/_core/errors.py"
    )


def test_the_drawn_tree_names_real_classes_under_their_real_parents() -> None:
    classes: dict[str, type[BaseException]] = {**EXCEPTIONS, "TrioRTError": TrioRTError}
    for name, parent in _drawn_tree().items():
        assert name in classes, f"the tree names {name}, which trio_rt does not define"
        assert classes[name].__bases__ == (classes[parent],), f"{name} is drawn under {parent}"


def test_a_room_error_is_a_protocol_error_of_the_same_shape() -> None:
    registry: RoomRegistry[str] = RoomRegistry(auto_create=False)
    with pytest.raises(ProtocolError) as info:  # one except branch catches both
        registry.join("ann", "nowhere")
    assert isinstance(info.value, RoomError)
    assert info.value.code is ErrorCode.NOT_PERMITTED
    assert info.value.request_id is None  # the server fills in the request's id
    error = RoomError(ErrorCode.ROOM_FULL, "full", request_id=7)
    assert (error.code, error.message, error.request_id, str(error)) == (
        ErrorCode.ROOM_FULL,
        "full",
        7,
        "full",
    )


def test_public_names_stay_where_they_were() -> None:
    from trio_rt._core.protocol import ErrorCode as ProtocolsErrorCode
    from trio_rt._core.protocol import ProtocolError as ProtocolsProtocolError
    from trio_rt._core.rooms import RoomError as RoomsRoomError

    assert ProtocolsErrorCode is ErrorCode
    assert ProtocolsProtocolError is ProtocolError is trio_rt.ProtocolError
    assert RoomsRoomError is RoomError is trio_rt.RoomError
    assert trio_rt.TrioRTError is TrioRTError
