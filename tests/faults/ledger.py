"""What a client should have received against what it did (sans-IO; unit-tested in test_ledger).

Per stream a client reads (a room, a table subscription, a named watcher) the harness has:

- `expected`: the ids that were *acknowledged* (the sender got ``said``, the writer's insert
  returned) and that this client must see (its rooms, its filter, every change for a watcher);
- the client's deliveries in arrival order: ``Delivery(id, offset, epoch, live)``; ``live`` is
  False for the entries of a ``history`` page (the client's refetch after
  ``recovered: false``).

`compare` counts, per stream:

- **lost**: expected ids never delivered (live or in a page);
- **duplicated**: live deliveries of an id the client already had (live, or from a page);
  entries of a page the client already had are a refetch overlapping, not a duplicate;
- **out of order**: live deliveries whose offset is not above the greatest offset delivered
  live before in the same epoch (a new epoch restarts the order; it is counted too);
- **refetched**: expected ids that only a page delivered;
- **extra**: delivered ids that were never acknowledged (refused or unanswered messages may
  or may not arrive: never an error).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    offset: int
    epoch: str
    live: bool = True


@dataclass
class Counts:
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    refetched: int = 0
    extra: int = 0
    epoch_changes: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.out_of_order == 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class StreamReport:
    """One client's stream: counts, and a few ids as evidence."""

    client: str
    stream: str
    counts: Counts
    lost_ids: list[str] = field(default_factory=list)
    duplicated: list[tuple[str, int, int]] = field(default_factory=list)  # id, offset, first
    out_of_order: list[tuple[str, int, int]] = field(default_factory=list)  # id, offset, top

    def to_json(self, evidence: int = 10) -> dict[str, Any]:
        return {
            "client": self.client,
            "stream": self.stream,
            **self.counts.to_json(),
            "lost_ids": self.lost_ids[:evidence],
            "duplicates (id, offset, first offset)": [list(x) for x in self.duplicated[:evidence]],
            "out of order (id, offset, greatest before)": [
                list(x) for x in self.out_of_order[:evidence]
            ],
        }


def compare(
    client: str, stream: str, expected: Collection[str], deliveries: Iterable[Delivery]
) -> StreamReport:
    """Count lost, duplicated and out-of-order deliveries of one stream of one client."""
    expected = set(expected)
    seen: dict[str, int] = {}  # id -> offset of its first delivery
    from_page: set[str] = set()
    counts = Counts(expected=len(expected))
    report = StreamReport(client, stream, counts)
    epoch: str | None = None
    top = -1
    for d in deliveries:
        if not d.live:
            if d.id not in seen:
                seen[d.id] = d.offset
                from_page.add(d.id)
            continue
        if d.id in seen:
            counts.duplicated += 1
            report.duplicated.append((d.id, d.offset, seen[d.id]))
            continue
        seen[d.id] = d.offset
        if d.epoch != epoch:
            if epoch is not None:
                counts.epoch_changes += 1
            epoch, top = d.epoch, d.offset
            continue
        if d.offset <= top:
            counts.out_of_order += 1
            report.out_of_order.append((d.id, d.offset, top))
        else:
            top = d.offset
    ids = set(seen)
    counts.delivered = len(ids & expected)
    lost = expected - ids
    counts.lost = len(lost)
    report.lost_ids = sorted(lost)
    counts.refetched = len(from_page & expected)
    counts.extra = len(ids - expected)
    return report


class FrameCounter:
    """Counts the complete WebSocket frames in a server-to-client byte stream (after the HTTP
    101 response): how the proxy knows a client has been sent more than it reads."""

    def __init__(self) -> None:
        self.frames = 0
        self._buf = bytearray()
        self._in_http = True

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._in_http:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del buf[: end + 4]
            self._in_http = False
        while len(buf) >= 2:
            length = buf[1] & 0x7F
            start = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, start = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, start = int.from_bytes(buf[2:10], "big"), 10
            if buf[1] & 0x80:
                start += 4  # masked (client frames only; kept for completeness)
            if len(buf) < start + length:
                return
            del buf[: start + length]
            self.frames += 1


@dataclass(frozen=True, slots=True)
class Journaled:
    """A named watcher's journal line: the change it was handed, and the position the watcher
    had stored at that moment (``Watch.saved``: (offset, epoch), None before its first store)."""

    delivery: Delivery
    saved: tuple[int, str] | None


def repeats_after_kill(
    lives: Sequence[Sequence[Journaled]],
) -> tuple[list[Delivery], list[Delivery]]:
    """Split a named watcher's journal over its process's lives into (what counts, the
    repeats a ``kill -9`` is allowed to cause).

    A restarted watcher resumes at or past the position its last life had stored
    (docs/streams.md: at least once for the last batch), so it may hand out again what that
    life was handed after its stored position: the tail of the last life, at the head of the
    new one, in the same order. Exactly such a run is taken out; anything else (a repeat of a
    change at or below the stored position, or not at the new life's head) stays and counts
    as a duplicate. Use it only where the process was killed: a graceful stop stores its
    position, and a repeat after it is a defect.
    """
    counted: list[Delivery] = []
    repeats: list[Delivery] = []
    previous: Sequence[Journaled] = ()
    for life in lives:
        unsaved = _unsaved_tail(previous)
        head = 0
        for n in range(min(unsaved, len(life)), 0, -1):
            if [j.delivery for j in life[:n]] == [j.delivery for j in previous[-n:]]:
                head = n
                break
        repeats.extend(j.delivery for j in life[:head])
        counted.extend(j.delivery for j in life[head:])
        if life:
            previous = life
    return counted, repeats


def _unsaved_tail(life: Sequence[Journaled]) -> int:
    """How many of the last entries of `life` lie past the position it had stored when it
    was handed its last change (all of them count as stored when it had stored nothing: a
    life that never stored a position must not excuse a repeat)."""
    if not life or life[-1].saved is None:
        return 0
    offset, epoch = life[-1].saved
    n = 0
    for j in reversed(life):
        if j.delivery.epoch == epoch and j.delivery.offset <= offset:
            break
        n += 1
    return n
