"""The Redis edge's sans-IO parts: URLs, command packing, hash slots, the slot map, redirects,
and the error tree (trio_rt/redis/_resp.py)."""

from __future__ import annotations

import hiredis
import pytest

from trio_rt import TrioRTError
from trio_rt.redis import RedisError, RedisReplyError, RedisTimeout, RedisUnavailable
from trio_rt.redis._resp import (
    SLOTS,
    Redirect,
    RedisAddress,
    Script,
    SlotMap,
    crc16,
    keyslot,
    pack,
    parse_url,
    redirect,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", RedisAddress("127.0.0.1", 6379)),
        ("redis://example.com", RedisAddress("example.com", 6379)),
        ("redis://h:7000/3", RedisAddress("h", 7000, db=3)),
        ("redis://h?db=2", RedisAddress("h", db=2)),
        ("redis://:s%40cret@h:1/0", RedisAddress("h", 1, password="s@cret")),
        ("redis://ann:pw@h:1", RedisAddress("h", 1, username="ann", password="pw")),
        ("redis://h?password=pw", RedisAddress("h", password="pw")),
        ("rediss://h:6380/0", RedisAddress("h", 6380, tls=True)),
        (
            "rediss://h/0?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem",
            RedisAddress("h", tls=True, tls_verify=False, tls_ca_file="/ca.pem"),
        ),
        ("unix:///run/redis.sock", RedisAddress(path="/run/redis.sock")),
        (
            "unix:///run/r.sock?db=1&password=pw",
            RedisAddress(path="/run/r.sock", db=1, password="pw"),
        ),
        ("redis://[::1]:6379", RedisAddress("::1", 6379)),
    ],
)
def test_urls(url: str, expected: RedisAddress) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url", ["http://h", "redis://", "redis://h:port", "redis://h/x", "unix://", "redis://h/-1", 7]
)
def test_bad_urls(url: object) -> None:
    with pytest.raises(ValueError):
        parse_url(url)  # type: ignore[arg-type]


def test_handshake_and_printing_never_show_the_password() -> None:
    address = parse_url("redis://ann:pw@h:1/2")
    assert address.handshake() == [("AUTH", "ann", "pw"), ("SELECT", 2)]
    assert parse_url("redis://:pw@h").handshake() == [("AUTH", "pw")]
    assert parse_url("redis://h").handshake() == []
    assert str(address) == "redis://h:1/2" and "pw" not in repr(str(address))
    assert str(parse_url("unix:///s.sock")) == "unix:///s.sock"
    node = address.node("10.0.0.2", 7001)
    assert (node.host, node.port, node.password, node.db) == ("10.0.0.2", 7001, "pw", 2)


def test_pack_is_resp2_and_round_trips_through_hiredis() -> None:
    data = pack(("PUBLISH", "ch", b"\x00bytes", 7, 1.5))
    assert data == b"*5\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$6\r\n\x00bytes\r\n$1\r\n7\r\n$3\r\n1.5\r\n"
    reader = hiredis.Reader()
    # the same bytes as a multi-bulk reply parse back to the arguments
    reader.feed(data)
    assert reader.gets() == [b"PUBLISH", b"ch", b"\x00bytes", b"7", b"1.5"]


def test_reply_errors_carry_their_code() -> None:
    reader = hiredis.Reader(replyError=RedisReplyError)
    reader.feed(b"-NOSCRIPT No matching script.\r\n-ERR\r\n")
    first, second = reader.gets(), reader.gets()
    assert isinstance(first, RedisReplyError) and first.code == "NOSCRIPT"
    assert first.message == "NOSCRIPT No matching script."
    assert isinstance(second, RedisReplyError) and second.code == "ERR"


def test_the_error_tree() -> None:
    assert issubclass(RedisError, TrioRTError)
    assert issubclass(RedisTimeout, RedisUnavailable) and issubclass(RedisUnavailable, RedisError)
    assert issubclass(RedisReplyError, RedisError)
    assert RedisUnavailable("x").maybe_sent is False
    assert RedisTimeout("x", maybe_sent=True).maybe_sent is True


def test_script_sha() -> None:
    assert Script("return 1").sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"


def test_crc16_and_key_slots_match_redis_cluster() -> None:
    assert crc16(b"123456789") == 0x31C3  # the CRC-16/XMODEM check value
    # CLUSTER KEYSLOT on a real cluster says the same
    assert keyslot("foo") == 12182 and keyslot(b"foo") == 12182
    assert keyslot("{user1000}.following") == keyslot("user1000") == 3443
    # (values from CLUSTER KEYSLOT of Redis 7.0)
    assert keyslot("foo{}{bar}") == 8363  # an empty tag: the whole key
    assert keyslot("foo{{bar}}zap") == keyslot("{bar") == 4015  # the first { to the next }
    assert keyslot("trio_rt:seq:{room:r}") == keyslot("room:r") == 4724
    assert all(0 <= keyslot(f"k{i}") < SLOTS for i in range(1000))


def test_slot_map_from_cluster_slots() -> None:
    reply = [
        [0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
        [5461, 10922, [b"", 7001, b"id2", []]],  # an empty host: the node we asked
        [10923, 16383, [b"10.0.0.3", 7002, b"id3"]],
    ]
    slots = SlotMap.from_cluster_slots(reply, ("10.0.0.9", 7009))
    assert slots.owner(0) == slots.owner(5460) == ("10.0.0.1", 7000)
    assert slots.owner(5461) == ("10.0.0.9", 7001)
    assert slots.owner(16383) == ("10.0.0.3", 7002)
    assert slots.nodes() == {("10.0.0.1", 7000), ("10.0.0.9", 7001), ("10.0.0.3", 7002)}
    slots.move(0, ("10.0.0.3", 7002))
    assert slots.owner(0) == ("10.0.0.3", 7002)
    partial = SlotMap.from_cluster_slots([[0, 10, [b"h", 1, b"x"]]], ("h", 1))
    assert partial.owner(11) is None
    with pytest.raises(RedisReplyError):
        SlotMap.from_cluster_slots(b"nonsense", ("h", 1))


def test_redirects() -> None:
    asked = ("10.0.0.1", 7000)
    moved = redirect(RedisReplyError("MOVED 3999 10.0.0.2:7001"), asked)
    assert moved == Redirect(False, 3999, ("10.0.0.2", 7001))
    ask = redirect(RedisReplyError("ASK 12 :7002"), asked)
    assert ask == Redirect(True, 12, ("10.0.0.1", 7002))
    assert redirect(RedisReplyError("ERR nope"), asked) is None
    assert redirect(RedisReplyError("MOVED garbage"), asked) is None
