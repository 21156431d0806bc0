"""Instructions per handshake, counted by valgrind (robust on a shared machine).

For each server kind of ``benchmarks.connections`` (``conn_*`` servers, heartbeat off), starts
the server under ``valgrind --tool=callgrind`` twice: once for 1 handshake, once for
1 + N. Each handshake is sequential: connect, upgrade, read the welcome, send a close frame,
wait for the server to close the TCP connection. Instructions per handshake = the difference
of the two totals / N (start-up and shutdown cancel out). Wall time and other load on the
machine do not change the count.

Run: ``python -m benchmarks.handshake_instructions [--servers trio_rt,baseline,websockets_trio]
[--handshakes 300]`` (about 40 s per server and count; needs ``valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.connections import CLOSE_1000, SERVERS

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUEST = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def handshake(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(REQUEST)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:60]!r}")
        while len(rest) < 2:  # the welcome's first bytes
            rest += s.recv(65536)
        s.sendall(CLOSE_1000)
        while s.recv(65536):
            pass


def count(module: str, handshakes: int, outdir: Path) -> int:
    """Total instructions of a server run that serves `handshakes` handshakes."""
    out = outdir / f"{module.rsplit('.', 1)[-1]}-{handshakes}.callgrind"
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    proc = subprocess.Popen(
        [*valgrind, sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    assert proc.stdout is not None
    port = None
    for line in proc.stdout:
        if line.startswith("READY"):
            port = int(line.split()[1])
            break
    if port is None:
        raise RuntimeError(f"{module} did not start")
    for _ in range(handshakes):
        handshake(port)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:  # seen under valgrind: SIGINT not acted on in time
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="trio_rt,baseline,websockets_trio")
    parser.add_argument("--handshakes", type=int, default=300)
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="trio_rt-callgrind-") as tmp:
        for kind in kinds:
            module = SERVERS.get(kind, kind)
            base = count(module, 1, Path(tmp))
            total = count(module, 1 + args.handshakes, Path(tmp))
            results[kind] = (total - base) / args.handshakes
            print(f"{kind:<18}{results[kind] / 1e6:8.2f} M instructions per handshake", flush=True)
    first = results[kinds[0]]
    for kind in kinds[1:]:
        print(f"ratio {kinds[0]}/{kind}: {first / results[kind]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
