"""Sequence state in a key-value store (a Faust table's data): small values, written per batch.

Per (partition, exchange, symbol) there is one *head* (:class:`~k2.sequence.classify.KeyState`:
last number, its time, last applied offset, epoch, decision log) and the *window* split in
blocks of :data:`BLOCK` consecutive sequence numbers (fingerprint and offset of each)::

    h|<partition>|<exchange>|<symbol>                     -> head
    w|<partition>|<exchange>|<symbol>|<epoch>|<block>     -> window block

Why blocks: every write sends the whole value to the changelog, so one value holding a
window of 1000 numbers would cost 12 KB per symbol per micro-batch. A batch touches the
head and the blocks its numbers fall in (192 bytes each); blocks that fall out of the
window are deleted. Measured (``bench/sequence_bench.py``, batches of 5000): about 16 bytes
of state per event with 50 busy symbols, about 100 with 2000 symbols of a few events each;
with blocks of 64 numbers those were 21 and 333.

A batch's writes come out of :meth:`SequenceBook.changes` in the order that keeps a crash
harmless, all to the key's source partition (so one changelog partition, whose order Kafka
keeps): window blocks, then heads, then deletions. A head that reached the changelog thus
implies its blocks did, and blocks that did while their head did not are recognised by
their offsets (see :func:`k2.sequence.classify.decide`). Deletions come last, so a block a
re-delivered batch still needs is never gone before the head that no longer needs it.

Values in the mapping are decoded lazily: a Faust restore puts ``bytes`` there, and the
first use replaces them by the decoded object (so a partition restored after a rebalance
is never shadowed by a stale cache).
"""

from __future__ import annotations

import struct
from collections.abc import MutableMapping
from typing import Any

import numpy as np

from k2.sequence.classify import FIRST, IN_ORDER, KeyState, Verdict, decide, first

__all__ = ["BLOCK", "Block", "Cursor", "SequenceBook", "decode_head", "encode_head"]

BLOCK = 16
"""Sequence numbers per window block: small, because a block is rewritten whole whenever one of its numbers is seen."""

_HEAD = struct.Struct("<BqqqIqqI")  # version, last, last_time, applied, epoch, low_block, log_floor, log length
_LOG = struct.Struct("<qBq")  # offset, outcome, ref
_VERSION = 1

Change = tuple[int, str, bytes | None]
"""``(partition, key, value)`` to send to the changelog; ``None`` deletes."""


def encode_head(state: KeyState) -> bytes:
    parts = [
        _HEAD.pack(
            _VERSION,
            state.last,
            state.last_time,
            state.applied,
            state.epoch,
            state.low_block,
            state.log_floor,
            len(state.log),
        )
    ]
    parts.extend(_LOG.pack(*entry) for entry in state.log)
    return b"".join(parts)


def decode_head(data: bytes) -> KeyState:
    version, last, last_time, applied, epoch, low_block, log_floor, n = _HEAD.unpack_from(data)
    if version != _VERSION:
        raise ValueError(f"unknown sequence state version {version}")
    log = [_LOG.unpack_from(data, _HEAD.size + i * _LOG.size) for i in range(n)]
    return KeyState(last, last_time, applied, epoch, low_block, log, log_floor)


class Block:
    """Fingerprints (0: not seen) and offsets of :data:`BLOCK` consecutive sequence numbers (little-endian)."""

    __slots__ = ("fps", "offsets")

    def __init__(self, fps: np.ndarray | None = None, offsets: np.ndarray | None = None) -> None:
        self.fps = fps if fps is not None else np.zeros(BLOCK, dtype="<u4")
        self.offsets = offsets if offsets is not None else np.zeros(BLOCK, dtype="<i8")

    def encode(self) -> bytes:
        return self.fps.tobytes() + self.offsets.tobytes()

    @classmethod
    def decode(cls, data: bytes) -> Block:
        if len(data) != 12 * BLOCK:
            raise ValueError(f"a window block is {12 * BLOCK} bytes, got {len(data)}")
        fps = np.frombuffer(data, dtype="<u4", count=BLOCK).copy()
        offsets = np.frombuffer(data, dtype="<i8", offset=4 * BLOCK).copy()
        return cls(fps, offsets)


