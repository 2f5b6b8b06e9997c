"""The live feed: new entries pushed to every open trail tab as server-sent events.

One poller per console looks for new entries by sequence number every ``live_poll`` seconds
(the store's next sequence number: O(1)), reads them once in append order and hands each
subscriber the ones its filters match. A subscriber holds at most ``live_backlog`` entries and
``live_queue_bytes`` bytes not yet handed to its connection, and all subscribers together at
most ``live_total_bytes``: a tab that cannot keep up (a slow network, a sleeping laptop, a
client that never reads) has its queue dropped and is told how many entries, which sequence
numbers, it missed — the poller, the other tabs and the journal's writers never wait for it,
and the memory the feed holds is bounded in bytes whatever the entries hold. The journal
itself is the backlog: a reconnecting tab (``Last-Event-ID``) is caught up from it, within the
same bounds. Entries are encoded once, as UTF-8 JSON (text not escaped to ``\\uXXXX``).
"""
from __future__ import annotations

import asyncio
import collections
import functools
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .._errors import ClosedError, JournalError
from .._model import TransactionLog
from ..journal import SovereignJournal
from ._views import Limits, entry_dict

__all__ = ["Feed", "FeedFull", "Subscriber"]

T = TypeVar("T")
RunSync = Callable[[Callable[[], T]], Awaitable[T]]

#: entries read from the journal per look
_READ_CHUNK = 2000
#: bytes of encoded entries read from the journal per look, at most (one entry more than this)
_READ_BYTES = 1 << 20
#: seconds between keep-alive comments on a quiet stream
PING_SECONDS = 15.0


class FeedFull(Exception):
    """As many live connections are open as the console serves."""


@dataclass(frozen=True)
class Chunk:
    """Entries ready to send as one event: seqs ``first`` … ``last``, ``count`` of them, and the
    event's bytes (encoded once per batch and shared by every tab without filters)."""

    first: int
    last: int
    count: int
    event: bytes


def make_chunk(items: list[tuple[int, str]]) -> Chunk:
    """The event of ``items`` (seq, entry JSON), oldest first: the entries as one JSON array,
    the last seq as the event's id."""
    body = "[" + ",".join(text for _, text in items) + "]"
    last = items[-1][0]
    return Chunk(items[0][0], last, len(items), f"id: {last}\nevent: entries\ndata: {body}\n\n".encode())


class Subscriber:
    """One tab's queue: the events of the entries its filters match, not yet handed to its
    connection (``backlog`` entries and ``max_bytes`` bytes of events at most), and what it
    missed: when the queue would overflow, what waits in it is dropped (counted, with its
    sequence numbers) and the new entries queued, so a tab always gets the newest."""

    def __init__(self, check: Callable[[TransactionLog], bool] | None, backlog: int, start: int,
                 max_bytes: int = 8_000_000) -> None:
        self.check = check
        self.backlog = backlog
        self.max_bytes = max_bytes
        self.start = start  # entries below this seq were on the page already
        self.pending: collections.deque[Chunk] = collections.deque()
        self.pending_entries = 0
        self.pending_bytes = 0
        self.skipped = 0
        self.skipped_range: tuple[int, int] | None = None
        self.cleared = False
        self.closed = False
        self.wake = asyncio.Event()

    def _skip(self, count: int, first: int, last: int) -> None:
        self.skipped += count
        low = first if self.skipped_range is None else min(first, self.skipped_range[0])
        self.skipped_range = (low, last)

    def push(self, batch: list[tuple[TransactionLog, str]], shared: Chunk | None = None) -> None:
        """Queue the entries of ``batch`` (read in append order) that this tab wants; ``shared``
        is the whole batch's event, used as it is by a tab without filters."""
        if shared is not None and self.check is None and shared.first >= self.start \
                and shared.count <= self.backlog and len(shared.event) <= self.max_bytes:
            chunk = shared
        else:
            items = [(_seq(entry), text) for entry, text in batch
                     if _seq(entry) >= self.start and (self.check is None or self.check(entry))]
            if not items:
                return
            keep, size = 0, _OVERHEAD
            for _n, text in reversed(items):  # the newest that fit the entries and the bytes
                size += len(text.encode()) + 1
                if keep == self.backlog or size > self.max_bytes:
                    break
                keep += 1
            if keep < len(items):
                self._skip(len(items) - keep, items[0][0], items[-keep - 1][0])
                if keep == 0:
                    self.wake.set()
                    return
                items = items[-keep:]
            chunk = make_chunk(items)
        if self.pending and (self.pending_entries + chunk.count > self.backlog
                             or self.pending_bytes + len(chunk.event) > self.max_bytes):  # fell behind
            self.drop()
        self.pending.append(chunk)
        self.pending_entries += chunk.count
        self.pending_bytes += len(chunk.event)
        self.wake.set()

    def drop(self) -> None:
        """Drop what waits (the tab is told it missed it)."""
        if self.pending:
            self._skip(self.pending_entries, self.pending[0].first, self.pending[-1].last)
        self.pending.clear()
        self.pending_entries = 0
        self.pending_bytes = 0
        self.wake.set()

    def pop(self) -> Chunk | None:
        """The oldest waiting event, taken off the queue (``None``: nothing waits)."""
        if not self.pending:
            return None
        chunk = self.pending.popleft()
        self.pending_entries -= chunk.count
        self.pending_bytes -= len(chunk.event)
        return chunk

    def missed(self) -> tuple[int, tuple[int, int] | None]:
        """What was missed since last asked (entries, their first and last seq), now reset."""
        skipped, span = self.skipped, self.skipped_range
        self.skipped, self.skipped_range = 0, None
        return skipped, span

    def take(self) -> tuple[list[Chunk], int, tuple[int, int] | None]:
        """What to send now — every waiting event — and what was missed."""
        out = list(self.pending)
        self.pending.clear()
        self.pending_entries = 0
        self.pending_bytes = 0
        skipped, span = self.missed()
        self.wake.clear()
        return out, skipped, span

    def close(self) -> None:
        self.closed = True
        self.wake.set()


