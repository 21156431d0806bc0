"""The engine's public seams and its one connection state.

What extensions (ChangeStreamManager, WebSocketMetrics, an app's own) use instead of the
manager's private attributes: `add_command`, `listen` / `stop_listening`, `begin_fan_out`,
`attach_instruments`, `attach_change_streams`; and `Connection.status`, the connection's one
state (`ConnectionState`). Also the typed options: a `ServerOptions` object, or keywords a
type checker checks.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from trio_rt import (
    Connection,
    ConnectionState,
    ProtocolError,
    ServerOptions,
    WebSocketManager,
)
from trio_rt._core.outbox import OutboundMessage
from trio_rt._core.protocol import ClientMessage, ErrorCode, Ping, encode, reply
from trio_rt._engine.flush import FlushQueue

from ..conftest import client, wait_until

ROOT = Path(__file__).resolve().parents[2]


# -- add_command ----------------------------------------------------------------------------------
async def test_an_extension_replaces_a_built_in_command(make_manager: Any) -> None:
    manager = make_manager()
    seen: list[Ping] = []

    async def ping(conn: Connection, command: Ping) -> None:
        seen.append(command)
        if len(seen) == 2:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "second ping refused")
        await conn.send(reply("pong", command.request_id, by="extension"))

    manager.add_command(Ping, ping)
    async with manager, client(manager) as c:
        assert await c.request({"type": "ping", "id": 1}) == {
            "type": "pong",
            "id": 1,
            "by": "extension",
        }
        # A refusal in an extension's handler is an error reply like any other.
        answer = await c.request({"type": "ping", "id": 2})
        assert answer["type"] == "error" and answer["code"] == "invalid_field"
        assert answer["id"] == 2
    assert [p.request_id for p in seen] == [1, 2]


def test_add_command_takes_built_in_classes_and_async_handlers(make_manager: Any) -> None:
    manager = make_manager()

    async def handler(conn: Connection, command: Any) -> None:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="not a built-in command"):
        manager.add_command(ClientMessage, handler)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="async"):
        manager.add_command(Ping, lambda conn, command: None)  # type: ignore[arg-type,return-value]


async def test_subscribe_without_change_streams_is_refused(make_manager: Any) -> None:
    manager = make_manager()
    async with manager, client(manager) as c:
        answer = await c.request({"type": "subscribe", "table": "t", "id": 3})
        assert answer["code"] == "unknown_type" and "not enabled" in answer["message"]


# -- listen / stop_listening ---------------------------------------------------------------------
async def test_a_listener_gets_its_channel_raw_and_nothing_else(make_manager: Any) -> None:
    manager = make_manager()
    got: list[bytes] = []
    async with manager, client(manager) as c:
        await manager.listen("ext:channel", got.append)
        assert "ext:channel" in manager.broker.channels
        await manager.broker.publish("ext:channel", b"not an envelope")
        await wait_until(lambda: got == [b"not an envelope"])
        manager.stop_listening("ext:channel")
        manager.stop_listening("ext:channel")  # idempotent
        assert "ext:channel" not in manager.broker.channels
        await manager.broker.publish("ext:channel", b"again")
        # The client still works, and got nothing of the channel.
        assert (await c.request({"type": "ping"}))["type"] == "pong"
    assert got == [b"not an envelope"]


# -- begin_fan_out ---------------------------------------------------------------------------------
async def test_begin_fan_out_corks_only_while_a_burst_is_under_way(
    make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every send after the first opens a window, however slow the machine: not a timing test.
    monkeypatch.setattr(FlushQueue, "QUIET", math.inf)
    manager = make_manager()
    assert manager.begin_fan_out() is False  # not serving: never corks
    async with manager, client(manager) as a, client(manager) as b:
        conns = list(manager.connections.values())
        await trio.testing.wait_all_tasks_blocked()
        n = 30
        corks = []
        for i in range(n):
            # An extension's fan-out: one decision for every recipient of one message.
            cork = manager.begin_fan_out()
            corks.append(cork)
            out = OutboundMessage(encode({"type": "m", "i": i}))
            for conn in conns:
                assert conn.send_encoded(out, cork)
        # The first is written at once; the one that opens the window too (the first or the
        # second: the welcomes opened none if they were isolated); the next ones are corked.
        assert corks[0] is False
        assert True in corks[1:3]
        for c in (a, b):
            assert [(await c.recv())["i"] for _ in range(n)] == list(range(n))


# -- instruments and change streams ----------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.handlers: list[str] = []
        self.fan_outs: list[int] = []

    def handler_finished(self, type: str, seconds: float) -> None:
        self.handlers.append(type)

    def fanned_out(self, recipients: int, seconds: float) -> None:
        self.fan_outs.append(recipients)


async def test_instruments_observe_handlers_and_broadcasts(make_manager: Any) -> None:
    manager = make_manager()

    @manager.on_message("chat")
    async def chat(conn: Connection, message: dict[str, Any]) -> None:
        await manager.broadcast(message)

    recorder = Recorder()
    manager.attach_instruments(recorder)
    manager.attach_instruments(recorder)  # the same one again: fine
    with pytest.raises(RuntimeError, match="already has"):
        manager.attach_instruments(Recorder())
    assert manager.instruments is recorder
    async with manager, client(manager) as a, client(manager) as b:
        await a.send({"type": "chat", "text": "hi"})
        assert (await a.recv())["text"] == (await b.recv())["text"] == "hi"
        await wait_until(lambda: recorder.fan_outs == [2])
        assert recorder.handlers == ["chat"]
        manager.detach_instruments(Recorder())  # not the attached one: nothing happens
        assert manager.instruments is recorder
        manager.detach_instruments(recorder)
        assert manager.instruments is None
        await a.send({"type": "chat", "text": "unobserved"})
        assert (await b.recv())["text"] == "unobserved"
    assert recorder.fan_outs == [2] and recorder.handlers == ["chat"]


def test_change_streams_are_attached_for_metrics(make_manager: Any) -> None:
    class Streams:
        def lag(self) -> float:
            return 0.5

        def subscription_count(self) -> int:
            return 7

    manager = make_manager()
    assert manager.change_streams is None
    streams = Streams()
    manager.attach_change_streams(streams)
    assert manager.change_streams is streams


# -- the connection's one state -------------------------------------------------------------------
async def test_a_connection_moves_through_its_states_once(make_manager: Any) -> None:
    manager = make_manager()
    seen: dict[str, Any] = {}
    gone = trio.Event()

    @manager.on_connection
    async def connecting(conn: Connection) -> None:
        seen["handshake"] = (conn.status, conn.closed, conn.close_code)

    @manager.on_message("bye")
    async def bye(conn: Connection, message: dict[str, Any]) -> None:
        seen["handler"] = conn.status
        conn.close_soon(4000, "bye")
        seen["after close_soon"] = (conn.status, conn.closed, conn.close_code)

    @manager.on_disconnect
    async def disconnected(conn: Connection, code: int) -> None:
        seen["disconnect"] = (conn.status, conn.closed, conn.close_code, code)
        gone.set()

    async with manager, client(manager) as c:
        await c.send({"type": "bye"})
        with trio.fail_after(10):
            await gone.wait()
    assert seen == {
        "handshake": (ConnectionState.CONNECTING, False, None),
        "handler": ConnectionState.OPEN,
        "after close_soon": (ConnectionState.CLOSING, True, None),
        "disconnect": (ConnectionState.CLOSED, True, 4000, 4000),
    }


async def test_close_during_the_handshake_closes_once_open(make_manager: Any) -> None:
    manager = make_manager()
    codes: list[int] = []

    @manager.on_connection
    async def refuse_softly(conn: Connection) -> None:
        await conn.close(4003, "not today")  # returns at once: still in the handshake
        assert conn.status is ConnectionState.CONNECTING and conn.closed

    @manager.on_disconnect
    async def disconnected(conn: Connection, code: int) -> None:
        codes.append(code)

    async with manager:
        async with connect(manager.url, ping_interval=None) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 4003
        await wait_until(lambda: codes == [4003])


# -- typed options ---------------------------------------------------------------------------------
def test_options_as_an_object_or_keywords_not_both() -> None:
    options = ServerOptions(port=0, heartbeat_interval=None)
    assert WebSocketManager(options).options is options
    assert WebSocketManager(options=options).options is options
    assert WebSocketManager(port=0, heartbeat_interval=None).options == options
    with pytest.raises(TypeError, match="not both"):
        WebSocketManager(options, port=0)
    with pytest.raises(TypeError, match="unknown WebSocketManager option"):
        WebSocketManager(prot=0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="must be a ServerOptions"):
        WebSocketManager({"port": 0})  # type: ignore[arg-type]


def test_a_type_checker_checks_the_options_callers_pass(tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "caller.py"
    snippet.write_text(
        textwrap.dedent(
            """\
            from trio_rt import ServerOptions, WebSocketManager

            WebSocketManager(port=0, heartbeat_interval=None, rate_limits={"chat": 5})
            WebSocketManager(ServerOptions(port=0))
            WebSocketManager(port="3001")
            WebSocketManager(prot=3001)
            """
        )
    )
    out, err, _ = mypy_api.run(
        ["--strict", "--no-error-summary", "--hide-error-context", str(snippet)]
    )
    errors = [line.split(": error: ", 1) for line in out.splitlines() if ": error: " in line]
    assert [(where.rsplit(":", 1)[-1], what) for where, what in errors] == [
        (
            "5",
            'Argument "port" to "WebSocketManager" has incompatible type "str"; '
            'expected "int"  [arg-type]',
        ),
        ("6", 'Unexpected keyword argument "prot" for "WebSocketManager"  [call-arg]'),
    ], out + err
