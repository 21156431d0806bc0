"""Several worker processes on one port: ``trio-rt serve --workers N app:attr``.

One **supervisor** process (this module's `Supervisor`, a Trio program that serves nothing
itself) runs N **workers**, each a ``python -m trio_rt serve app:attr --supervised`` process
serving the same app on the same host:port with ``SO_REUSEPORT`` (``_transport/reuseport.py``): the
kernel spreads new connections over them. The workers share rooms, history, rate limits and
the server registry only through the app's shared backends (``RedisBroker``,
``RedisSequencer``, Cassandra stores, ``RedisRateLimiter``), exactly as separate machines
would; a worker refuses to start on in-memory ones (`shareable_problem`).

The supervisor's nursery owns one task per worker (`Supervisor._run_slot`). Each task starts
its worker, reads its stdout (the ready line, `READY`; other lines are passed through), waits
for it to exit and decides what next with the sans-IO `RestartHistory`: restart after an
exponential backoff (capped), or give up when a worker failed to start
`RestartPolicy.max_start_failures` times in a row, or at once when it failed with a
configuration error (exit code `EX_CONFIG`). Worker 0 starts first and the others only once it
is ready, so that a bad app (import error, in-memory broker) is reported once, and a port 0
becomes the port the others bind. The supervisor prints one ``trio_rt listening on ...`` line
when every worker is ready.

Stopping: SIGTERM or SIGINT makes the supervisor forward SIGTERM to every worker (each runs
its graceful shutdown: ``/health`` 503, clients closed with 1001 so they reconnect to another
worker) and exit 0 once all have ended; a second signal, or ``drain_timeout`` passing, kills the
rest (SIGKILL; exit code 1). Workers run in their own process group, so a Ctrl-C in a terminal
reaches only the supervisor, which forwards one SIGTERM (not a SIGINT and a SIGTERM, which a
worker would take as "force").

No orphans: every exit path of a worker task kills and reaps its process (`trio.Process`), and
each worker watches a **lifeline**: its stdin is a pipe from the supervisor that is never
written; the kernel closes it when the supervisor dies in any way (even ``kill -9``), and the
worker reads end-of-file and shuts down gracefully. Chosen over ``PR_SET_PDEATHSIG``, which
fires when the *thread* that forked the child exits (Trio starts processes from a worker thread
that exits when idle), and over polling ``getppid()`` (a delay and a wake-up per poll): a pipe's
end-of-file is an immediate event, on any Unix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import trio

from ._core.checks import int_problem, number_problem, require
from ._transport.reuseport import reuse_port_problem

if TYPE_CHECKING:
    from ._engine.manager import WebSocketManager

__all__ = [
    "DEFAULT_MAX_START_FAILURES",
    "EX_CONFIG",
    "READY",
    "WORKERS_ENV",
    "WORKER_ID_ENV",
    "GiveUp",
    "Restart",
    "RestartHistory",
    "RestartPolicy",
    "Supervisor",
    "default_workers",
    "describe_exit",
    "parse_workers",
    "serve_worker",
    "shareable_problem",
    "supervisor_problem",
    "worker_options",
]

log = logging.getLogger("trio_rt.workers")

EX_CONFIG = 78  # sysexits.h: a worker's configuration error; the supervisor does not retry it
READY = "trio_rt worker ready "  # + JSON: the line a worker prints once it listens
WORKER_ID_ENV = "TRIO_RT_WORKER_ID"  # 0..N-1, in each worker's environment
WORKERS_ENV = "TRIO_RT_WORKERS"  # N
DEFAULT_MAX_START_FAILURES = 5
ORPHAN_MARGIN = 5.0  # seconds past shutdown + close timeouts before an orphan exits anyway


# -- option values ------------------------------------------------------------------------------
def default_workers() -> int:
    """One worker per core this process may run on (``os.process_cpu_count()`` on 3.13+)."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        n = count()
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        n = os.cpu_count()
    return max(1, n or 1)


T = TypeVar("T")