def _seq(entry: TransactionLog) -> int:
    assert entry.seq is not None  # (entries read from a journal have one)
    return entry.seq


def _encode(entry: TransactionLog) -> str:
    return json.dumps(entry_dict(entry), ensure_ascii=False, separators=(",", ":"))


#: an event's bytes around its entries (``id: …``, ``event: entries``, the brackets)
_OVERHEAD = 64


class Feed:
    """The console's one poller and its subscribers (see the module)."""

    def __init__(self, journal: SovereignJournal, history: dict[str, Any], limits: Limits,
                 run_sync: RunSync[Any]) -> None:
        self._journal = journal
        self._history = history
        self._limits = limits
        self._run = run_sync
        self._subs: set[Subscriber] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._cursor = -1  # the last seq read
        self._epoch = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def count(self) -> int:
        """Open live connections."""
        return len(self._subs)

    def _read(self, after: int, limit: int) -> list[tuple[TransactionLog, str]]:
        """Up to ``limit`` entries after seq ``after`` in append order, encoded — and no more once
        they hold ``_READ_BYTES`` bytes (so one look never holds more, whatever entries hold)."""
        logs = self._journal.iter_logs(order="append", newest_first=False,
                                       after=after if after >= 0 else None, limit=limit, **self._history)
        out: list[tuple[TransactionLog, str]] = []
        size = 0
        try:
            for log in logs:
                text = _encode(log)
                out.append((log, text))
                size += len(text)
                if size >= _READ_BYTES:
                    break
        finally:
            close = getattr(logs, "close", None)
            if close is not None:
                close()
        return out

    def _look(self) -> tuple[list[tuple[TransactionLog, str]], int | None]:
        """New entries since the cursor (a chunk at most), and the epoch when it changed."""
        if self._journal.next_seq() - 1 <= self._cursor:
            return [], None
        epoch = self._journal.tree_head().epoch
        return self._read(self._cursor, _READ_CHUNK), (epoch if epoch != self._epoch else None)

    async def subscribe(self, check: Callable[[TransactionLog], bool] | None,
                        start: int | None) -> Subscriber:
        """A new subscriber for the entries from seq ``start`` on (``None``: from now), caught
        up from the journal; raises :class:`FeedFull` at ``live_max`` subscribers."""
        if self._closed or len(self._subs) >= self._limits.live_max:
            raise FeedFull(f"{len(self._subs)} live connections are open, the most this console serves")
        self._loop = asyncio.get_running_loop()
        async with self._lock:
            if self._task is None:
                self._cursor = await self._run(self._journal.next_seq) - 1
                self._epoch = (await self._run(self._journal.tree_head)).epoch
                self._task = asyncio.ensure_future(self._poll())
            begin = self._cursor + 1 if start is None else min(start, self._cursor + 1)
            sub = Subscriber(check, self._limits.live_backlog, begin, self._limits.live_queue_bytes)
            after = begin - 1
            if self._cursor - after > self._limits.live_backlog:  # too far back: say so, not read it all
                after = self._cursor - self._limits.live_backlog
                sub.skipped, sub.skipped_range = after - begin + 1, (begin, after)
                sub.wake.set()
            while after < self._cursor:  # catch up from the journal, within the backlog
                cursor = self._cursor
                read = functools.partial(self._read, after, min(_READ_CHUNK, cursor - after))
                batch = await self._run(read)
                if not batch:
                    break
                sub.push(batch)
                after = _seq(batch[-1][0])
            self._subs.add(sub)
            self._bound_total()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    async def _poll(self) -> None:
        try:
            while self._subs and not self._closed:
                await asyncio.sleep(self._limits.live_poll)
                try:
                    await self._tick()
                except ClosedError:
                    return
                except JournalError as exc:  # e.g. the archive moved away: say so, look again later
                    print(f"krepis serve: live feed: {exc}", file=sys.stderr, flush=True)
                    await asyncio.sleep(1.0)
        finally:
            self._task = None

    async def _tick(self) -> None:
        async with self._lock:
            while not self._closed:
                batch, epoch = await self._run(self._look)
                if epoch is not None:
                    self._epoch = epoch
                    for sub in self._subs:
                        sub.cleared = True
                        sub.wake.set()
                if not batch:
                    return
                self._cursor = _seq(batch[-1][0])
                shared = make_chunk([(_seq(entry), text) for entry, text in batch])
                for sub in list(self._subs):
                    sub.push(batch, shared)
                self._bound_total()
                if len(batch) < _READ_CHUNK and len(shared.event) < _READ_BYTES:
                    return

    def _bound_total(self) -> None:
        """Drop the longest queues until all of them together hold ``live_total_bytes`` at most
        (an event shared by several tabs counted once for each)."""
        total = sum(sub.pending_bytes for sub in self._subs)
        if total <= self._limits.live_total_bytes:
            return
        for sub in sorted(self._subs, key=lambda s: s.pending_bytes, reverse=True):
            total -= sub.pending_bytes
            sub.drop()
            if total <= self._limits.live_total_bytes:
                return

    def close(self) -> None:
        """End every stream (the server is stopping); from any thread."""
        self._closed = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._close_all()
        else:
            try:
                loop.call_soon_threadsafe(self._close_all)
            except RuntimeError:  # the loop closed meanwhile: nothing is streaming
                pass

    def _close_all(self) -> None:
        for sub in list(self._subs):
            sub.close()
        if self._task is not None:
            self._task.cancel()

    async def stream(self, sub: Subscriber,
                     is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[bytes]:
        """The server-sent events of ``sub``: ``entries`` (a JSON array, oldest first, the last
        seq as the event's id), ``behind`` (what was missed), ``cleared``, and keep-alive comments."""
        try:
            yield b"retry: 2000\n: krepis live\n\n"
            while not sub.closed:
                try:
                    await asyncio.wait_for(sub.wake.wait(), PING_SECONDS)
                except asyncio.TimeoutError:
                    if await is_disconnected():
                        return
                    yield b": ping\n\n"
                    continue
                if sub.closed:
                    return
                sub.wake.clear()
                if sub.cleared:
                    sub.cleared = False
                    yield b"event: cleared\ndata: {}\n\n"
                while not sub.closed:  # one event at a time: what is not sent yet stays counted
                    skipped, span = sub.missed()
                    if skipped and span is not None:
                        data = json.dumps({"skipped": skipped, "from": span[0], "to": span[1]})
                        yield f"event: behind\ndata: {data}\n\n".encode()
                    chunk = sub.pop()
                    if chunk is None:
                        break
                    yield chunk.event
        finally:
            self.unsubscribe(sub)
