"""The wire protocol without sockets (sans-IO)."""

from __future__ import annotations

import contextlib
import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from trio_rt._protocol import (
    MAX_ROOM_NAME_LENGTH,
    ClientMessage,
    ErrorCode,
    JoinRoom,
    Kick,
    LeaveRoom,
    Ping,
    ProtocolError,
    encode,
    encode_text_frame,
    error_message,
    parse,
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
        # Infinity is not JSON: refused (tests/test_hostile.py), like NaN
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