def parse_option(
    option: str,
    text: str,
    convert: Callable[[str], T],
    check: Callable[[str, object], str | None],
    hint: str = "",
) -> T:
    """A command-line value: `text` converted by `convert` (``int``, ``float``) and checked by
    `check` (`int_problem` / `number_problem` of trio_rt/_core/checks.py) under the name
    `option`. ValueError with the check's message (and `hint`) otherwise."""
    value: object
    try:
        value = convert(text)
    except ValueError:
        value = text
    problem = check(option, value)
    if problem is not None:
        raise ValueError(f"{problem} ({hint})" if hint else problem)
    return cast(T, value)


def parse_workers(text: str) -> int:
    """``--workers``: an integer >= 1, or ``auto`` (`default_workers`). ValueError otherwise."""
    if text.strip().lower() == "auto":
        return default_workers()
    return parse_option("--workers", text, int, int_problem, "a number of processes, or 'auto'")


def describe_exit(returncode: int) -> str:
    """``exited with code 3`` / ``killed by SIGKILL`` (a negative code is a signal)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


# -- restarts (sans-IO) --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a dead worker is started again.

    The n-th death in a row waits ``initial_delay * 2**(n-1)`` seconds, at most ``max_delay``;
    a worker that stayed up ``stable_after`` seconds starts the count again. A worker that
    exits before it is ready (or is not ready within ``start_timeout``) failed to start;
    ``max_start_failures`` of those in a row, and the supervisor gives up.
    """

    initial_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 30.0
    max_start_failures: int = DEFAULT_MAX_START_FAILURES
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        require(
            *(
                number_problem(name, getattr(self, name))
                for name in ("initial_delay", "max_delay", "stable_after", "start_timeout")
            ),
            int_problem("max_start_failures", self.max_start_failures),
        )
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must not be below initial_delay")


@dataclass(frozen=True, slots=True)
class Restart:
    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


@dataclass
class RestartHistory:
    """One worker slot's deaths, and what each one means (`exited`). No clock of its own:
    times are given."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    deaths_in_a_row: int = 0
    start_failures_in_a_row: int = 0

    def exited(
        self, *, returncode: int, ready: bool, uptime: float, config_error: bool = False
    ) -> Restart | GiveUp:
        """The worker ended (`ready`: it had announced itself; `uptime`: seconds since it
        started). Restart after a delay, or give up."""
        how = describe_exit(returncode)
        if not ready:
            if config_error:
                return GiveUp(f"it {how} before it was ready (a configuration error)")
            self.start_failures_in_a_row += 1
            if self.start_failures_in_a_row >= self.policy.max_start_failures:
                return GiveUp(
                    f"it failed to start {self.start_failures_in_a_row} times in a row "
                    f"(last: {how})"
                )
        else:
            self.start_failures_in_a_row = 0
            if uptime >= self.policy.stable_after:
                self.deaths_in_a_row = 0
        self.deaths_in_a_row += 1
        p = self.policy
        return Restart(min(p.max_delay, p.initial_delay * 2 ** (self.deaths_in_a_row - 1)))


# -- the worker's side ---------------------------------------------------------------------------
def shareable_problem(manager: WebSocketManager) -> str | None:
    """Why `manager` cannot run as one of several workers (its state would stay in one
    process), or None. Checked: the broker spans processes (``Broker.spans_processes``, as
    ``RedisBroker``); a ``RoomHistory`` does not number or keep its messages in memory."""
    from ._engine.streams import MemorySequencer, MemoryStreamStore

    if not getattr(manager.broker, "spans_processes", False):
        return (
            f"the app's broker ({type(manager.broker).__name__}) keeps messages in one process: "
            "clients of different workers would not see each other's rooms. Use RedisBroker "
            "(docs/deployment.md), or --allow-memory-backends if the workers share nothing"
        )
    history = manager.history
    in_memory = (MemorySequencer, MemoryStreamStore)
    if history is not None and (
        isinstance(history.sequencer, in_memory) or isinstance(history.store, in_memory)
    ):
        return (
            "the app's RoomHistory numbers or keeps its messages in memory: each worker "
            "would hand out its own positions. Use RedisSequencer and CassandraStreamStore "
            "(docs/streams.md), or --allow-memory-backends"
        )
    return None


def worker_options(
    manager: WebSocketManager, worker_id: int, host: str | None, port: int | None
) -> None:
    """Make sure the worker's own options reached `manager` (a factory that does not pass its
    keyword options on, or a module-level manager): SO_REUSEPORT, the worker id, host, port."""
    o = manager.options
    wanted: dict[str, Any] = {"reuse_port": True, "worker_id": worker_id}
    if host is not None:
        wanted["host"] = host
    if port is not None:
        wanted["port"] = port
    if any(getattr(o, k) != v for k, v in wanted.items()):
        manager.options = dataclasses.replace(o, **wanted)


async def _watch_lifeline(fd: int, on_eof: Any) -> None:
    """Read the supervisor's pipe (never written) until end-of-file: the supervisor is gone."""
    stream = trio.lowlevel.FdStream(os.dup(fd))
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            while await stream.receive_some(4096):
                pass
    on_eof()