class Cursor:
    """One key's state and window during a batch; the :class:`~k2.sequence.classify.Window` of :func:`decide`."""

    __slots__ = ("_book", "_dirty", "_head_key", "_last", "_prefix", "_start_range", "partition", "state")

    def __init__(self, book: SequenceBook, partition: int, ident: str, state: KeyState | None) -> None:
        self._book = book
        self.partition = partition
        self._head_key = f"h|{ident}"
        self._prefix = f"w|{ident}"
        self.state = state
        self._dirty: dict[tuple[int, int], Block] = {}
        self._last: tuple[int, int, Block] | None = None  # the block put() wrote last: (epoch, index, block)
        #: window blocks that may exist before this batch: (epoch, lowest index, highest index)
        self._start_range = None if state is None else (state.epoch, state.low_block, state.last // BLOCK)

    def continues(self, seq: int, offset: int) -> bool:
        """Whether an event with ``seq`` at ``offset`` is simply the key's next one (in order, not re-delivered)."""
        state = self.state
        return state is not None and seq == state.last + 1 and offset > state.applied

    def run(self, seqs: np.ndarray, last_time: int, fps: np.ndarray, offsets: np.ndarray, size: int) -> None:
        """Apply a run of consecutive numbers that :meth:`continues` the key, in one go (all in order).

        The same as :meth:`track` for each, but only the numbers that stay in the window
        (the last ``size``) are written to it.
        """
        state = self.state
        assert state is not None
        first_seq, last_seq = int(seqs[0]), int(seqs[-1])
        state.applied = int(offsets[-1])
        state.last = last_seq
        state.last_time = last_time
        low = max(first_seq, last_seq - size + 1)
        epoch = state.epoch
        seq = low
        while seq <= last_seq:
            index, i = divmod(seq, BLOCK)
            end = min(last_seq, index * BLOCK + BLOCK - 1)
            block = self._block(epoch, index, create=True)
            assert block is not None
            at, stop = seq - first_seq, end - first_seq + 1
            block.fps[i : i + stop - at] = fps[at:stop]
            block.offsets[i : i + stop - at] = offsets[at:stop]
            seq = end + 1
        self._last = None

    def track(self, seq: int, time_ms: int, fp: int, offset: int, size: int) -> Verdict:
        """Classify the key's next event (in offset order) and update the state."""
        state = self.state
        if state is not None and seq == state.last + 1 and offset > state.applied:
            # The common case, inlined (it is decide()'s first branch for an in-order number).
            state.applied = offset
            state.last = seq
            state.last_time = time_ms
            self.put(seq, fp, offset)
            return IN_ORDER
        if state is None:
            self.state = first(seq, time_ms, offset)
            self.state.low_block = seq // BLOCK
            self.put(seq, fp, offset)
            return FIRST
        return decide(state, self, seq, time_ms, fp, offset, size)

    # -- Window ----------------------------------------------------------------------------

    def _block(self, epoch: int, index: int, create: bool) -> Block | None:
        block = self._dirty.get((epoch, index))
        if block is not None:
            return block
        data = self._book.data
        key = f"{self._prefix}|{epoch}|{index}"
        value = data.get(key)
        if value is None:
            if not create:
                return None
            block = Block()
        elif isinstance(value, Block):
            block = value
        else:
            block = Block.decode(value)
        data[key] = block
        if create:
            self._dirty[(epoch, index)] = block
        return block

    def get(self, seq: int) -> tuple[int, int] | None:
        assert self.state is not None
        block = self._block(self.state.epoch, seq // BLOCK, create=False)
        if block is None:
            return None
        i = seq % BLOCK
        fp = int(block.fps[i])
        return None if fp == 0 else (fp, int(block.offsets[i]))

    def put(self, seq: int, fp: int, offset: int) -> None:
        assert self.state is not None
        epoch = self.state.epoch
        index, i = divmod(seq, BLOCK)
        last = self._last
        if last is not None and last[1] == index and last[0] == epoch:
            block: Block | None = last[2]
        else:
            block = self._block(epoch, index, create=True)
            assert block is not None
            self._last = (epoch, index, block)
        assert block is not None
        block.fps[i] = fp
        block.offsets[i] = offset

    def new_session(self, seq: int) -> None:
        state = self.state
        assert state is not None
        for epoch, index in self._existing(state.epoch, state.low_block, state.last // BLOCK):
            self._drop(epoch, index)
        state.epoch += 1
        state.low_block = seq // BLOCK

    # -- end of batch ------------------------------------------------------------------------

    def _existing(self, epoch: int, low: int, high: int) -> list[tuple[int, int]]:
        """Blocks of ``epoch`` with index in [low, high] that may exist: from before the batch, or made in it."""
        found = {k for k in self._dirty if k[0] == epoch and low <= k[1] <= high}
        if self._start_range is not None and self._start_range[0] == epoch:
            start_low, start_high = max(low, self._start_range[1]), min(high, self._start_range[2])
            found.update((epoch, i) for i in range(start_low, start_high + 1))
        return sorted(found)

    def _drop(self, epoch: int, index: int) -> None:
        self._dirty.pop((epoch, index), None)
        if self._last is not None and self._last[:2] == (epoch, index):
            self._last = None
        key = f"{self._prefix}|{epoch}|{index}"
        if self._book.data.pop(key, None) is not None:
            self._book.deleted.append((self.partition, key, None))

    def finish(self, size: int) -> None:
        """Drop the blocks that fell out of the window, and queue this key's writes."""
        state = self.state
        assert state is not None
        low = max(state.low_block, (state.last - size + 1) // BLOCK)
        if low > state.low_block:
            for epoch, index in self._existing(state.epoch, state.low_block, low - 1):
                self._drop(epoch, index)
            state.low_block = low
        book = self._book
        for (epoch, index), block in sorted(self._dirty.items()):
            book.blocks.append((self.partition, f"{self._prefix}|{epoch}|{index}", block.encode()))
        book.data[self._head_key] = state
        book.heads.append((self.partition, self._head_key, encode_head(state)))


class SequenceBook:
    """The sequence state of one source topic over ``data`` (a Faust table's ``data``, or a dict in tests)."""

    def __init__(self, data: MutableMapping[str, Any], size: int) -> None:
        if size < 1:
            raise ValueError("the dedup window must hold at least one sequence number")
        self.data = data
        self.size = size
        self._cursors: dict[tuple[int, str, str], Cursor] = {}
        self.blocks: list[Change] = []
        self.heads: list[Change] = []
        self.deleted: list[Change] = []

    def cursor(self, partition: int, exchange: str, symbol: str) -> Cursor:
        """The key's cursor for this batch (loaded on first use)."""
        ident = (partition, exchange, symbol)
        cur = self._cursors.get(ident)
        if cur is None:
            name = f"{partition}|{exchange}|{symbol}"
            value = self.data.get(f"h|{name}")
            state = value if isinstance(value, KeyState) or value is None else decode_head(value)
            cur = self._cursors[ident] = Cursor(self, partition, name, state)
        return cur

    def changes(self) -> list[Change]:
        """End the batch: every key's writes, in crash-safe order (blocks, heads, deletions)."""
        for cur in self._cursors.values():
            if cur.state is not None:
                cur.finish(self.size)
        out = [*self.blocks, *self.heads, *self.deleted]
        self._cursors.clear()
        self.blocks, self.heads, self.deleted = [], [], []
        return out
