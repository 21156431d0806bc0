"""The command line: ``python -m trio_rt.testing.services up|down|status``.

``./dev services`` and ``nox -s services`` run it too.

``up`` starts detached servers, records them in ``<state dir>/services.json`` and prints
``export TRIO_RT_...=...`` lines; ``down`` stops what the state file lists; ``status``
exits 3 when a listed service is dead or not answering.  The services are known only
through :class:`Service`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._base import Service, ServiceError, StateFile, default_state_dir, log
from ._cassandra import CassandraServer
from ._redis import RedisServer
from ._redis_cluster import RedisCluster

#: Every service the CLI knows, in the order ``up`` starts them and flags are listed.
KINDS: dict[str, type[Service]] = {
    cls.kind: cls for cls in (RedisServer, CassandraServer, RedisCluster)
}
_DEFAULT_UP = ["redis", "cassandra"]
_FLAG_HELP = {
    "redis": "single Redis server",
    "cassandra": "single-node Cassandra 5.0",
    "redis_cluster": "3-master Redis Cluster",
}


def _load(state: StateFile) -> dict[str, Service]:
    return {
        kind: KINDS[kind].from_record(rec) for kind, rec in state.read().items() if kind in KINDS
    }


def _save(state: StateFile, services: dict[str, Service]) -> None:
    state.write({kind: svc.to_record() for kind, svc in services.items()})


def _export_line(svc: Service) -> str:
    return f"export {svc.env_var}={shlex.quote(svc.env_value())}"


def _status_line(kind: str, svc: Service) -> tuple[bool, str]:
    if not svc.alive():
        state = "DEAD"
    elif svc.ping():
        state = "up"
    else:
        state = "NOT ANSWERING"
    extra = svc.details() if state != "DEAD" else ""
    pids = ",".join(str(pid) for pid in svc.pids)
    return state == "up", f"{kind:<14} {state:<14} pid={pids:<20} {svc.describe()}{extra}"


def _cmd_up(state: StateFile, wanted: list[str]) -> int:
    with state.locked():
        services = _load(state)
        for kind in wanted:
            svc = services.get(kind)
            if svc is not None and svc.alive() and svc.ping():
                log.info("%s already running: %s", kind, _export_line(svc))
                continue
            if svc is not None:
                log.info("%s recorded in the state file is gone or not answering; restarting", kind)
                with contextlib.suppress(Exception):
                    svc.stop()
                del services[kind]
                _save(state, services)
            services[kind] = KINDS[kind].start(state.dir)
            _save(state, services)
        for kind in wanted:
            print(_export_line(services[kind]))
    return 0


def _cmd_down(state: StateFile, wanted: list[str] | None) -> int:
    with state.locked():
        services = _load(state)
        failed = False
        for kind in list(services):
            if wanted is not None and kind not in wanted:
                continue
            try:
                services[kind].stop()
                log.info("stopped %s", kind)
            except ServiceError as exc:
                log.error("could not stop %s: %s", kind, exc)
                failed = True
                continue
            del services[kind]
            _save(state, services)
        if not services:
            state.write({})  # also drops a file that lists nothing (an interrupted `up`)
    return 1 if failed else 0


def _cmd_status(state: StateFile) -> int:
    services = _load(state)
    if not services:
        print(f"no services recorded in {state.path}")
        return 0
    ok = True
    for kind, svc in services.items():
        answering, line = _status_line(kind, svc)
        ok = ok and answering
        print(line)
    return 0 if ok else 3


@contextlib.contextmanager
def _log_to_stderr(quiet: bool) -> Iterator[None]:
    """Print the launcher's log records to stderr for one :func:`main` call, then put the
    logger back as it was (so calling ``main`` twice does not print every line twice)."""
    handler = logging.StreamHandler(sys.stderr)  # our logger only: the driver's stays quiet
    handler.setFormatter(logging.Formatter("[services] %(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (errors are printed, not raised)."""
    parser = argparse.ArgumentParser(
        prog="python -m trio_rt.testing.services",
        description="Start/stop real Redis and Cassandra servers for trio_rt development.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state dir (default: $TRIO_RT_SERVICES_DIR or <repo>/.services)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd, help_text in (
        ("up", "start services in the background (default: --redis --cassandra)"),
        ("down", "stop the services listed in the state file (default: all)"),
    ):
        p = sub.add_parser(cmd, help=help_text)
        for kind in KINDS:
            p.add_argument(
                "--" + kind.replace("_", "-"), action="store_true", help=_FLAG_HELP[kind]
            )
    sub.add_parser("status", help="show the services in the state file")
    args = parser.parse_args(argv)
    state = StateFile((args.state_dir or default_state_dir()).resolve())
    with _log_to_stderr(args.quiet):
        try:
            if args.command == "status":
                return _cmd_status(state)
            selected = [kind for kind in KINDS if getattr(args, kind)]
            if args.command == "up":
                return _cmd_up(state, selected or _DEFAULT_UP)
            return _cmd_down(state, selected or None)
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
