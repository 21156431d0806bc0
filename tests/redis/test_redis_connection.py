"""The Trio-native Redis connection and clients (trio_rt/redis/_connection.py, _client.py).

Against real redis-server processes (the shared one, or one of the test's own with a password,
a unix socket or TLS), and a fake server in the test for what a real one will not do on
demand (hold its replies, never answer).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hiredis
import pytest
import trio
import trio.lowlevel

from trio_rt.redis import RedisReplyError, RedisTimeout, RedisUnavailable
from trio_rt.redis._client import RedisClient, RedisClusterClient
from trio_rt.redis._connection import RedisConnection
from trio_rt.redis._resp import Script, keyslot, parse_url

from ..conftest import free_port, redis_on

GUARD = 30.0  # deadlock protection only


def key() -> str:
    return f"test:conn:{uuid.uuid4().hex}"


# -- a redis-server of the test's own, with extra arguments ------------------------------------
@contextlib.contextmanager
def own_redis(*args: str) -> Iterator[Path]:
    """A redis-server with `args` (no persistence); yields its working directory. Ready once
    it logs that it accepts connections."""
    workdir = Path(tempfile.mkdtemp(prefix="trio-rt-redis-own-"))
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            *("--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(workdir), "--logfile", ""),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "ready to accept connections" in line.lower():
                break
        else:
            raise RuntimeError("redis-server did not start:\n" + "".join(lines))
        yield workdir
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


# -- a fake server that holds its replies ------------------------------------------------------
class FakeRedis:
    """Accepts connections, parses commands, and answers only when told (`release`).

    A fake on purpose, and only for the client's own logic: its timeouts, its bound on
    commands in flight and its shared connection attempt need a server that withholds
    replies and counts what arrived, which a real one cannot be made to do. What Redis
    itself does is tested against a real redis-server in the rest of this file."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.commands: list[list[bytes]] = []
        self.release = trio.Event()
        self.changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        reader = hiredis.Reader()
        answered = 0
        async with stream, trio.open_nursery() as nursery:

            async def answer() -> None:
                nonlocal answered
                while True:
                    await self.release.wait()
                    while answered < len(self.commands):
                        await stream.send_all(b"+" + self.commands[answered][-1] + b"\r\n")
                        answered += 1
                    await trio.sleep(0.01)

            nursery.start_soon(answer)
            while data := await stream.receive_some(65536):
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    self.commands.append(command)
                    self.changed.set()
                    self.changed = trio.Event()
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def fake_redis() -> AsyncIterator[FakeRedis]:
    fake = FakeRedis()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


# -- commands on one connection ----------------------------------------------------------------
async def test_concurrent_commands_get_their_own_replies(redis_url: str) -> None:
    async with RedisClient(redis_url) as r:
        got: dict[int, bytes] = {}

        async def echo(i: int) -> None:
            got[i] = await r.execute("ECHO", str(i))

        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                for i in range(2000):
                    nursery.start_soon(echo, i)
        assert got == {i: str(i).encode() for i in range(2000)}
        k = key()
        assert await r.execute("SET", k, b"v", "EX", 60) == b"OK"
        assert await r.execute("GET", k) == b"v"
        assert await r.execute("GET", k + ":missing") is None
        assert await r.execute("DEL", k) == 1


async def test_an_error_reply_is_raised_and_leaves_the_connection_usable(redis_url: str) -> None:
    async with RedisClient(redis_url) as r:
        k = key()
        await r.execute("SET", k, "not a number", "EX", 60)
        with pytest.raises(RedisReplyError) as info:
            await r.execute("INCR", k)
        assert info.value.code == "ERR"
        with pytest.raises(RedisReplyError) as unknown:
            await r.execute("NOSUCHCOMMAND")
        assert unknown.value.code == "ERR"
        assert await r.execute("PING") == b"PONG"


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(redis_url: str) -> None:
    """A caller cancelled while its command is in flight abandons it; its reply is read and
    dropped, and every later caller still gets its own reply."""
    async with RedisClient(redis_url) as r:
        with trio.move_on_after(0.05):
            await r.execute("BLPOP", key(), 0.5)  # Redis answers (nil) after 0.5 s
        got: list[bytes] = []

        async def echo(i: int) -> None:
            got.append(await r.execute("ECHO", f"after-{i}"))

        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(echo, i)
                    await trio.lowlevel.checkpoint()
            # cancelled while parked behind a reader, too
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo, 5)
                with trio.move_on_after(0.05):
                    await r.execute("BLPOP", key(), 0.3)
        assert sorted(got) == [f"after-{i}".encode() for i in range(6)]
        assert await r.execute("ECHO", "last") == b"last"


