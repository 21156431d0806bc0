"""ServerOptions (the dataclass the server reads) and ServerOptionsDict (the keywords a type
checker checks) list the same options with the same types."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from trio_rt import ServerOptions, ServerOptionsDict, SlowConsumerPolicy


def test_the_typed_dict_and_the_dataclass_list_the_same_names_and_types() -> None:
    fields = typing.get_type_hints(ServerOptions)
    keys = typing.get_type_hints(ServerOptionsDict)
    assert list(keys) == list(fields)  # same order too: one reads like the other
    for name, annotation in fields.items():
        assert keys[name] == annotation, name
    assert ServerOptions.names() == frozenset(fields)
    assert ServerOptionsDict.__required_keys__ == frozenset()  # every key optional


def test_a_typed_dict_of_options_builds_the_options() -> None:
    options: ServerOptionsDict = {
        "port": 0,
        "subprotocols": ["trio_rt.v1", "chat"],
        "allowed_origins": ["https://App.example.com"],
        "rate_limits": {"typing": None},
        "slow_consumer_policy": SlowConsumerPolicy.DROP_OLDEST,
    }
    built = ServerOptions.from_dict(options)
    assert built == ServerOptions(**options)
    # Sequences are kept as tuples (origins lowercased), mappings read-only.
    assert built.subprotocols == ("trio_rt.v1", "chat")
    assert built.allowed_origins == ("https://app.example.com",)
    with pytest.raises(TypeError):
        built.rate_limits["typing"] = 1  # type: ignore[index]
    assert dataclasses.replace(built, port=1).subprotocols == ("trio_rt.v1", "chat")


def test_unknown_names_are_a_type_error_naming_them() -> None:
    with pytest.raises(TypeError, match=r"unknown WebSocketManager option\(s\): hearbeat, prot"):
        ServerOptions.from_dict({"prot": 1, "hearbeat": 2})  # type: ignore[typeddict-unknown-key]


def test_every_problem_is_reported_at_once_in_the_shared_wording() -> None:
    with pytest.raises(ValueError) as info:
        ServerOptions(outbox_size=0, heartbeat_interval=float("inf"), rate_limit_burst=True)
    assert str(info.value) == (
        "invalid WebSocketManager options: heartbeat_interval must be a positive finite number"
        " or None, not inf; outbox_size must be a positive integer, not 0; rate_limit_burst"
        " must be a positive integer or None, not True"
    )
