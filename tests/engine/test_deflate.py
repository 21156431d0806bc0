"""permessage-deflate: one compressed frame per broadcast for clients without server context
takeover, per-connection compression for the others; both decode to the same messages."""

from __future__ import annotations

import os
import zlib
from typing import Any

import pytest
import trio
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame, Opcode

from trio_rt._core.outbox import OutboundMessage
from trio_rt._engine.connection import shared_deflate_key

from ..conftest import client, wait_until


def no_takeover() -> list[ClientPerMessageDeflateFactory]:
    """What benchmarks.peer_loadgen offers: the server keeps no context between messages."""
    return [
        ClientPerMessageDeflateFactory(server_no_context_takeover=True, client_max_window_bits=True)
    ]


def test_shared_frame_is_what_websockets_would_send() -> None:
    for payload in [b'{"a":1}', os.urandom(300).hex().encode(), os.urandom(40_000).hex().encode()]:
        ext = PerMessageDeflate(False, True, 12, 12, {"memLevel": 5})
        key = shared_deflate_key([ext])
        assert key == (12, (("memLevel", 5),))
        ours = OutboundMessage(payload).deflated_frame(key)
        theirs = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[ext])
        assert ours == theirs
    # context takeover, or no extension: no shared frame
    assert shared_deflate_key([PerMessageDeflate(False, False, 12, 12)]) is None
    assert shared_deflate_key([]) is None


async def test_a_broadcast_is_compressed_once_for_clients_without_takeover(
    make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trio_rt._core.outbox as outbox_module

    calls = {"n": 0}
    real = zlib.compressobj

    class CountingZlib:
        Z_SYNC_FLUSH = zlib.Z_SYNC_FLUSH

        @staticmethod
        def compressobj(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            return real(*args, **kwargs)

    manager = make_manager(compression=True)
    async with manager:
        clients = []
        async with trio.open_nursery() as nursery:

            async def join(offer: Any) -> None:
                async with client(manager, extensions=offer, compression=None) as c:
                    await c.request({"type": "join_room", "room": "z"})
                    clients.append(c)
                    await trio.sleep_forever()

            for _ in range(10):
                nursery.start_soon(join, no_takeover())
            nursery.start_soon(join, None)  # websockets' default offer: context takeover
            await wait_until(lambda: len(manager.members_of("z")) == 11)
            monkeypatch.setattr(outbox_module, "zlib", CountingZlib)
            big = "y" * 70_000  # a 64-bit length in the uncompressed size
            for i in range(3):
                await manager.broadcast_to_room("z", {"type": "m", "i": i, "big": big})
            for c in clients:
                for i in range(3):
                    assert await c.recv() == {"type": "m", "i": i, "big": big}
            assert calls["n"] == 3  # once per broadcast, not per client
            nursery.cancel_scope.cancel()


async def test_bursts_stay_in_order_on_both_kinds(make_manager: Any) -> None:
    manager = make_manager(compression=True)
    async with (
        manager,
        client(manager, extensions=no_takeover(), compression=None) as shared,
        client(manager) as own,
    ):
        for c in (shared, own):
            await c.request({"type": "join_room", "room": "z"})
        conns = list(manager.connections.values())
        assert sorted(c._deflate_key is None for c in conns) == [False, True]
        for i in range(300):  # faster than the clients read: writers batch
            await manager.broadcast_to_room("z", {"type": "m", "i": i, "pad": "q" * (i % 50)})
        for c in (shared, own):
            got = [await c.recv() for _ in range(300)]
            assert [m["i"] for m in got] == list(range(300))


async def test_compression_context_takeover_off_shares_frames_with_every_client(
    make_manager: Any,
) -> None:
    with pytest.raises(ValueError, match="compression_context_takeover"):
        make_manager(compression_context_takeover="no")
    manager = make_manager(compression=True, compression_context_takeover=False)
    async with manager, client(manager) as c:  # websockets' default offer
        ext = c.ws.protocol.extensions[0]
        assert isinstance(ext, PerMessageDeflate) and ext.remote_no_context_takeover
        (conn,) = manager.connections.values()
        assert conn._deflate_key is not None
        await c.request({"type": "join_room", "room": "z"})
        await manager.broadcast_to_room("z", {"type": "m", "x": "é" * 300})
        assert await c.recv() == {"type": "m", "x": "é" * 300}


@pytest.mark.parametrize("compression", [True, False], ids=["deflate", "plain"])
async def test_sends_after_the_peer_is_gone_are_dropped_not_raised(
    make_manager: Any, compression: bool
) -> None:
    """A burst is under way (this connection's frames are corked for the next flush) when
    websockets' reader sees the peer's TCP connection end. The next send of the burst is
    dropped, without framing it: before the fix, with deflate and context takeover, it was
    compressed by websockets' closed protocol, which raised InvalidState into the sender's
    handler (and without deflate its frame was corked for a dead socket)."""
    manager = make_manager(compression=compression)
    async with manager, client(manager) as c:  # websockets' default offer: context takeover
        await c.request({"type": "join_room", "room": "z"})
        (conn,) = manager.connections.values()
        assert conn._framed_here is compression  # framed per connection, in send order
        assert conn.send_encoded(OutboundMessage(b'{"n":1}'), cork=True)  # corked
        conn._ws.protocol.receive_eof()  # what websockets' reader does at the peer's EOF
        assert conn.send_encoded(OutboundMessage(b'{"n":2}'), cork=True) is False
        assert conn.send_encoded(OutboundMessage(b'{"n":3}')) is False
        await conn.send({"n": 4})  # dropped silently
        await manager.broadcast_to_room("z", {"n": 5})
        assert conn.closed  # takes no more messages (the sender's loop can stop on it)
