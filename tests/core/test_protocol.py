"""The wire protocol without sockets (sans-IO)."""

from __future__ import annotations

import contextlib
import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from trio_rt._core.protocol import (
    BUILTIN_COMMANDS,
    BUILTIN_TYPES,
    MAX_ROOM_NAME_LENGTH,
    ClientMessage,
    ErrorCode,
    History,
    JoinRoom,
    Kick,
    LeaveRoom,
    Ping,
    PresenceQuery,
    PresenceStatsQuery,
    ProtocolError,
    Refresh,
    StreamPosition,
    Subscribe,
    Unsubscribe,
    encode,
    encode_text_frame,
    error_message,
    parse,
    reply,
    validate_room_name,
)


def code_of(frame: str | bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        parse(frame)
    return info.value.code


def test_builtins_parse() -> None:
    assert parse('{"type":"join_room","room":"chat:general"}') == JoinRoom("chat:general")
    assert parse('{"type":"leave_room","room":"r","id":3}') == LeaveRoom("r", 3)
    assert parse('{"type":"ping","id":"a"}') == Ping("a")
    assert parse('{"type":"kick","room":"r","user_id":"u"}') == Kick("r", "u")


def test_app_message_keeps_whole_object() -> None:
    msg = parse('{"type":"chat_message","payload":{"room":"r","message":"hi"}}')
    assert isinstance(msg, ClientMessage)
    assert msg.type == "chat_message"
    assert msg.data["payload"] == {"room": "r", "message": "hi"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", ErrorCode.INVALID_JSON),
        ("{", ErrorCode.INVALID_JSON),
        ("[1,2]", ErrorCode.INVALID_MESSAGE),
        ('"x"', ErrorCode.INVALID_MESSAGE),
        ("null", ErrorCode.INVALID_MESSAGE),
        ("{}", ErrorCode.MISSING_TYPE),
        ('{"type": 5}', ErrorCode.INVALID_FIELD),
        ('{"type": ""}', ErrorCode.INVALID_FIELD),
        ('{"type": "a b"}', ErrorCode.INVALID_FIELD),
        ('{"type": "' + "a" * 65 + '"}', ErrorCode.TOO_LARGE),
        ('{"type":"join_room"}', ErrorCode.INVALID_FIELD),
        ('{"type":"join_room","room":5}', ErrorCode.INVALID_FIELD),
        ('{"type":"join_room","room":""}', ErrorCode.INVALID_FIELD),
        ('{"type":"join_room","room":"a b"}', ErrorCode.INVALID_FIELD),
        ('{"type":"join_room","room":"a\\u0000"}', ErrorCode.INVALID_FIELD),
        ('{"type":"join_room","room":"' + "r" * 129 + '"}', ErrorCode.TOO_LARGE),
        ('{"type":"kick","room":"r"}', ErrorCode.INVALID_FIELD),
        ('{"type":"ping","id":true}', ErrorCode.INVALID_FIELD),
        ('{"type":"ping","id":[1]}', ErrorCode.INVALID_FIELD),
        ('{"type":"ping","id":' + str(2**60) + "}", ErrorCode.INVALID_FIELD),
        (b'{"type":"ping"}', ErrorCode.UNSUPPORTED_DATA),
        ("[" * 100_000 + "]" * 100_000, ErrorCode.INVALID_JSON),
        ('{"type":"x","n":' + "9" * 5000 + "}", ErrorCode.INVALID_JSON),
    ],
)
def test_bad_frames_name_what_was_wrong(frame: str | bytes, code: ErrorCode) -> None:
    assert code_of(frame) is code


def test_error_keeps_request_id() -> None:
    with pytest.raises(ProtocolError) as info:
        parse('{"type":"join_room","room":7,"id":"req-1"}')
    assert info.value.request_id == "req-1"


def test_room_names() -> None:
    assert validate_room_name("user:123") == "user:123"
    assert validate_room_name("チャット") == "チャット"
    assert validate_room_name("r" * MAX_ROOM_NAME_LENGTH)
    for bad in ["", " ", "a\nb", "a\tb", None, 3]:
        with pytest.raises(ProtocolError):
            validate_room_name(bad)


def test_room_names_refuse_every_control_and_bidi_control_character() -> None:
    # Category Cc is C0, DEL and C1 (U+0080-U+009F: U+009B starts a terminal control sequence).
    controls = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cc"]
    assert len(controls) == 65 and "\x9b" in controls and "\x85" in controls
    bidi = [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]]
    marks = ["\u200e", "\u200f", "\u061c"]  # invisible: two look-alike names, one room each
    for char in controls + bidi + marks:
        for name in (char, f"lobby{char}", f"{char}lobby", f"a{char}b"):
            with pytest.raises(ProtocolError) as info:
                validate_room_name(name)
            assert info.value.code == ErrorCode.INVALID_FIELD, hex(ord(char))
            assert "control" in info.value.message
    # Letters of any script, and the joiners some scripts need, stay allowed.
    for good in [
        "שלום",
        "غرفة",
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a ZWNJ
        "👩\u200d💻",
        "zażółć",
    ]:
        assert validate_room_name(good) == good


def test_encode_is_compact_utf8_and_refuses_nan() -> None:
    assert encode({"type": "x", "m": "é"}) == '{"type":"x","m":"é"}'.encode()
    with pytest.raises(ValueError):
        encode({"type": "x", "v": float("nan")})
    with pytest.raises(TypeError):
        encode({"type": "x", "v": object()})