async def test_after_a_redis_restart_the_next_command_goes_to_a_fresh_connection() -> None:
    """The old connection is found closed before anything is written to it: the command runs
    on a new connection instead of failing (issue 12's first publish after a restart)."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    async with RedisClient(url) as r:
        with redis_on(port) as first:
            assert await r.execute("PING") == b"PONG"
            first.kill()
            await trio.to_thread.run_sync(first.wait)
        with redis_on(port):
            assert await r.execute("PING") == b"PONG"


async def test_redis_down_fails_fast_and_comes_back() -> None:
    port = free_port()
    async with RedisClient(f"redis://127.0.0.1:{port}/0", timeout=2) as r:
        with pytest.raises(RedisUnavailable) as info:
            await r.execute("PING")
        assert info.value.maybe_sent is False and not r.connected
        with redis_on(port):
            assert await r.execute("PING") == b"PONG"
            assert r.connected


async def test_a_reply_that_never_comes_times_out_and_breaks_the_connection() -> None:
    async with fake_redis() as fake:
        address = parse_url(f"redis://127.0.0.1:{fake.port}/0")
        connection = await RedisConnection.connect(address, io_timeout=0.2)
        with trio.fail_after(GUARD), pytest.raises(RedisTimeout) as info:
            await connection.execute("PING")
        assert info.value.maybe_sent is True
        assert connection.broken
        with pytest.raises(RedisUnavailable) as later:
            await connection.execute("PING")
        assert later.value.maybe_sent is False


async def test_at_most_max_pending_commands_are_in_flight() -> None:
    """The bound is on the connection: further callers wait for room (backpressure)."""
    async with fake_redis() as fake:
        address = parse_url(f"redis://127.0.0.1:{fake.port}/0")
        connection = await RedisConnection.connect(address, io_timeout=GUARD, max_pending=3)
        got: list[bytes] = []

        async def echo(i: int) -> None:
            got.append(await connection.execute("ECHO", b"%d" % i))

        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(echo, i)
                while len(fake.commands) < 3:
                    await fake.changed.wait()
                await trio.sleep(0.1)  # nothing more arrives while the first three wait
                assert len(fake.commands) == 3 and connection.pending == 3
                fake.release.set()
        assert sorted(got) == [b"%d" % i for i in range(10)]
        connection.close()


async def test_callers_waiting_for_a_connection_share_one_attempt() -> None:
    """Ten callers while the server never finishes the login: one connection attempt, and all
    ten fail with its timeout (not ten timeouts in turn)."""
    async with fake_redis() as fake:
        url = f"redis://:secret@127.0.0.1:{fake.port}/0"  # AUTH, which the fake never answers
        async with RedisClient(url, timeout=0.3) as r:
            failures: list[BaseException] = []

            async def ping() -> None:
                try:
                    await r.execute("PING")
                except RedisUnavailable as exc:
                    failures.append(exc)

            with trio.fail_after(GUARD):
                async with trio.open_nursery() as nursery:
                    for _ in range(10):
                        nursery.start_soon(ping)
            assert len(failures) == 10 and fake.connections == 1
            assert all(isinstance(f, RedisTimeout) and not f.maybe_sent for f in failures)


async def test_scripts_run_by_sha_and_fall_back_to_eval_when_redis_lost_them() -> None:
    port = free_port()
    with redis_on(port):
        async with RedisClient(f"redis://127.0.0.1:{port}/0") as r:
            script = Script("return {KEYS[1], ARGV[1]}")
            assert await r.eval(script, ["k"], [1]) == [b"k", b"1"]  # EVAL, then cached
            assert await r.execute("SCRIPT", "EXISTS", script.sha) == [1]
            assert await r.eval(script, ["k"], [2]) == [b"k", b"2"]
            await r.execute("SCRIPT", "FLUSH")
            assert await r.eval(script, ["k"], [3]) == [b"k", b"3"]
            with pytest.raises(RedisReplyError):
                await r.eval(Script("return redis.call('NOSUCH')"), ["k"], [])


async def test_password_and_database_from_the_url() -> None:
    port = free_port()
    with own_redis("--port", str(port), "--requirepass", "s3cret"):
        async with RedisClient(f"redis://:s3cret@127.0.0.1:{port}/3") as r:
            await r.execute("SET", "here", "db3")
            assert await r.execute("GET", "here") == b"db3"
        async with RedisClient(f"redis://:s3cret@127.0.0.1:{port}/0") as r0:
            assert await r0.execute("GET", "here") is None
        async with RedisClient(f"redis://:wrong@127.0.0.1:{port}/0") as bad:
            with pytest.raises(RedisReplyError) as info:
                await bad.execute("PING")
            assert info.value.code == "WRONGPASS"
        async with RedisClient(f"redis://127.0.0.1:{port}/0") as anonymous:
            with pytest.raises(RedisReplyError) as refused:
                await anonymous.execute("PING")
            assert refused.value.code == "NOAUTH"


async def test_a_unix_socket() -> None:
    socket_dir = Path(tempfile.mkdtemp(prefix="trio-rt-sock-"))
    path = socket_dir / "redis.sock"
    try:
        with own_redis("--port", "0", "--unixsocket", str(path)):
            async with RedisClient(f"unix://{path}?db=1") as r:
                assert await r.execute("PING") == b"PONG"
                assert await r.execute("CLIENT", "INFO") is not None
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_with_the_ca_from_the_url_and_without_verification() -> None:
    certs = Path(tempfile.mkdtemp(prefix="trio-rt-tls-"))
    try:
        cert, private = _self_signed(certs)
        port = free_port()
        tls_args = ("--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no")
        tls_files = ("--tls-cert-file", str(cert), "--tls-key-file", str(private))
        with own_redis(*tls_args, *tls_files, "--tls-ca-cert-file", str(cert)):
            url = f"rediss://127.0.0.1:{port}/0"
            async with RedisClient(f"{url}?ssl_ca_certs={cert}") as verified:
                assert await verified.execute("PING") == b"PONG"
                assert await verified.eval(Script("return 7"), ["k"], []) == 7
            async with RedisClient(f"{url}?ssl_cert_reqs=none") as unverified:
                assert await unverified.execute("PING") == b"PONG"
            async with RedisClient(url, timeout=5) as untrusted:  # self-signed: refused
                with pytest.raises(RedisUnavailable):
                    await untrusted.execute("PING")
    finally:
        shutil.rmtree(certs, ignore_errors=True)


# -- Redis Cluster -----------------------------------------------------------------------------
async def test_cluster_commands_go_to_the_owner_of_their_slot(
    redis_cluster_nodes: list[str],
) -> None:
    async with RedisClusterClient(f"redis://{redis_cluster_nodes[0]}/0") as c:
        keys = [key() for _ in range(30)]
        for i, k in enumerate(keys):
            await c.execute("SET", k, i, "EX", 60, key=k)
        assert [int(await c.execute("GET", k, key=k)) for k in keys] == list(range(30))
        owners = {await c.owner(k) for k in keys}
        assert len(owners) == 3  # 30 random keys: every master got some
        for k in keys[:5]:
            assert await c.execute("CLUSTER", "KEYSLOT", k, key=k) == keyslot(k)
        script = Script("return redis.call('GET', KEYS[1])")
        assert await c.eval(script, [keys[3]], []) == b"3"
        assert await c.execute("PING") == b"PONG"  # no key: the node the URL names
        for k in keys:
            await c.execute("DEL", k, key=k)


# -- components on it --------------------------------------------------------------------------
async def test_a_sequencer_run_by_two_owners_serves_until_the_last_one_stops(
    redis_url: str,
) -> None:
    """One RedisSequencer may be run by a RoomHistory's manager and a ChangeStreamManager at
    once: stopping one of them leaves it working for the other."""
    from trio_rt.redis import RedisSequencer

    sequencer = RedisSequencer(redis_url, namespace=f"test-{uuid.uuid4().hex[:8]}")
    async with trio.open_nursery() as first_owner:
        await first_owner.start(sequencer.run)
        async with trio.open_nursery() as second_owner:
            await second_owner.start(sequencer.run)
            first = await sequencer.next("s")
            second_owner.cancel_scope.cancel()  # one owner stops...
        after = await sequencer.next("s")  # ...the other still has it
        assert after.position.offset == first.position.offset + 1
        first_owner.cancel_scope.cancel()
    assert not sequencer.running
    with pytest.raises(RuntimeError):
        await sequencer.next("s")
