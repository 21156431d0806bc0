"""The plain install, as a new user gets it: build the sdist and the wheel, check them, install
the wheel WITHOUT extras in a fresh venv, and there run the demo and the README's sample with a
third-party WebSocket client (websockets' asyncio client, not trio_rt's) that joins a room,
chats and leaves.

    python .ci/install_smoke.py            # from the repository root (.ci/run does this)

The driver (this file, run by the project's venv) uses the standard library and `build` and
`twine` (the dev extra). It copies itself into the fresh venv and runs there with ``--inside``:
that part imports only trio_rt and what a core install brings (trio, websockets). Stdout gets
one line per check; any failure exits non-zero with what went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"listening on ws://([\d.]+):(\d+)/")
# What setuptools prints when a directory that ships files is missing from `packages`.
PACKAGING_WARNINGS = re.compile(
    r"absent from the `packages` configuration|Package would be ignored"
)


def step(text: str) -> None:
    print(f"install smoke: {text}", flush=True)


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise SystemExit(
            f"install smoke: {' '.join(argv)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result  # type: ignore[no-any-return]


# -- the driver: build, check, install -------------------------------------------------------------
def drive(workdir: Path) -> None:
    dist = workdir / "dist"
    built = run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
    output = built.stdout + built.stderr
    if PACKAGING_WARNINGS.search(output):
        raise SystemExit("install smoke: setuptools warns about the package list:\n" + output)
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise SystemExit(f"install smoke: expected one wheel and one sdist in {dist}")
    step(f"built {wheels[0].name} and {sdists[0].name} without packaging warnings")
    run([sys.executable, "-m", "twine", "check", "--strict", str(wheels[0]), str(sdists[0])])
    step("twine check --strict passed")

    env_dir = workdir / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    installed = run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", str(wheels[0])]
    )
    warnings = [line for line in installed.stderr.splitlines() if "warn" in line.lower()]
    if warnings:
        raise SystemExit("install smoke: pip warned:\n" + "\n".join(warnings))
    names = run([str(python), "-m", "pip", "list", "--format=json"]).stdout
    present = {p["name"].lower().replace("_", "-") for p in json.loads(names)}
    extras = {"hiredis", "redis", "trio-asyncio", "cassandra-driver", "pyjwt", "prometheus-client"}
    if present & extras:
        raise SystemExit(f"install smoke: a core install brought extras: {present & extras}")
    step(f"installed the wheel without extras in a fresh venv ({len(present)} packages)")

    inside = env_dir / "install_smoke.py"
    shutil.copy(__file__, inside)
    readme = workdir / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    # Run outside the checkout, so that nothing imports from the working tree.
    result = subprocess.run(
        [str(python), str(inside), "--inside", str(readme)],
        cwd=workdir,
        env={
            k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "VIRTUAL_ENV"))
        },
        timeout=300,
    )
    if result.returncode != 0:
        raise SystemExit(
            f"install smoke: the checks in the fresh venv failed ({result.returncode})"
        )
    step("passed")


# -- inside the fresh venv -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def join_chat_leave(url: str, *, room: str, rich: bool) -> None:
    """A third-party client (websockets' asyncio one): join `room`, chat, leave; `rich` checks
    the demo's message shape (user, timestamp, position)."""
    from websockets.asyncio.client import connect

    async def recv(ws: object) -> dict[str, object]:
        data = json.loads(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[attr-defined]
        assert isinstance(data, dict), data
        return data

    async with connect(url) as ws:
        welcome = await recv(ws)
        assert welcome["type"] == "welcome" and welcome["user_id"] == "ann", welcome
        await ws.send(
            json.dumps({"type": "chat_message", "payload": {"room": room, "message": "x"}})
        )
        refused = await recv(ws)
        assert refused["type"] == "error" and refused["code"] == "not_in_room", refused
        await ws.send(json.dumps({"type": "join_room", "room": room}))
        assert (await recv(ws))["type"] == "room_joined"
        await ws.send(
            json.dumps({"type": "chat_message", "payload": {"room": room, "message": "hi"}})
        )
        said = await recv(ws)
        assert said["type"] == "chat_message", said
        data = said["data"]
        assert isinstance(data, dict) and data["user_id"] == "ann" and data["message"] == "hi"
        if rich:
            assert "position" in said and str(data["timestamp"]).endswith("Z"), said
        await ws.send(json.dumps({"type": "chat_message", "payload": {}}))
        bad = await recv(ws)
        assert bad["type"] == "error" and bad["code"] != "internal_error", bad
        await ws.send(json.dumps({"type": "leave_room", "room": room}))
        assert (await recv(ws))["type"] == "room_left"


def default_sigint() -> None:
    """In the child before exec: Ctrl-C's default action, even when this process was started
    with SIGINT ignored (a background job of a non-interactive shell)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_cleanly(proc: subprocess.Popen[str], what: str) -> None:
    """Ctrl-C (SIGINT): the process exits 0 and prints no traceback."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    if proc.returncode != 0 or "Traceback" in out or "ExceptionGroup" in out:
        raise SystemExit(f"install smoke: {what} did not stop cleanly ({proc.returncode}):\n{out}")


def check_imports() -> None:
    import trio_rt

    exec("from trio_rt import *", {})  # must work without any extra

    for name, extra in [("RedisBroker", "redis"), ("JWTAuthenticator", "auth")]:
        try:
            getattr(trio_rt, name)
        except ImportError as exc:
            assert f"pip install 'trio_rt[{extra}]'" in str(exc), exc
        else:
            raise AssertionError(f"trio_rt.{name} imported without the {extra} extra")
    step(f"import trio_rt {trio_rt.__version__}: `import *` works, extras named when missing")


def check_demo() -> None:
    trio_rt_cmd = Path(sys.executable).parent / "trio-rt"
    proc = subprocess.Popen(
        [str(trio_rt_cmd), "demo", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while not (m := READY.search("".join(lines))):
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise SystemExit("install smoke: the demo did not start:\n" + "".join(lines))
            lines.append(line)
        host, port = m.group(1), int(m.group(2))
        asyncio.run(
            join_chat_leave(f"ws://{host}:{port}/?user=ann", room="chat:general", rich=True)
        )
        with urllib.request.urlopen(f"http://{host}:{port}/demo/config", timeout=10) as r:
            config = json.load(r)
        assert config["posts"] is False and config["tokens"] is False, config
        assert any("trio_rt[auth]" in line for line in config["off"]), config
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as r:
            assert b"/demo/app.js" in r.read()
        step(
            "trio-rt demo: a websockets client joined, chatted and left; the page says what is off"
        )
        stop_cleanly(proc, "trio-rt demo")
        step("trio-rt demo: Ctrl-C exits 0 without a traceback")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_readme_sample(readme: Path) -> None:
    code = re.search(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert code is not None, "no python block in README.md"
    port = free_port()
    source = code.group(1).replace("port=3001", f"port={port}")
    sample = readme.parent / "readme_sample.py"
    sample.write_text(source)
    proc = subprocess.Popen(
        [sys.executable, str(sample)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.communicate()[0] if proc.poll() is not None else ""
                    raise SystemExit(
                        f"install smoke: the README sample did not start:\n{out}"
                    ) from None
                time.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/?user=ann"
        asyncio.run(join_chat_leave(url, room="lobby", rich=False))
        step("README sample: a websockets client joined, chatted and left; bad input refused")
        stop_cleanly(proc, "the README sample")
        step("README sample: Ctrl-C exits 0 without a traceback")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def inside(readme: Path) -> None:
    check_imports()
    check_demo()
    check_readme_sample(readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inside", metavar="README", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(Path(args.inside))
        return
    with tempfile.TemporaryDirectory(prefix="trio-rt-install-") as tmp:
        drive(Path(tmp))


if __name__ == "__main__":
    main()
