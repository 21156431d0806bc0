"""LightAssembler, trio_rt's frame queue under websockets' Connection: alone, then on sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from websockets.exceptions import ConcurrencyError, ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.trio.client import connect

from trio_rt import Connection
from trio_rt._transport.assembler import LightAssembler

from ..conftest import client, wait_until


def text(data: str, fin: bool = True) -> Frame:
    return Frame(Opcode.TEXT, data.encode(), fin)


def cont(data: str, fin: bool = True) -> Frame:
    return Frame(Opcode.CONT, data.encode(), fin)


async def test_whole_messages_in_order_and_decoding() -> None:
    a = LightAssembler()
    a.put(text("héllo"))
    a.put(Frame(Opcode.BINARY, b"\x00\x01"))
    assert await a.get() == "héllo"
    assert await a.get() == b"\x00\x01"
    a.put(text("x"))
    assert await a.get(decode=False) == b"x"
    a.put(Frame(Opcode.BINARY, b"y"))
    assert await a.get(decode=True) == "y"


async def test_fragments_are_joined_and_a_cancelled_get_loses_nothing() -> None:
    a = LightAssembler()
    a.put(text("ab", fin=False))
    with trio.move_on_after(0.05) as scope:
        await a.get()  # waits for the last fragment
    assert scope.cancelled_caught
    a.put(cont("cd", fin=False))
    async with trio.open_nursery() as nursery:
        got: list[Any] = []

        async def reader() -> None:
            got.append(await a.get())

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        a.put(cont("ef"))
    assert got == ["abcdef"]


async def test_close_wakes_the_reader_after_what_is_queued() -> None:
    a = LightAssembler()
    a.put(text("last"))
    a.close()
    assert await a.get() == "last"
    with pytest.raises(EOFError):
        await a.get()
    with pytest.raises(EOFError):
        a.put(text("late"))
    b = LightAssembler()
    async with trio.open_nursery() as nursery:
        errors: list[BaseException] = []

        async def reader() -> None:
            try:
                await b.get()
            except EOFError as exc:
                errors.append(exc)

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        b.close()
    assert len(errors) == 1


async def test_one_reader_at_a_time() -> None:
    a = LightAssembler()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.get)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ConcurrencyError):
            await a.get()
        nursery.cancel_scope.cancel()


async def test_flow_control_pauses_above_high_and_resumes_at_low() -> None:
    calls: list[str] = []
    a = LightAssembler(
        4, 1, pause=lambda: calls.append("pause"), resume=lambda: calls.append("resume")
    )
    for i in range(6):
        a.put(text(str(i)))
    assert calls == ["pause"]  # once, when the queue went above 4
    for i in range(4):
        assert await a.get() == str(i)
    assert calls == ["pause"]  # 2 left: still above low
    assert await a.get() == "4"
    assert calls == ["pause", "resume"]


async def test_invalid_utf8_raises_for_websockets_to_close_1007() -> None:
    a = LightAssembler()
    a.put(Frame(Opcode.TEXT, b"\xff\xfe"))
    with pytest.raises(UnicodeDecodeError):
        await a.get()


# -- under a real server ----------------------------------------------------------------------


async def test_server_uses_it_and_reads_fragmented_and_bursty_input(make_manager: Any) -> None:
    manager = make_manager(rate_limit=None)  # 201 messages at once: a load, not abuse
    seen: list[int] = []

    @manager.on_message("n")
    async def on_n(conn: Connection, message: dict[str, Any]) -> None:
        if len(seen) == 0:
            await trio.sleep(0.2)  # let frames pile up past the high-water mark (16)
        seen.append(message["payload"]["i"])

    async with manager, client(manager) as c:
        (conn,) = manager.connections.values()
        assert isinstance(conn._ws.recv_messages, LightAssembler)
        # one message in 5 fragments
        body = json.dumps({"type": "n", "payload": {"i": -1}})
        await c.ws.send([body[i : i + 7] for i in range(0, len(body), 7)])
        for i in range(200):
            await c.send({"type": "n", "payload": {"i": i}})
        await wait_until(lambda: len(seen) == 201)
        assert seen == [-1, *range(200)]
        assert (await c.request({"type": "ping"}))["type"] == "pong"


async def test_invalid_utf8_from_a_client_closes_1007_and_the_server_lives(
    make_manager: Any,
) -> None:
    manager = make_manager()
    async with manager:
        async with connect(manager.url, ping_interval=None) as ws:
            await ws.recv()
            await ws.send(b"\xff\xfe", text=True)  # a text frame that is not UTF-8
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1007
        async with client(manager) as c:
            assert (await c.request({"type": "ping"}))["type"] == "pong"
