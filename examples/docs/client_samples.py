"""The samples of docs/client.md, run by tests/integration/test_doc_samples.py."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from trio_rt.client import ClientEvent, WebSocketClient, default_is_fatal

log = logging.getLogger("app")


async def quickstart(url: str = "ws://127.0.0.1:3001/") -> None:
    """Join a room, say hi, and print the first chat message heard there (here: our own)."""
    # --8<-- [start:quickstart]
    from trio_rt.client import ServerError, WebSocketClient

    async with WebSocketClient(url) as client:  # url = "ws://127.0.0.1:3001/"
        await client.wait_connected()  # optional
        try:
            await client.join_room("chat:general")  # remembered, rejoined after reconnects
        except ServerError as exc:  # exc.code: room_full, not_permitted...
            print("cannot join:", exc.code)
            raise
        await client.send(
            {"type": "chat_message", "payload": {"room": "chat:general", "message": "hi"}}
        )
        async for message in client:  # dicts, in arrival order
            if message["type"] == "chat_message":
                print(message["data"]["message"])
                break  # leaving the block closes the client gracefully
    # --8<-- [end:quickstart]


def with_every_default(url: str) -> WebSocketClient:
    """A client built with every option spelled out at its default value (a test compares
    them with the constructor's signature)."""
    # fmt: off
    # --8<-- [start:constructor]
    client = WebSocketClient(
        url,                       # ws:// or wss://, or a list of them (see "Several servers")
        url_index=None,            # with several URLs: the first one to try; None: random (rng)
        initial_delay=0.5, max_delay=20.0, multiplier=2.0, jitter=0.5,   # backoff
        max_attempts=None,         # consecutive failed attempts before giving up; None: forever
        rng=None,                  # random.Random for the jitter (seed it to reproduce delays)
        queue_size=1000,           # outbox capacity, in application messages
        overflow="raise",          # "raise" | "drop_oldest" | "wait": outbox full while offline
        receive_buffer=1000,       # incoming messages buffered for the app (read all the time)
        receive_overflow="reconnect",  # app that far behind: "reconnect" | "drop_oldest" | "wait"
        headers=None,              # mapping, or callable (sync/async) called before every attempt
        token=None,                # bearer token: str, or callable (sync/async), per attempt
        refresh_margin=30.0,       # with a callable token: refresh in-band this long before exp
        on_connect=None,           # hook: messages to send right after every (re)connect
        is_fatal=default_is_fatal, # which errors stop the client instead of reconnecting
        compression=True,          # permessage-deflate
        open_timeout=10.0,         # one whole attempt (see "What counts as connected")
        close_timeout=10.0,        # flush on close, and the closing handshake, each; then dropped
        ping_interval=20.0, ping_timeout=20.0,   # liveness: ping, no pong in time = reconnect
        max_size=2**20,            # largest incoming message in bytes
        ssl=None, proxy=True,      # as websockets
    )
    # --8<-- [end:constructor]
    # fmt: on
    return client


async def with_a_listener(
    url: str, work: Callable[[WebSocketClient], Awaitable[None]]
) -> WebSocketClient:
    """Run `work` with a client that logs every lost connection."""
    # --8<-- [start:events]
    client = WebSocketClient(url)

    @client.on("disconnected")
    async def lost(event: ClientEvent) -> None:
        log.warning("lost the server: %s %s", event.close_code, event.close_reason)

    async with client:
        await work(client)  # the app; `lost` runs whenever a connection ends
    # --8<-- [end:events]
    return client
