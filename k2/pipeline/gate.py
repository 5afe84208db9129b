"""Backpressure between ingestion and the Iceberg sink: one object owns requested, capacity and flushed.

The buffer holds at most ``bound`` events (``2 x K2_FLUSH_MAX_ROWS``; an event is a row or
a reject; derived gap rows are not counted): a batch *reserves* its room before it is
processed, and waits until a flush has made room when it would go past the bound, so the
bound holds with every agent reserving at once, and memory stays bounded while the catalog
is slow or down (ingestion stops, Kafka keeps the events). A single batch larger than the
bound is let in only into an empty buffer, so it cannot wedge the worker. A flush is
requested by the timer, by the buffer reaching ``limit`` events, or by a batch waiting for
room; requests coalesce while one is pending, and the sink takes them one at a time.

Pure state and asyncio events, no I/O: the states are unit-tested one by one
(``tests/unit/test_gate.py``).
"""

from __future__ import annotations

import asyncio

__all__ = ["FlushGate"]


class FlushGate:
    """Buffered rows, the flush request, and room for more."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.bound = 2 * limit
        self.buffered = 0
        self.reserved = 0
        """Room taken by batches being processed, not buffered yet."""
        self.requested: str | None = None
        """Why a flush is wanted (``timer``, ``size``, ``room``), until the sink takes the request."""
        self._request = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    # -- ingestion ----------------------------------------------------------------------------

    def fits(self, rows: int) -> bool:
        """Whether a batch of ``rows`` may be taken now without passing the bound."""
        held = self.buffered + self.reserved
        return held == 0 or held + rows <= self.bound

    async def reserve(self, rows: int) -> None:
        """Wait until ``rows`` more fit under the bound (asking for a flush meanwhile), then hold that room."""
        while not self.fits(rows):
            self.request("room")
            self._room.clear()
            await self._room.wait()
        self.reserved += rows

    def release(self, reserved: int) -> None:
        """Give back room a batch reserved and did not use (abandoned, or stale)."""
        self.reserved = max(0, self.reserved - reserved)
        self._room.set()

    def added(self, rows: int, reserved: int = 0) -> None:
        """Rows were buffered (in place of ``reserved`` room); ask for a flush once ``limit`` is reached."""
        self.reserved = max(0, self.reserved - reserved)
        self.buffered += rows
        if reserved > rows:
            self._room.set()
        if self.buffered >= self.limit:
            self.request("size")

    # -- requests -----------------------------------------------------------------------------

    def request(self, reason: str) -> None:
        """Ask for a flush; a request pending already keeps its first reason."""
        if self.requested is None:
            self.requested = reason
        self._request.set()

    async def next_request(self) -> str:
        """Wait for a request and take it (the sink's side); a new one may come while it flushes."""
        await self._request.wait()
        self._request.clear()
        reason, self.requested = self.requested or "request", None
        return reason

    # -- the sink -----------------------------------------------------------------------------

    def removed(self, rows: int) -> None:
        """Rows left the buffer (committed, or dropped with a revoked partition): room for waiters."""
        self.buffered = max(0, self.buffered - rows)
        self._room.set()  # waiters check again whether their batch fits

    def recount(self, rows: int) -> None:
        """Set the buffered rows from the stores (after a restore added chunks no batch counted)."""
        self.buffered = rows
        if self.buffered >= self.limit:
            self.request("size")
        self._room.set()