async def _exit_unless_ended(manager: WebSocketManager) -> None:
    """Nobody will kill an orphaned worker whose shutdown does not end (an app's task that
    ignores cancellation): end the process once the shutdown had its time and more."""
    o = manager.options
    grace = o.shutdown_timeout + o.close_timeout + ORPHAN_MARGIN
    await trio.sleep(grace)
    log.error("supervisor gone and the shutdown still not over after %.0f s: exiting", grace)
    logging.shutdown()
    os._exit(1)


async def serve_worker(manager: WebSocketManager, *, lifeline_fd: int | None = 0) -> None:
    """Serve `manager` as a supervised worker until SIGTERM/SIGINT or the supervisor's end.

    Prints `READY` + JSON (``worker``, ``server_id``, ``host``, ``port``, ``pid``) once
    listening. The first signal, or end-of-file on `lifeline_fd` (the supervisor died), starts
    a graceful shutdown (clients get 1001); a second signal cancels what is left of it. An
    orphan (the supervisor died) whose shutdown has not ended ``shutdown_timeout +
    close_timeout + ORPHAN_MARGIN`` seconds later exits the process (status 1).
    Returns once `serve` has returned; errors of `serve` propagate. Main thread only.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            stopping = False

            def stop(why: str) -> None:
                nonlocal stopping
                if stopping:
                    log.warning("%s: forcing the shutdown", why)
                    nursery.cancel_scope.cancel()
                    return
                stopping = True
                log.warning(
                    "%s: shutting down gracefully (up to %.0f s)",
                    why,
                    manager.options.shutdown_timeout,
                )
                manager.stop()

            async def serve_then_stop_watching(
                task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await manager.serve(task_status=task_status)
                nursery.cancel_scope.cancel()  # serve is over: stop watching

            _, port = await nursery.start(serve_then_stop_watching)
            ready = {
                "worker": manager.options.worker_id,
                "server_id": manager.server_id,
                "host": manager.options.host,
                "port": port,
                "pid": os.getpid(),
            }
            print(READY + json.dumps(ready), flush=True)

            def orphaned() -> None:
                stop("supervisor gone")
                nursery.start_soon(_exit_unless_ended, manager)

            if lifeline_fd is not None:
                nursery.start_soon(_watch_lifeline, lifeline_fd, orphaned)
            async for signum in signals:
                stop(signal.Signals(signum).name)


# -- the supervisor ------------------------------------------------------------------------------
@dataclass(eq=False)
class _Slot:
    """One worker number and the process currently running it (if any)."""

    index: int
    history: RestartHistory
    proc: trio.Process | None = None
    ready: bool = False
    server_id: str | None = None
    first_ready: trio.Event = field(default_factory=trio.Event)
    starts: int = 0


class Supervisor:
    """Runs `workers` worker processes of `spec` and keeps them running (module docstring).

    `run()` returns the exit code: 0 when every worker ended after a drain (SIGTERM/SIGINT);
    1 when it gave up (`RestartPolicy`) or had to kill a worker that did not end in
    `drain_timeout`. Nothing it started outlives `run()`, whatever ends it.
    """

    def __init__(
        self,
        spec: str,
        workers: int,
        *,
        host: str | None = None,
        port: int | None = None,
        log_level: str = "INFO",
        drain_timeout: float = 30.0,
        policy: RestartPolicy | None = None,
        allow_memory_backends: bool = False,
        python: Sequence[str] = (sys.executable,),
        env: Mapping[str, str] | None = None,
    ) -> None:
        require(int_problem("workers", workers), number_problem("drain_timeout", drain_timeout))
        self.spec = spec
        self.workers = workers
        self.host = host
        self.port = port
        self.log_level = log_level
        self.drain_timeout = drain_timeout
        self.policy = policy if policy is not None else RestartPolicy()
        self.allow_memory_backends = allow_memory_backends
        self.python = list(python)
        self.env = dict(os.environ if env is None else env)
        self.slots = [_Slot(i, RestartHistory(self.policy)) for i in range(workers)]
        self.failure: str | None = None
        self.killed = 0
        self.draining = False
        self._drained = trio.Event()  # set when the drain starts: wakes backoffs and waits
        self._outer: trio.Nursery | None = None

    # -- the whole --
    async def run(self) -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as outer:
                self._outer = outer
                outer.start_soon(self._watch_signals, signals)
                async with trio.open_nursery() as slots:
                    slots.start_soon(self._run_slot, self.slots[0])
                    slots.start_soon(self._start_the_others, slots)
                outer.cancel_scope.cancel()  # every worker has ended
        if self.failure is not None:
            return 1
        if self.killed:
            log.error("%d worker(s) did not end in time and were killed", self.killed)
            return 1
        log.info("every worker has ended")
        return 0

    def drain(self, why: str) -> None:
        """SIGTERM to every worker, restart none; kill what is left after `drain_timeout`."""
        if self.draining:
            return
        self.draining = True
        self._drained.set()
        live = [s for s in self.slots if s.proc is not None and s.proc.returncode is None]
        if live:
            log.warning(
                "%s: draining %d worker(s) (up to %.0f s; again to force)",
                why,
                len(live),
                self.drain_timeout,
            )
        for slot in live:
            assert slot.proc is not None
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)
        assert self._outer is not None
        self._outer.start_soon(self._drain_deadline)

    def force(self, why: str) -> None:
        """SIGKILL every worker still running."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                log.warning("%s: killing worker %d (pid %d)", why, slot.index, slot.proc.pid)
                self.killed += 1
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()

    def give_up(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            print(f"trio-rt: giving up: {reason}", file=sys.stderr, flush=True)
        self.drain("giving up")

    async def _drain_deadline(self) -> None:
        await trio.sleep(self.drain_timeout)
        self.force(f"still running {self.drain_timeout:.0f} s after the drain began")

    async def _watch_signals(self, signals: Any) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.draining:
                self.force(f"{name} again")
            else:
                self.drain(name)

    async def _start_the_others(self, slots: trio.Nursery) -> None:
        """Worker 0 alone first (a bad app fails once; port 0 becomes a port), then the rest;
        one ``listening`` line when all of them are ready."""
        first = self.slots[0]
        await _first_of(first.first_ready, self._drained)
        if self.draining:
            return
        for slot in self.slots[1:]:
            slots.start_soon(self._run_slot, slot)
        for slot in self.slots:
            await _first_of(slot.first_ready, self._drained)
            if self.draining:
                return
        host, port = self.host, self.port
        log.info("%d workers ready on %s:%s", self.workers, host, port)
        print(
            f"trio_rt listening on ws://{host}:{port}/ (health: http://{host}:{port}/health; "
            f"{self.workers} workers)",
            flush=True,
        )

    # -- one worker --
    def _argv(self) -> list[str]:
        argv = [*self.python, "-m", "trio_rt", "--log-level", self.log_level, "serve", self.spec]
        if self.host is not None:
            argv += ["--host", self.host]
        if self.port is not None:
            argv += ["--port", str(self.port)]
        argv.append("--supervised")
        if self.allow_memory_backends:
            argv.append("--allow-memory-backends")
        return argv

    async def _run_slot(self, slot: _Slot) -> None:
        """Start the slot's worker, watch it, restart it (with backoff) until the drain."""
        while not self.draining:
            env = {**self.env, WORKER_ID_ENV: str(slot.index), WORKERS_ENV: str(self.workers)}
            slot.starts += 1
            slot.ready = False
            proc = await trio.lowlevel.open_process(
                self._argv(),
                stdin=subprocess.PIPE,  # the lifeline: never written, closed when we die
                stdout=subprocess.PIPE,
                env=env,
                process_group=0,  # a terminal's Ctrl-C reaches the supervisor only
            )
            slot.proc = proc
            started = trio.current_time()
            log.info("worker %d started (pid %d)", slot.index, proc.pid)
            if self.draining:  # the drain began while it was being started: it missed it
                proc.send_signal(signal.SIGTERM)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_output, slot, proc)
                    nursery.start_soon(self._start_deadline, slot, proc)
                    await proc.wait()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    if proc.returncode is None:
                        proc.kill()
                    await proc.wait()  # reaped: no zombie, no orphan
                    for pipe in (proc.stdin, proc.stdout):
                        if pipe is not None:
                            await pipe.aclose()
            code = proc.returncode
            assert code is not None
            decision = slot.history.exited(
                returncode=code,
                ready=slot.ready,
                uptime=trio.current_time() - started,
                config_error=code == EX_CONFIG,
            )
            slot.ready = False
            slot.server_id = None
            how = describe_exit(code)
            if self.draining:
                log.info("worker %d (pid %d) %s", slot.index, proc.pid, how)
                break
            if isinstance(decision, GiveUp):
                self.give_up(f"worker {slot.index} (pid {proc.pid}): {decision.reason}")
                break
            log.error(
                "worker %d (pid %d) %s; restarting it in %.1f s",
                slot.index,
                proc.pid,
                how,
                decision.delay,
            )
            with trio.move_on_after(decision.delay):
                await self._drained.wait()

    async def _start_deadline(self, slot: _Slot, proc: trio.Process) -> None:
        await trio.sleep(self.policy.start_timeout)
        if not slot.ready:
            log.error(
                "worker %d (pid %d) not ready within %.0f s: killing it",
                slot.index,
                proc.pid,
                self.policy.start_timeout,
            )
            proc.kill()

    async def _read_output(self, slot: _Slot, proc: trio.Process) -> None:
        """The worker's stdout, line by line: the ready line, the rest passed through."""
        assert proc.stdout is not None
        buffer = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while chunk := await proc.stdout.receive_some(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._on_line(slot, proc, line)
        if buffer:
            self._on_line(slot, proc, buffer)

    def _on_line(self, slot: _Slot, proc: trio.Process, line: bytes) -> None:
        text = line.decode(errors="replace")
        try:
            info = json.loads(text[len(READY) :]) if text.startswith(READY) else None
        except ValueError:
            info = None
        if not isinstance(info, dict):  # the app's own output: passed on
            with contextlib.suppress(OSError):  # nobody reads our stdout any more
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
            return
        server_id = str(info.get("server_id"))
        for other in self.slots:
            if other is not slot and other.server_id == server_id:
                self.give_up(
                    f"workers {other.index} and {slot.index} have the same server_id "
                    f"{server_id!r}: pass the factory's keyword options on to WebSocketManager "
                    f"(trio-rt appends -w<n> to server_id), or derive it from ${WORKER_ID_ENV}"
                )
                return
        slot.server_id = server_id
        if self.port is None or self.port == 0:  # the others bind the port worker 0 got
            self.port = int(info["port"])
        if self.host is None:
            self.host = str(info["host"])
        slot.ready = True
        slot.first_ready.set()
        log.info(
            "worker %d ready (pid %d, server_id %s, start %d)",
            slot.index,
            proc.pid,
            server_id,
            slot.starts,
        )


async def _first_of(*events: trio.Event) -> None:
    """Return once any of `events` is set."""
    if any(e.is_set() for e in events):
        return
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


def supervisor_problem(workers: int) -> str | None:
    """Why `workers` processes cannot share a port here (None: they can, or workers == 1)."""
    return reuse_port_problem() if workers > 1 else None