def test_error_message_shape() -> None:
    assert error_message(ErrorCode.ROOM_FULL, "full", request_id=1) == {
        "type": "error",
        "code": "room_full",
        "message": "full",
        "id": 1,
    }


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_matches_websockets(size: int) -> None:
    payload = b"x" * size
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert encode_text_frame(payload) == expected


@given(st.text(max_size=300))
def test_parse_never_raises_anything_but_protocol_error(text: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse(text)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        # Infinity is not JSON: refused (tests/engine/test_hostile.py), like NaN
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=20,
    )
)
def test_any_json_value_is_parsed_or_refused_clearly(value: object) -> None:
    try:
        result = parse(json.dumps({"type": "app", "v": value}))
    except ProtocolError as exc:  # pragma: no cover - every value is acceptable payload
        raise AssertionError(exc) from None
    assert isinstance(result, ClientMessage)


# -- the table ----------------------------------------------------------------------------------
# One valid message per built-in type and the command it parses to: a new built-in needs a line.
SINCE = {"offset": 3, "epoch": "e1"}
EXAMPLES = {
    "join_room": ({"room": "r", "since": SINCE}, JoinRoom("r", 1, StreamPosition(3, "e1"))),
    "leave_room": ({"room": "r"}, LeaveRoom("r", 1)),
    "ping": ({}, Ping(1)),
    "kick": ({"room": "r", "user_id": "u"}, Kick("r", "u", 1)),
    "history": ({"room": "r", "after": SINCE}, History("r", 50, None, 1, StreamPosition(3, "e1"))),
    "subscribe": ({"table": "posts", "filters": None}, Subscribe("posts", {}, None, 1)),
    "unsubscribe": ({"subscription": "s1"}, Unsubscribe("s1", 1)),
    "refresh": ({"token": "t"}, Refresh("t", 1)),
    "presence": ({"room": "r"}, PresenceQuery("r", 1)),
    "presence_stats": ({"room": "r"}, PresenceStatsQuery("r", 1)),
}


def test_the_builtin_types_are_the_tables_keys() -> None:
    assert set(EXAMPLES) == BUILTIN_TYPES == set(BUILTIN_COMMANDS)
    for mtype, cls in BUILTIN_COMMANDS.items():
        assert mtype == cls.TYPE


@pytest.mark.parametrize("mtype", sorted(EXAMPLES))
def test_each_builtin_parses_through_its_own_class(mtype: str) -> None:
    fields, command = EXAMPLES[mtype]
    frame = json.dumps({"type": mtype, "id": 1, **fields})
    assert parse(frame) == command
    assert BUILTIN_COMMANDS[mtype].from_json(json.loads(frame), 1) == command


def test_a_type_not_in_the_table_is_the_apps() -> None:
    for mtype in ("join_rooms", "Ping", "app.ping", "history:v2"):
        message = parse(json.dumps({"type": mtype, "room": 5}))
        assert message == ClientMessage(mtype, {"type": mtype, "room": 5})


# Refusals as the client sees them: code and message unchanged since the parser became a table.
@pytest.mark.parametrize(
    ("message", "code", "text"),
    [
        (
            {"type": "join_room", "room": "r", "since": 5},
            "invalid_field",
            '\'since\' must be an object {"offset": int, "epoch": str}',
        ),
        (
            {"type": "history", "room": "r", "limit": 0},
            "invalid_field",
            "'limit' must be an integer from 1 to 1000",
        ),
        (
            {"type": "history", "room": "r", "before": SINCE, "after": SINCE},
            "invalid_field",
            "give 'before' or 'after', not both",
        ),
        (
            {"type": "history", "room": "r", "after": {"offset": 1, "epoch": "e", "x": 1}},
            "invalid_field",
            "'after' has unknown field(s): x",
        ),
        (
            {"type": "subscribe", "table": "Posts"},
            "invalid_field",
            "'table' must be a table name: a lowercase letter, then lowercase letters, digits "
            "or '_'",
        ),
        (
            {"type": "subscribe", "table": "posts", "filters": []},
            "invalid_field",
            "'filters' must be an object",
        ),
        (
            {"type": "unsubscribe"},
            "invalid_field",
            "'subscription' must be a subscription id from a 'subscribed' reply",
        ),
        (
            {"type": "kick", "room": "r", "user_id": ""},
            "invalid_field",
            "'user_id' must be a non-empty string",
        ),
        (
            {"type": "refresh", "token": "t" * 8193},
            "too_large",
            "'token' is longer than 8192 characters",
        ),
        (
            {"type": "leave_room", "room": "a b"},
            "invalid_field",
            "'room' must be 1 or more characters without whitespace, control or bidi control "
            "characters",
        ),
    ],
)
def test_refusals_keep_their_code_message_and_id(
    message: dict[str, object], code: str, text: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(json.dumps({**message, "id": "q"}))
    assert (info.value.code, info.value.message, info.value.request_id) == (code, text, "q")


def test_reply_puts_the_request_id_last_and_only_when_there_is_one() -> None:
    assert reply("pong", None) == {"type": "pong"}
    built = reply("room_left", 0, room="r")  # 0 is an id like any other
    assert built == {"type": "room_left", "room": "r", "id": 0}
    assert list(built) == ["type", "room", "id"]
    error = error_message(ErrorCode.RATE_LIMITED, "slow down", request_id="a", retry_after=1.5)
    assert list(error) == ["type", "code", "message", "id", "retry_after"]
